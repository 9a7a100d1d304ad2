"""The CDN cache on disk: where a task's files live and its metadata record.

Layout under ``--home-dir``::

    repo/<id[:2]>/<id>.data   the file's bytes (pieces written in place with pwrite)
    repo/<id[:2]>/<id>.meta   JSON: url, length, piece size, ETag/Last-Modified, per-piece sha256,
                              complete flag, whole-file sha256

The meta record never holds request headers: they are credentials. It does hold the URL, whose
query may carry a signature, so the URL is only ever logged through ``redact_url``. Meta files
are written atomically (temporary file, fsync, ``os.replace``); a meta file that does not parse
or validate is treated as absent (its task is fetched again). All functions here block: callers
run them in a worker thread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damselfly.core.ids import MAX_URL_LEN, TASK_ID_RE
from damselfly.core.pieces import PIECE_RULES, PiecePlan

META_VERSION = 1
#: a meta of a 1 TiB file holds ~70k digests (~5 MB); anything far beyond is not ours
MAX_META_BYTES = 64 * 1024 * 1024
MAX_VALIDATOR_LEN = 1024
_HEX64 = frozenset("0123456789abcdef")


@dataclass(slots=True)
class TaskMeta:
    task_id: str
    url: str
    length: int
    piece_size: int
    etag: str = ""
    last_modified: str = ""
    digests: list[str | None] = field(default_factory=list)  # None = piece not held
    complete: bool = False
    file_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "task_id": self.task_id,
            "url": self.url,
            "length": self.length,
            "piece_size": self.piece_size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "digests": self.digests,
            "complete": self.complete,
            "file_sha256": self.file_sha256,
        }

    @classmethod
    def from_json(cls, obj: Any) -> TaskMeta:
        """Validate a parsed record; ValueError says what is wrong."""
        if not isinstance(obj, dict) or obj.get("version") != META_VERSION:
            raise ValueError("not a version-1 meta record")
        tid = obj.get("task_id")
        if not isinstance(tid, str) or not TASK_ID_RE.match(tid):
            raise ValueError("bad task id")
        url = obj.get("url")
        if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LEN:
            raise ValueError("bad url")
        length, piece_size = obj.get("length"), obj.get("piece_size")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= 2**50:
            raise ValueError("bad length")
        # The plan must be one a piece-size rule makes for this length (a cache written under
        # another --piece-sizes stays usable: the task keeps the plan it was cut with).
        if piece_size not in {rule(length) for rule in PIECE_RULES.values()}:
            raise ValueError("piece size does not follow the piece plan")
        digests = obj.get("digests")
        count = PiecePlan(length, piece_size).count
        if not isinstance(digests, list) or len(digests) != count:
            raise ValueError("digest list does not match the piece count")
        if not all(d is None or _is_hex64(d) for d in digests):
            raise ValueError("bad piece digest")
        etag, lm = obj.get("etag"), obj.get("last_modified")
        if not isinstance(etag, str) or not isinstance(lm, str):
            raise ValueError("bad validator")
        if max(len(etag), len(lm)) > MAX_VALIDATOR_LEN:
            raise ValueError("validator too long")
        complete, fsha = obj.get("complete"), obj.get("file_sha256")
        if not isinstance(complete, bool) or not isinstance(fsha, str):
            raise ValueError("bad completion fields")
        if fsha and not _is_hex64(fsha):
            raise ValueError("bad file digest")
        if complete and (not fsha or any(d is None for d in digests)):
            raise ValueError("complete record with missing digests")
        return cls(tid, url, length, piece_size, etag, lm, digests, complete, fsha)


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX64


class Layout:
    """Paths of the cache. Task ids are validated before they get here (64 hex digits), so no
    request can name a path outside ``root``."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "repo"

    def dir(self, task_id: str) -> Path:
        return self.root / task_id[:2]

    def data(self, task_id: str) -> Path:
        return self.dir(task_id) / f"{task_id}.data"

    def meta(self, task_id: str) -> Path:
        return self.dir(task_id) / f"{task_id}.meta"


def write_meta(path: Path, record: dict[str, Any]) -> None:
    """Write a meta record atomically: temporary file, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = json.dumps(record, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_meta(path: Path) -> TaskMeta:
    """Read and validate one meta file; ValueError (or OSError) when it is unusable."""
    with path.open("rb") as f:
        data = f.read(MAX_META_BYTES + 1)
    if len(data) > MAX_META_BYTES:
        raise ValueError("meta file too large")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError("meta file is not JSON") from e
    meta = TaskMeta.from_json(obj)
    if path.name != f"{meta.task_id}.meta":
        raise ValueError("meta file name does not match its task id")
    return meta


@dataclass(slots=True)
class Loaded:
    """One task found on disk at start-up."""

    meta: TaskMeta
    age: float  # seconds since the meta file was last written (for LRU across restarts)


def scan(layout: Layout, now_wall: float) -> tuple[list[Loaded], list[Path]]:
    """Load every valid task in the cache; delete what is unusable.

    A data file shorter than its length keeps only the pieces it fully contains. Meta files that
    do not validate, data files without a meta, and temporary files left by a crash are removed.
    Returns the tasks and the paths removed.
    """
    loaded: list[Loaded] = []
    removed: list[Path] = []
    if not layout.root.is_dir():
        return loaded, removed
    for sub in sorted(layout.root.iterdir()):
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        names = {p.name for p in sub.iterdir()}
        for name in sorted(names):
            p = sub / name
            if name.endswith(".tmp"):
                _unlink(p, removed)
            elif name.endswith(".data") and f"{name[:-5]}.meta" not in names:
                _unlink(p, removed)
            elif name.endswith(".meta"):
                item = _load_one(layout, p, now_wall)
                if item is None:
                    _unlink(p, removed)
                    _unlink(p.with_suffix(".data"), removed)
                else:
                    loaded.append(item)
    return loaded, removed


def _load_one(layout: Layout, p: Path, now_wall: float) -> Loaded | None:
    try:
        meta = read_meta(p)
        st_meta = p.stat()
        size = layout.data(meta.task_id).stat().st_size
    except (OSError, ValueError):
        return None
    plan = PiecePlan(meta.length, meta.piece_size)
    if size < meta.length:
        # Truncated data (disk trouble, or copied by hand): the pieces beyond are not there.
        for i in range(plan.count):
            if plan.start(i) + plan.size(i) > size:
                meta.digests[i] = None
        meta.complete = False
        meta.file_sha256 = ""  # recomputed once the missing pieces are back
    return Loaded(meta, max(0.0, now_wall - st_meta.st_mtime))


def remove_task_files(layout: Layout, task_id: str) -> None:
    removed: list[Path] = []
    _unlink(layout.data(task_id), removed)
    _unlink(layout.meta(task_id), removed)


def _unlink(p: Path, removed: list[Path]) -> None:
    try:
        p.unlink()
        removed.append(p)
    except FileNotFoundError:
        pass
