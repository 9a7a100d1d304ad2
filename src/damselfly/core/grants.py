"""Grants: short-lived tokens with which a supernode lets a peer fetch pieces of a private task.

A grant says "peer P may fetch pieces of task T until E", signed by the supernode with Ed25519.
Piece servers (every engine's upload port, the supernode's piece port) check it for a private
task: a known supernode key, the task they are asked for, not expired. The signer's private key
lives only in the supernode's memory (a new one per process); engines learn the public keys from
their registrations.

Wire form (the ``X-Damselfly-Grant`` header, and ``grant`` in register/schedule answers)::

    base64url(payload) "." base64url(signature)
    payload = b"DG1" | key id (8) | task id (32, raw) | expiry (8, unix seconds, big-endian)
              | peer id (utf-8, 1..128)

Expiry is wall-clock time (hosts differ; the injected clock is a ``WallClock`` outside tests).
A grant is renewed at half its life, so clocks may differ by up to half the lifetime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from damselfly.core.clock import Clock
from damselfly.core.ids import PEER_ID_RE, TASK_ID_RE

GRANT_HEADER = "X-Damselfly-Grant"
#: a grant's lifetime unless the supernode is told otherwise (--grant-ttl)
DEFAULT_TTL = 600.0
MAGIC = b"DG1"
KEY_ID_LEN = 8
#: a grant longer than this is refused unparsed (peer ids are at most 128 bytes)
MAX_GRANT_LEN = 512
#: supernode keys an engine trusts at once (the newest kept): supernodes restart with new keys
MAX_KEYS = 32
#: verified grants remembered, so that a piece request costs a dict lookup, not a signature check
MAX_VERIFIED = 4096
_FIXED = len(MAGIC) + KEY_ID_LEN + 32 + 8


def _ed25519() -> Any:
    """The Ed25519 module of ``cryptography``, imported on first use: it costs a process ~7 MB
    of resident memory, which an engine that never serves a private task should not pay."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


class WallClock:
    """Unix time: grants are compared across hosts."""

    def now(self) -> float:
        return time.time()


class GrantError(Exception):
    """A grant that does not allow the request; ``str()`` says why (no secret in it)."""


@dataclass(frozen=True, slots=True)
class Grant:
    task_id: str
    peer_id: str
    expires: int  # unix seconds
    key_id: bytes


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key_id(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:KEY_ID_LEN]


def encode_public_key(public: bytes) -> str:
    return _b64e(public)


def decode_public_key(text: str) -> bytes:
    """A supernode's public key as sent in a register answer (32 raw bytes), or GrantError."""
    if not isinstance(text, str) or len(text) > 64:
        raise GrantError("malformed supernode key")
    try:
        raw = _b64d(text)
    except (ValueError, binascii.Error) as e:
        raise GrantError("malformed supernode key") from e
    if len(raw) != 32:  # an Ed25519 public key is 32 raw bytes
        raise GrantError("malformed supernode key")
    return raw


class GrantSigner:
    """The supernode's side: a fresh Ed25519 key per process; ``issue`` signs grants."""

    def __init__(self, clock: Clock | None = None, ttl: float = DEFAULT_TTL) -> None:
        self.clock = clock or WallClock()
        self.ttl = ttl
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = _ed25519().Ed25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(self.public)
        self.verifier = GrantVerifier(self.clock)
        self.verifier.trust(self.public)

    @property
    def public_text(self) -> str:
        return encode_public_key(self.public)

    def issue(self, task_id: str, peer_id: str) -> tuple[str, int]:
        """A grant for ``peer_id`` on ``task_id`` and its expiry (unix seconds)."""
        if not TASK_ID_RE.match(task_id) or not PEER_ID_RE.match(peer_id):
            raise ValueError("grants name a valid task id and peer id")
        expires = int(self.clock.now() + self.ttl)
        payload = (
            MAGIC
            + self.key_id
            + bytes.fromhex(task_id)
            + struct.pack(">Q", expires)
            + peer_id.encode()
        )
        return f"{_b64e(payload)}.{_b64e(self._key.sign(payload))}", expires

    def renew_due(self, expires: float) -> bool:
        """Whether a grant expiring at ``expires`` is past half its life."""
        return expires - self.clock.now() < self.ttl / 2

    def __repr__(self) -> str:
        return f"GrantSigner(key {self.key_id.hex()}, ttl={self.ttl:g}s)"


def parse(token: str) -> tuple[Grant, bytes, bytes]:
    """(grant, signed payload, signature) of a grant's wire form; GrantError when malformed."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_GRANT_LEN or not token.isascii():
        raise GrantError("malformed grant")
    body, sep, sig_text = token.partition(".")
    try:
        payload, sig = _b64d(body), _b64d(sig_text)
    except (ValueError, binascii.Error) as e:
        raise GrantError("malformed grant") from e
    if not sep or len(sig) != 64 or len(payload) <= _FIXED or not payload.startswith(MAGIC):
        raise GrantError("malformed grant")
    off = len(MAGIC)
    kid = payload[off : off + KEY_ID_LEN]
    off += KEY_ID_LEN
    tid = payload[off : off + 32].hex()
    off += 32
    (expires,) = struct.unpack(">Q", payload[off : off + 8])
    try:
        peer = payload[off + 8 :].decode()
    except UnicodeDecodeError as e:
        raise GrantError("malformed grant") from e
    if not PEER_ID_RE.match(peer):
        raise GrantError("malformed grant")
    return Grant(tid, peer, expires, kid), payload, sig


class GrantVerifier:
    """A piece server's side: the supernode keys it trusts, and ``check(token, task_id)``."""

    def __init__(self, clock: Clock | None = None, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock or WallClock()
        self.max_keys = max_keys
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()  # key id → raw public key
        # token → grant, for tokens whose signature was checked (expiry is checked every time)
        self._verified: OrderedDict[str, Grant] = OrderedDict()

    def trust(self, public: bytes) -> None:
        """Accept grants signed by this supernode key (the newest ``max_keys`` are kept)."""
        kid = key_id(public)
        if kid in self._keys:
            self._keys.move_to_end(kid)
            return
        self._keys[kid] = bytes(public)
        while len(self._keys) > self.max_keys:
            old, _ = self._keys.popitem(last=False)
            for tok in [t for t, g in self._verified.items() if g.key_id == old]:
                del self._verified[tok]

    @property
    def knows_keys(self) -> bool:
        return bool(self._keys)

    def check(self, token: str | None, task_id: str) -> Grant:
        """The grant when ``token`` allows fetching pieces of ``task_id`` now; else GrantError."""
        if not token:
            raise GrantError("this task is private: a grant from the supernode is required")
        grant = self._verified.get(token)
        if grant is None:
            grant, payload, sig = parse(token)
            raw = self._keys.get(grant.key_id)
            if raw is None:
                raise GrantError("the grant is signed by a supernode this server does not know")
            from cryptography.exceptions import InvalidSignature

            try:
                _ed25519().Ed25519PublicKey.from_public_bytes(raw).verify(sig, payload)
            except (InvalidSignature, ValueError) as e:
                raise GrantError("the grant's signature is not valid") from e
            self._verified[token] = grant
            while len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
        if grant.task_id != task_id:
            raise GrantError("the grant is for another task")
        if self.clock.now() >= grant.expires:
            raise GrantError("the grant has expired")
        return grant

    def __repr__(self) -> str:
        return f"GrantVerifier({len(self._keys)} key(s), {len(self._verified)} verified)"
