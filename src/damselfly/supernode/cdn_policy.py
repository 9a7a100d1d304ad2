"""Pure decisions of the supernode's passive CDN: what to do with a cached task, how to read an
origin's answer, which errors to retry, the negative cache and the disk-space check.

Nothing here awaits, touches a socket or a file, or reads the clock: ``now`` is passed in. The
I/O driver (``cdn.py``) asks these functions and carries out the answer, so the rules can be
tested as tables (``tests/unit/supernode/test_cdn_policy.py``).
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from damselfly.core.errors import (
    DamselflyError,
    NoSpaceError,
    OriginAuthError,
    OriginError,
    OriginNotFound,
)
from damselfly.core.pieces import PiecePlan

#: the largest file the CDN accepts (the protocol's bound on a task length)
MAX_LENGTH = 2**50

#: request headers the CDN sets itself or that must not travel to the origin from a caller:
#: conditional/range headers would change what the origin answers, hop-by-hop headers belong to
#: the caller's own connection, and Accept-Encoding is pinned to identity so that the bytes
#: cached (and their digests) are the file's own bytes, not a compressed transfer encoding.
DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "accept-encoding",
    }
)

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d{1,16})-(\d{1,16})/(\d{1,16})$")


class Action(enum.Enum):
    """What ``ensure()`` does with a task, given what the cache holds."""

    JOIN = "join"  # a request for the task is under way: wait for it (single flight)
    REUSE = "reuse"  # the cached copy is fresh enough: no origin request
    REVALIDATE = "revalidate"  # complete copy: one conditional request (304 → reuse)
    RESUME = "resume"  # partial copy with an If-Range validator: fetch the missing pieces
    FETCH = "fetch"  # nothing usable: one plain GET from the first byte


@dataclass(frozen=True, slots=True)
class CacheState:
    """What the decision needs to know about one task."""

    known: bool  # the length (hence the piece plan) is known
    complete: bool  # every piece is held
    pieces_held: int
    busy: bool  # an origin request for the task is under way
    content_addressed: bool  # the URL names the content's sha256: it cannot change
    can_revalidate: bool  # an ETag or Last-Modified to send with a conditional request
    can_resume: bool  # a strong validator for If-Range
    last_validated: float | None  # clock time the origin last confirmed the content


def decide(state: CacheState, now: float, window: float) -> Action:
    """The cached-task decision: join / reuse / revalidate / resume / fetch."""
    if state.busy:
        return Action.JOIN
    if not state.known:
        return Action.FETCH
    if state.complete:
        if state.content_addressed:
            return Action.REUSE
        if state.last_validated is not None and 0 <= now - state.last_validated <= window:
            return Action.REUSE
        return Action.REVALIDATE if state.can_revalidate else Action.FETCH
    if state.pieces_held > 0 and state.can_resume:
        return Action.RESUME
    return Action.FETCH


def if_range_validator(etag: str, last_modified: str) -> str:
    """The value for ``If-Range``: a strong ETag, else Last-Modified, else "" (cannot resume).

    RFC 9110 forbids weak ETags in If-Range, and without any validator a 206 could come from a
    different version of the file — which would stitch two versions together.
    """
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified


def conditional_headers(etag: str, last_modified: str) -> dict[str, str]:
    """Headers of a revalidation request (empty when the origin gave no validator)."""
    out: dict[str, str] = {}
    if etag:
        out["If-None-Match"] = etag
    if last_modified:
        out["If-Modified-Since"] = last_modified
    return out


def clean_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers minus those the CDN controls (see DROPPED_HEADERS)."""
    return {k: v for k, v in headers.items() if k.lower() not in DROPPED_HEADERS}


def missing_runs(held: list[bool]) -> list[tuple[int, int]]:
    """Contiguous runs (first, last) of pieces not held, in order: one Range request each."""
    runs: list[tuple[int, int]] = []
    start = -1
    for i, ok in enumerate(held):
        if not ok and start < 0:
            start = i
        elif ok and start >= 0:
            runs.append((start, i - 1))
            start = -1
    if start >= 0:
        runs.append((start, len(held) - 1))
    return runs


def range_header(plan: PiecePlan, first: int, last: int) -> tuple[str, int, int]:
    """``Range`` value covering pieces first..last, and the inclusive byte range it asks for."""
    start = plan.start(first)
    end = plan.range(last)[1]
    return f"bytes={start}-{end}", start, end


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes a-b/total`` → (a, b, total); anything else (``*``, garbage, a > b) → None."""
    if not value:
        return None
    m = _CONTENT_RANGE_RE.match(value.strip())
    if not m:
        return None
    a, b, total = (int(g) for g in m.groups())
    if a > b or b >= total:
        return None
    return a, b, total


def parse_content_length(value: str | None) -> int | None:
    """A valid Content-Length, or None (absent or malformed: treat the body as unbounded)."""
    if value is None or not value.strip().isdecimal() or not value.strip().isascii():
        return None
    if len(value.strip()) > 16:
        return None
    return int(value.strip())


class Kind(enum.Enum):
    """What an origin request asked for."""

    FULL = "full"  # plain GET of the whole file
    RANGE = "range"  # Range + If-Range for missing pieces of the cached version
    CONDITIONAL = "conditional"  # If-None-Match / If-Modified-Since of a complete copy


class Verdict(enum.Enum):
    """What to do with an origin's answer."""

    NOT_MODIFIED = "not_modified"  # 304: the cached copy is current
    UNCHANGED = "unchanged"  # 200 whose validators and length equal ours: same content, no body
    FULL_BODY = "full_body"  # 200 carrying the whole (new or first) version: take it from byte 0
    PARTIAL = "partial"  # 206 exactly as asked, same version: take the pieces
    START_OVER = "start_over"  # unusable partial answer: ask again with a plain GET
    ERROR = "error"  # an error status (see status_error)


