"""Wire messages between peer engines and supernodes (JSON over HTTP), validated and bounded.

See docs/protocol.md for the routes. Every ``from_json`` rejects malformed or oversized input
with BadRequest, which the HTTP layer turns into a 400 (never a 500).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from damselfly.core.errors import (
    REASON_DOWNLOAD_ERROR,
    REASON_MD5_MISMATCH,
    REASON_NO_SPACE,
    REASON_NO_SUPERNODE,
    REASON_REGISTER_FAIL,
    REASON_SOURCE_ERROR,
    REASON_USER_SOURCE,
    BadRequest,
)
from damselfly.core.ids import validate_md5, validate_peer_id, validate_task_id, validate_url

MAX_BODY = 256 * 1024
MAX_HEADERS = 64
MAX_HEADER_LEN = 8192
MAX_RESULTS = 1024
MAX_GRANT = 512  # core.grants.MAX_GRANT_LEN
PATTERNS = ("p2p", "cdn", "source")
SOURCE_KINDS = ("peer", "supernode", "origin")
#: "changed": the origin answered a Range request guarded by ``If-Range`` with another version of
#: the file (a 200, or a 206 of another length or validator); the supernode re-probes the origin
FAILURE_KINDS = ("", "digest", "timeout", "connect", "http", "short", "other", "changed")
#: bound of an origin validator (an ETag or a Last-Modified date) on the wire
MAX_VALIDATOR = 1024

# Source ids that are not peers.
SUPERNODE = "supernode"
ORIGIN = "origin"


def loads_bounded(body: bytes | str) -> dict[str, Any]:
    """Parse a JSON object of at most MAX_BODY bytes; nesting beyond Python's limit → 400."""
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest("request body is not valid JSON") from e
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str, default: str = "", limit: int = 1024) -> str:
    v = obj.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, str) or len(v) > limit:
        raise BadRequest(f"field {key!r} must be a string of at most {limit} characters")
    return v


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"field {key!r} must be an integer in {lo}..{hi}")
    return v


def _headers(obj: dict[str, Any]) -> dict[str, str]:
    v = obj.get("headers") or {}
    if not isinstance(v, dict) or len(v) > MAX_HEADERS:
        raise BadRequest(f"field 'headers' must be an object of at most {MAX_HEADERS} entries")
    out: dict[str, str] = {}
    for k, val in v.items():
        if not isinstance(val, str) or len(k) + len(val) > MAX_HEADER_LEN:
            raise BadRequest("header values must be strings of bounded length")
        if any(c in k + val for c in "\r\n\x00") or not k or ":" in k:
            raise BadRequest("header names and values must not contain control characters")
        out[k] = val
    return out


def _validator(obj: dict[str, Any]) -> str:
    """An origin validator, sent back to the origin as ``If-Range``: bounded, one header line."""
    v = _str(obj, "origin_validator", "", MAX_VALIDATOR)
    if any(c in v for c in "\r\n\x00"):
        raise BadRequest("field 'origin_validator' must not contain control characters")
    return v


def _digest(obj: dict[str, Any]) -> str:
    d = _str(obj, "digest", "", 64)
    if d and (len(d) != 64 or any(c not in "0123456789abcdef" for c in d)):
        raise BadRequest("field 'digest' must be 64 lowercase hex digits")
    return d


@dataclass(slots=True)
class PeerInfo:
    id: str
    ip: str
    port: int
    hostname: str = ""

    @classmethod
    def from_json(cls, obj: Any) -> PeerInfo:
        if not isinstance(obj, dict):
            raise BadRequest("field 'peer' must be an object")
        return cls(
            id=validate_peer_id(_str(obj, "id", limit=128)),
            ip=_str(obj, "ip", limit=64),
            port=_int(obj, "port", 0, 65535),
            hostname=_str(obj, "hostname", limit=255),
        )


