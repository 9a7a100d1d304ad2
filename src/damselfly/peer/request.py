"""A download request as it crosses the control channel (dfget → engine), validated and bounded.

``headers`` are the user's secrets for the origin: they travel only in this message (over the
engine's 0600 unix socket), are used towards the origin and the supernode's registration, and
never appear in a log line, an argv, an error text or ``repr``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from damselfly.core.errors import BadRequest, ConfigError
from damselfly.core.ids import parse_filter, validate_md5, validate_url
from damselfly.core.nodes import Node, parse_nodes
from damselfly.core.protocol import PATTERNS, _headers

MAX_PATH = 4096
MAX_NODES = 64
MAX_CACERTS = 16
#: v1: with ``--minrate`` the timeout is length/minrate plus this slack
TIMEOUT_SLACK = 10.0


@dataclass(slots=True)
class DownloadRequest:
    url: str
    output: str  # absolute path
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    md5: str = ""
    identifier: str = ""
    filter: list[str] = field(default_factory=list)
    pattern: str = "p2p"
    nodes: list[str] = field(default_factory=list)
    locallimit: int | None = None  # bytes/s for this task
    totallimit: int | None = None  # bytes/s for the whole engine
    minrate: int | None = None  # bytes/s, only used for the timeout
    timeout: float | None = None  # seconds for the whole download
    notbs: bool = False
    callsystem: str = ""
    cacerts: list[str] = field(default_factory=list)
    insecure: bool = False

    def node_list(self) -> list[Node]:
        return parse_nodes(self.nodes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DownloadRequest:
        output = _s(obj, "output", MAX_PATH)
        if not output or not os.path.isabs(output) or "\x00" in output:
            raise BadRequest("field 'output' must be an absolute path")
        if output.endswith("/"):
            raise BadRequest(f"output {output!r} names a directory", "give a file name")
        pattern = _s(obj, "pattern", 16) or "p2p"
        if pattern not in PATTERNS:
            raise BadRequest(f"pattern must be one of {', '.join(PATTERNS)}")
        flt = obj.get("filter") or []
        if isinstance(flt, str):
            flt = parse_filter(flt)
        if not isinstance(flt, list) or len(flt) > 64:
            raise BadRequest("field 'filter' must be a list of at most 64 query keys")
        for k in flt:
            if not isinstance(k, str) or not 0 < len(k) <= 256:
                raise BadRequest("filter keys must be non-empty strings")
        nodes = obj.get("nodes") or []
        if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
            raise BadRequest(f"field 'nodes' must be a list of at most {MAX_NODES}")
        for n in nodes:
            if not isinstance(n, str) or len(n) > 300:
                raise BadRequest("nodes must be strings host[:port][=weight]")
        try:
            parse_nodes(nodes)
        except ConfigError as e:
            raise BadRequest(str(e)) from e
        cacerts = obj.get("cacerts") or []
        if not isinstance(cacerts, list) or len(cacerts) > MAX_CACERTS:
            raise BadRequest(f"field 'cacerts' must be a list of at most {MAX_CACERTS} paths")
        for c in cacerts:
            if not isinstance(c, str) or not c or len(c) > MAX_PATH or "\x00" in c:
                raise BadRequest("cacerts must be file paths")
        return cls(
            url=validate_url(_s(obj, "url", 8192)),
            output=os.path.normpath(output),
            headers=_headers(obj),
            md5=validate_md5(_s(obj, "md5", 64)),
            identifier=_s(obj, "identifier", 1024),
            filter=list(flt),
            pattern=pattern,
            nodes=list(nodes),
            locallimit=_rate(obj, "locallimit"),
            totallimit=_rate(obj, "totallimit"),
            minrate=_rate(obj, "minrate"),
            timeout=_seconds(obj, "timeout"),
            notbs=_bool(obj, "notbs"),
            callsystem=_s(obj, "callsystem", 128),
            cacerts=list(cacerts),
            insecure=_bool(obj, "insecure"),
        )


def compute_timeout(timeout: float | None, minrate: int | None, length: int | None) -> float | None:
    """v1's rule: ``--timeout`` if given, else length/minrate + 10 s when ``--minrate`` is set.

    None means no deadline. The length is unknown until the supernode (or origin) answers.
    """
    if timeout:
        return timeout
    if minrate and length is not None and length >= 0:
        return length / minrate + TIMEOUT_SLACK
    return None


def _s(obj: dict[str, Any], key: str, limit: int) -> str:
    v = obj.get(key)
    if v is None:
        return ""
    if not isinstance(v, str) or len(v) > limit:
        raise BadRequest(f"field {key!r} must be a string of at most {limit} characters")
    return v


def _bool(obj: dict[str, Any], key: str) -> bool:
    v = obj.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"field {key!r} must be a boolean")
    return v


def _rate(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None or v == 0:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 2**50:
        raise BadRequest(f"field {key!r} must be a positive number of bytes per second")
    return v


def _seconds(obj: dict[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if v is None or v == 0:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 10 * 365 * 86400:
        raise BadRequest(f"field {key!r} must be a positive number of seconds")
    return float(v)
