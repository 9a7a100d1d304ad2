"""Bencoding and a single-file .torrent (BitTorrent v1) for the aria2c baseline.

``make_torrent(path, announce, piece_length)`` → (the .torrent's bytes, its info-hash as hex),
the hex form being what opentracker's whitelist wants, one per line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def bencode(value: object) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> object:
    """Decode one bencoded value (for reading tracker answers); raises ValueError when malformed."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[object, int]:
    if depth > 32:
        raise ValueError("bencoded value nested too deeply")
    if i >= len(data):
        raise ValueError("truncated bencoded value")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c in (b"l", b"d"):
        i += 1
        items: list[object] = []
        while data[i : i + 1] != b"e":
            if i >= len(data):
                raise ValueError("truncated bencoded list")
            v, i = _decode(data, i, depth + 1)
            items.append(v)
        if c == b"l":
            return items, i + 1
        if len(items) % 2:
            raise ValueError("bencoded dict with a key and no value")
        return {items[j]: items[j + 1] for j in range(0, len(items), 2)}, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        if n < 0 or colon + 1 + n > len(data):
            raise ValueError("truncated bencoded string")
        return data[colon + 1 : colon + 1 + n], colon + 1 + n
    raise ValueError(f"bad bencoded value at byte {i}")


def piece_hashes(path: Path, piece_length: int) -> bytes:
    out = bytearray()
    with path.open("rb") as f:
        while chunk := f.read(piece_length):
            out += hashlib.sha1(chunk, usedforsecurity=False).digest()
    return bytes(out)


def make_torrent(path: Path, announce: str, piece_length: int) -> tuple[bytes, str]:
    if piece_length <= 0 or piece_length & (piece_length - 1):
        raise ValueError("piece length must be a power of two")
    info = {
        "name": path.name,
        "length": path.stat().st_size,
        "piece length": piece_length,
        "pieces": piece_hashes(path, piece_length),
    }
    info_hash = hashlib.sha1(bencode(info), usedforsecurity=False).hexdigest()
    return bencode({"announce": announce, "info": info}), info_hash