@dataclass(frozen=True, slots=True)
class Head:
    """The parts of an origin's answer the verdict needs."""

    status: int
    length: int | None = None  # Content-Length
    content_range: tuple[int, int, int] | None = None
    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True, slots=True)
class Cached:
    """The version the CDN holds (for RANGE and CONDITIONAL requests)."""

    length: int = -1
    etag: str = ""
    last_modified: str = ""


def judge(kind: Kind, head: Head, cached: Cached, want: tuple[int, int] | None = None) -> Verdict:
    """Read an origin's answer to a request of ``kind``.

    ``want`` is the inclusive byte range a RANGE request asked for. A 206 is accepted only when
    it is exactly that range of a file of the cached length with the cached ETag; a 200 to a
    Range request is the origin saying "this is the whole, current file" (no ranges, or If-Range
    failed because the content changed): it is taken as a new version from byte 0, never
    stitched onto the old pieces.
    """
    s = head.status
    if s == 304 and kind is Kind.CONDITIONAL:
        return Verdict.NOT_MODIFIED
    if s == 200:
        if (
            kind is Kind.CONDITIONAL
            and head.length == cached.length
            and _same_version(head, cached)
        ):
            return Verdict.UNCHANGED
        return Verdict.FULL_BODY
    if kind is Kind.RANGE and s == 416:
        return Verdict.START_OVER
    if kind is Kind.RANGE and s == 206:
        cr = head.content_range
        if cr is None or want is None or (cr[0], cr[1]) != want or cr[2] != cached.length:
            return Verdict.START_OVER
        if head.etag and cached.etag and head.etag != cached.etag:
            return Verdict.START_OVER
        return Verdict.PARTIAL
    return Verdict.ERROR


def _same_version(head: Head, cached: Cached) -> bool:
    """A 200 to a conditional request still names our version (the origin ignored If-*)."""
    if head.etag and cached.etag:
        return head.etag == cached.etag and not head.etag.startswith("W/")
    if head.last_modified and cached.last_modified and not (head.etag or cached.etag):
        return head.last_modified == cached.last_modified
    return False


def status_error(status: int, url: str, negative_ttl: float = 0.0) -> OriginError:
    """The error for an origin status the CDN cannot use. ``url`` must already be redacted."""
    if status in (404, 410):
        return OriginNotFound(
            f"the origin has no file at {url} (HTTP {status})",
            f"check the URL; this answer is remembered for {negative_ttl:.0f}s",
            status=status,
        )
    if status in (401, 407):
        return OriginAuthError(
            f"the origin requires credentials for {url} (HTTP {status})",
            "pass them with --header, e.g. --header 'Authorization: Bearer …'",
            status=status,
        )
    if status == 403:
        return OriginAuthError(
            f"the origin refused access to {url} (HTTP 403)",
            "check the credentials passed with --header",
            status=status,
        )
    if status >= 500 or status == 429:
        return OriginError(
            f"the origin failed to serve {url} (HTTP {status})",
            "the origin is overloaded or broken; try again later",
            status=status,
        )
    return OriginError(
        f"the origin answered {url} with an unexpected HTTP {status}",
        "check that the URL names a plain downloadable file",
        status=status,
    )


def is_retriable(err: DamselflyError) -> bool:
    """Transient origin failures (network, timeouts, 5xx, 429) are retried; the rest are not."""
    if not isinstance(err, OriginError) or isinstance(err, OriginNotFound | OriginAuthError):
        return False
    return err.status is None or err.status >= 500 or err.status == 429


def backoff(attempt: int, base: float, cap: float = 5.0) -> float:
    """Delay before retry number ``attempt`` (1, 2, …): base, 2·base, 4·base … up to cap."""
    return min(cap, base * (2 ** max(0, attempt - 1)))


def check_space(free: int, needed: int, reserve: int, where: str, url: str) -> NoSpaceError | None:
    """None when ``needed`` bytes fit in ``free`` while keeping ``reserve`` free."""
    if free - reserve >= needed:
        return None
    return NoSpaceError(
        f"not enough disk space under {where} to cache {url}: {needed} bytes needed, "
        f"{free} free, {reserve} kept in reserve",
        "free space on the supernode's --home-dir, or let disk GC remove old tasks",
    )


class NegativeCache:
    """Origin 404s remembered for ``ttl`` seconds, so that the origin is not hammered.

    Bounded: beyond ``cap`` entries the oldest are forgotten.
    """

    def __init__(self, ttl: float, cap: int = 10_000) -> None:
        self.ttl = ttl
        self.cap = cap
        self._entries: OrderedDict[str, tuple[float, OriginNotFound]] = OrderedDict()

    def remember(self, task_id: str, err: OriginNotFound, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(task_id, None)
        self._entries[task_id] = (now + self.ttl, err)
        while len(self._entries) > self.cap:
            self._entries.popitem(last=False)

    def lookup(self, task_id: str, now: float) -> OriginNotFound | None:
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        expiry, err = entry
        if now >= expiry:
            del self._entries[task_id]
            return None
        return err

    def forget(self, task_id: str) -> None:
        self._entries.pop(task_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"NegativeCache(ttl={self.ttl}, entries={len(self._entries)})"