@dataclass(slots=True)
class RegisterRequest:
    """POST /api/v1/register: join (or create) the task for ``url``.

    ``headers`` go to the origin (auth) and are secret: never logged, never listed.
    """

    url: str
    peer: PeerInfo
    filter: list[str] = field(default_factory=list)
    md5: str = ""
    identifier: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    pattern: str = "p2p"
    callsystem: str = ""

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RegisterRequest:
        flt = obj.get("filter") or []
        if (
            not isinstance(flt, list)
            or len(flt) > 64
            or not all(isinstance(k, str) and 0 < len(k) <= 256 for k in flt)
        ):
            raise BadRequest("field 'filter' must be a list of query keys")
        pattern = _str(obj, "pattern", "p2p", 16)
        if pattern not in PATTERNS:
            raise BadRequest(f"field 'pattern' must be one of {', '.join(PATTERNS)}")
        return cls(
            url=validate_url(_str(obj, "url", limit=8192)),
            peer=PeerInfo.from_json(obj.get("peer")),
            filter=flt,
            md5=validate_md5(_str(obj, "md5", limit=64)),
            identifier=_str(obj, "identifier", limit=1024),
            headers=_headers(obj),
            pattern=pattern,
            callsystem=_str(obj, "callsystem", limit=128),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RegisterResponse:
    task_id: str
    length: int
    piece_size: int
    piece_count: int
    cdn_pattern: str = "local"  # "source": pieces come from the origin by Range
    #: the task is private: piece servers serve it only to holders of a grant (core/grants.py)
    private: bool = False
    #: this peer's grant for a private task ("" for a public one)
    grant: str = ""
    #: the supernode's Ed25519 public key (base64url), with which grants are checked
    supernode_key: str = ""
    #: cdn_pattern "source": the version of the file this task is, as the supernode learned it
    #: from the origin (a strong ETag, else Last-Modified; "" when the origin gives neither).
    #: Peers send it as ``If-Range`` with every Range request to the origin, so all pieces of
    #: the task come from this one version; "" in the local pattern
    origin_validator: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RegisterResponse:
        private = obj.get("private", False)
        if not isinstance(private, bool):
            raise BadRequest("field 'private' must be a boolean")
        return cls(
            task_id=validate_task_id(_str(obj, "task_id", limit=64)),
            length=_int(obj, "length", 0, 2**50),
            piece_size=_int(obj, "piece_size", 1, 2**31),
            piece_count=_int(obj, "piece_count", 0, 2**31),
            cdn_pattern=_str(obj, "cdn_pattern", "local", 16),
            private=private,
            grant=_str(obj, "grant", "", MAX_GRANT),
            supernode_key=_str(obj, "supernode_key", "", 64),
            origin_validator=_validator(obj),
        )


@dataclass(slots=True)
class PieceResult:
    """What happened to one assigned piece. ``source`` is a peer id, 'supernode' or 'origin'."""

    piece: int
    ok: bool
    source: str
    failure: str = ""  # one of FAILURE_KINDS when not ok
    bytes: int = 0
    # hex sha256 the downloader computed, for a piece fetched from the origin by Range under
    # cdn_pattern "source" (the supernode holds no digest then): the first verified copy
    # defines the piece for every later downloader, so peers can still check what peers send
    digest: str = ""

    @classmethod
    def from_json(cls, obj: Any) -> PieceResult:
        if not isinstance(obj, dict):
            raise BadRequest("each result must be an object")
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise BadRequest("field 'ok' must be a boolean")
        source = _str(obj, "source", limit=128)
        if source not in (SUPERNODE, ORIGIN):
            validate_peer_id(source)
        failure = _str(obj, "failure", "", 16)
        if failure not in FAILURE_KINDS:
            raise BadRequest(f"field 'failure' must be one of {FAILURE_KINDS}")
        return cls(
            piece=_int(obj, "piece", 0, 2**31),
            ok=ok,
            source=source,
            failure=failure,
            bytes=_int(obj, "bytes", 0, 2**31, 0),
            digest=_digest(obj),
        )


@dataclass(slots=True)
class ScheduleRequest:
    """POST /api/v1/tasks/{task_id}/schedule: report results, ask for up to ``want`` pieces.

    The supernode may hold the request open (long poll, up to ``wait_ms``) when nothing can be
    scheduled yet, and answers as soon as something can.
    """

    peer_id: str
    results: list[PieceResult] = field(default_factory=list)
    want: int = 4
    wait_ms: int = 1000

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ScheduleRequest:
        results = obj.get("results") or []
        if not isinstance(results, list) or len(results) > MAX_RESULTS:
            raise BadRequest(f"field 'results' must be a list of at most {MAX_RESULTS}")
        return cls(
            peer_id=validate_peer_id(_str(obj, "peer_id", limit=128)),
            results=[PieceResult.from_json(r) for r in results],
            want=_int(obj, "want", 0, 64, 4),
            wait_ms=_int(obj, "wait_ms", 0, 30_000, 1000),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class PieceSource:
    id: str  # peer id, 'supernode' or 'origin'
    kind: str  # one of SOURCE_KINDS
    ip: str = ""
    port: int = 0


@dataclass(slots=True)
class PieceAssignment:
    num: int
    start: int
    size: int
    digest: str  # hex sha256 of the piece
    source: PieceSource

    @classmethod
    def from_json(cls, obj: Any) -> PieceAssignment:
        if not isinstance(obj, dict) or not isinstance(obj.get("source"), dict):
            raise BadRequest("malformed piece assignment")
        src = obj["source"]
        kind = _str(src, "kind", limit=16)
        if kind not in SOURCE_KINDS:
            raise BadRequest("malformed piece source")
        return cls(
            num=_int(obj, "num", 0, 2**31),
            start=_int(obj, "start", 0, 2**50),
            size=_int(obj, "size", 1, 2**31),
            digest=_str(obj, "digest", limit=64),
            source=PieceSource(
                id=_str(src, "id", limit=128),
                kind=kind,
                ip=_str(src, "ip", limit=64),
                port=_int(src, "port", 0, 65535, 0),
            ),
        )


# ScheduleResponse.status values
STATUS_PIECES = "pieces"  # here are pieces to fetch
STATUS_WAIT = "wait"  # nothing now; ask again (after retry_ms)
STATUS_DONE = "done"  # this peer holds every piece
STATUS_FAILED = "failed"  # the task failed (origin error); fall back or give up


@dataclass(slots=True)
class ScheduleResponse:
    status: str
    pieces: list[PieceAssignment] = field(default_factory=list)
    retry_ms: int = 0
    message: str = ""
    error_code: str = ""  # with STATUS_FAILED: an errors.*.code
    file_sha256: str = ""  # the whole file's sha256, known once the CDN has finished
    grant: str = ""  # a private task: this peer's renewed grant (its old one is past half-life)
    #: cdn_pattern "source": the task's current version (RegisterResponse.origin_validator);
    #: another value than the peer's means the task was reset to a new version of the file
    origin_validator: str = ""

    def to_json(self) -> dict[str, Any]:
        # written out by hand: dataclasses.asdict's generic deep copy was 14% of the supernode's
        # CPU per schedule call (profiled with py-spy under benchmarks/supernode_api.py)
        return {
            "status": self.status,
            "pieces": [
                {
                    "num": a.num,
                    "start": a.start,
                    "size": a.size,
                    "digest": a.digest,
                    "source": {
                        "id": a.source.id,
                        "kind": a.source.kind,
                        "ip": a.source.ip,
                        "port": a.source.port,
                    },
                }
                for a in self.pieces
            ],
            "retry_ms": self.retry_ms,
            "message": self.message,
            "error_code": self.error_code,
            "file_sha256": self.file_sha256,
            "grant": self.grant,
            "origin_validator": self.origin_validator,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ScheduleResponse:
        status = _str(obj, "status", limit=16)
        if status not in (STATUS_PIECES, STATUS_WAIT, STATUS_DONE, STATUS_FAILED):
            raise BadRequest(f"unknown schedule status {status!r}")
        pieces = obj.get("pieces") or []
        if not isinstance(pieces, list) or len(pieces) > 256:
            raise BadRequest("malformed pieces list")
        return cls(
            status=status,
            pieces=[PieceAssignment.from_json(p) for p in pieces],
            retry_ms=_int(obj, "retry_ms", 0, 60_000, 0),
            message=_str(obj, "message", "", 4096),
            error_code=_str(obj, "error_code", "", 64),
            file_sha256=_str(obj, "file_sha256", "", 64),
            grant=_str(obj, "grant", "", MAX_GRANT),
            origin_validator=_validator(obj),
        )


# -- back-source reports --------------------------------------------------------------------

#: v1 reason code → the name a peer reports when it downloads a task from the origin itself
#: (a bounded set: it is a metric label on the supernode; anything else counts as "other")
BACK_SOURCE_REASONS = {
    REASON_REGISTER_FAIL: "register_fail",
    REASON_MD5_MISMATCH: "md5_mismatch",
    REASON_DOWNLOAD_ERROR: "download_error",
    REASON_NO_SPACE: "no_space",
    REASON_NO_SUPERNODE: "no_supernode",
    REASON_SOURCE_ERROR: "source_error",
    REASON_USER_SOURCE: "user_source",
}
BACK_SOURCE_OTHER = "other"
BACK_SOURCE_NAMES = (*BACK_SOURCE_REASONS.values(), BACK_SOURCE_OTHER)


def back_source_reason(code: int) -> str:
    return BACK_SOURCE_REASONS.get(code, BACK_SOURCE_OTHER)


@dataclass(slots=True)
class BackSourceReport:
    """POST /api/v1/tasks/{task_id}/backsource: this peer downloads the task from the origin
    itself, for ``reason`` (an unknown reason is kept as "other", never refused)."""

    peer_id: str
    reason: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BackSourceReport:
        reason = _str(obj, "reason", BACK_SOURCE_OTHER, 64)
        return cls(
            peer_id=validate_peer_id(_str(obj, "peer_id", limit=128)),
            reason=reason if reason in BACK_SOURCE_NAMES else BACK_SOURCE_OTHER,
        )

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "reason": self.reason}


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error answer: ``{"error": code, "message": one line}``."""
    return {"error": code, "message": message}
