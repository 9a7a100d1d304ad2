"""The download plan of one task on one supernode: pure state, events in, decisions out.

It knows which pieces this engine holds (and their digests), which are in flight, which results
are still to be reported, and how much to ask the scheduler for. It never awaits, never touches
a socket, never reads a clock: the driver (``download.py``) feeds it schedule responses and piece
outcomes and does what it says.

Under cdn_pattern "source" the plan also knows the version of the file the task is
(``origin_validator``, from the supernode): a schedule answer naming another version means the
task was reset to new content, and the local copy is stale. Pieces then carry a digest whenever
they go from peer to peer: a piece fetched from the origin (or held from an earlier download of
the same version) is reported with the sha256 computed here, and a piece a peer would send
without any digest to check it against is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    ORIGIN,
    STATUS_DONE,
    SUPERNODE,
    PieceAssignment,
    PieceResult,
    ScheduleResponse,
)

#: a piece that failed this many times (from any sources) means the swarm cannot deliver it
MAX_PIECE_FAILURES = 5
#: bytes of pieces held in memory at once (each in-flight piece is buffered until verified)
IN_FLIGHT_BUDGET = 48 * 1024 * 1024
MIN_DOWN_LIMIT = 2
MAX_DOWN_LIMIT = 8


def down_limit_for(piece_size: int) -> int:
    """How many pieces to fetch at once: 8 small pieces, fewer big ones (memory stays bounded)."""
    return max(MIN_DOWN_LIMIT, min(MAX_DOWN_LIMIT, IN_FLIGHT_BUDGET // max(piece_size, 1)))


def source_class(a: PieceAssignment) -> str:
    """Which ``bytes_from`` counter a piece's bytes go to: origin, supernode or peers."""
    if a.source.kind == "origin" or a.source.id == ORIGIN:
        return "origin"
    if a.source.kind == "supernode" or a.source.id == SUPERNODE:
        return "supernode"
    return "peers"


@dataclass(slots=True)
class Decision:
    """What the driver must do after a schedule response."""

    fetch: list[PieceAssignment] = field(default_factory=list)
    #: a held piece's digest differs from the scheduler's: the origin's content changed and the
    #: local copy is stale. Nothing was applied: drop the copy, ``drop_local_copy()``, apply again.
    stale: bool = False
    #: assignments that did not fit the task's geometry (reported as failures, kind "other")
    rejected: int = 0
    #: with ``stale``: the version of the file the task now is (cdn_pattern "source"), to pin
    #: once the copy is dropped (``drop_local_copy(new_version)``); None: the digests said so
    new_version: str | None = None
    #: pieces a peer would have sent without a digest (reported failed, kind "other")
    unverifiable: int = 0


@dataclass
class DownloadPlan:
    pieces: PiecePlan
    held: dict[int, str] = field(default_factory=dict)  # piece → hex sha256 ("" = not known)
    down_limit: int = 4
    max_failures: int = MAX_PIECE_FAILURES
    in_flight: dict[int, PieceAssignment] = field(default_factory=dict)
    results: list[PieceResult] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    bytes_from: dict[str, int] = field(
        default_factory=lambda: {"origin": 0, "supernode": 0, "peers": 0}
    )
    file_sha256: str = ""
    done_seen: bool = False
    #: cdn_pattern "source": the origin's version of the file this task is (its validator;
    #: "" = the origin names none); None: not versioned (the supernode's digests say it all)
    origin_validator: str | None = None

    @classmethod
    def start(
        cls,
        pieces: PiecePlan,
        held: Mapping[int, str] | None = None,
        down_limit: int = 0,
        origin_validator: str | None = None,
    ) -> DownloadPlan:
        keep = {n: d for n, d in (held or {}).items() if 0 <= n < pieces.count}
        plan = cls(pieces, keep, down_limit or down_limit_for(pieces.piece_size))
        plan.origin_validator = origin_validator
        return plan

    # -- questions -------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every piece is held here."""
        return len(self.held) >= self.pieces.count

    @property
    def held_bytes(self) -> int:
        return sum(self.pieces.size(n) for n in self.held)

    def want(self) -> int:
        """How many more pieces to ask for: the down limit minus what is in flight.

        With every piece already here (an earlier download) but the scheduler not yet agreeing,
        ask anyway: the pieces it assigns are reported held at once, which makes this engine a
        source for them and lets the scheduler answer "done" (with the file's digest).
        """
        if self.done_seen:
            return 0
        free = self.down_limit - len(self.in_flight)
        if self.complete:
            return max(0, free)
        missing = self.pieces.count - len(self.held) - len(self.in_flight)
        return max(0, min(free, missing))

    def wait_ms(self, long_poll_ms: int) -> int:
        """Long-poll only when nothing is in flight, so a finished piece is reported at once."""
        return 0 if self.in_flight else long_poll_ms

    def finished(self, digest_known_locally: bool) -> bool:
        """The piece loop may stop: everything held and reported, and the scheduler agreed (or
        the whole-file digest is known without it)."""
        if not self.complete or self.in_flight or self.results:
            return False
        return self.done_seen or bool(self.file_sha256) or digest_known_locally

    def gave_up(self) -> int | None:
        """A piece the swarm failed to deliver too often (→ back to the origin), or None."""
        for num, n in self.failures.items():
            if n >= self.max_failures and num not in self.held:
                return num
        return None

    # -- events ----------------------------------------------------------------------------

    def on_response(self, resp: ScheduleResponse) -> Decision:
        if resp.file_sha256:
            self.file_sha256 = resp.file_sha256.lower()
        if self.version_changed(resp):
            # nothing applied: see Decision.stale
            return Decision(stale=True, new_version=resp.origin_validator)
        if self.is_stale(resp):
            return Decision(stale=True)  # nothing applied: see Decision.stale
        if resp.status == STATUS_DONE:
            self.done_seen = True
        d = Decision()
        for a in resp.pieces:
            if not self._fits(a):
                d.rejected += 1
                self.results.append(PieceResult(a.num, False, _src_id(a), "other", 0))
                continue
            if a.num in self.in_flight:
                continue
            if a.num in self.held:
                # Already here (from an earlier download of the task, same version): report it
                # at once, with its digest when the scheduler has none (an origin piece under
                # cdn_pattern "source"), so the peers it is handed to can check it.
                mine = self.held[a.num] if a.source.kind == "origin" and not a.digest else ""
                self.results.append(PieceResult(a.num, True, _src_id(a), "", 0, digest=mine))
                continue
            if self.origin_validator is not None and a.source.kind == "peer" and not a.digest:
                # nothing to check its bytes against: they could be any version of the file
                d.unverifiable += 1
                self.results.append(PieceResult(a.num, False, _src_id(a), "other", 0))
                continue
            self.in_flight[a.num] = a
            d.fetch.append(a)
        return d

    def is_stale(self, resp: ScheduleResponse) -> bool:
        """A piece held here has another digest than the scheduler's: the origin's content
        changed since the local copy was made."""
        for a in resp.pieces:
            mine = self.held.get(a.num)
            if mine and a.digest and mine != a.digest.lower():
                return True
        return False

    def version_changed(self, resp: ScheduleResponse) -> bool:
        """cdn_pattern "source": the supernode names another version of the file than this
        plan's (it reset the task: the origin's content changed)."""
        return self.origin_validator is not None and resp.origin_validator != self.origin_validator

    def drop_local_copy(self, new_version: str | None = None) -> None:
        """The local copy was dropped (stale): nothing is held any more; unreported claims of
        holding pieces are void; pieces in flight were abandoned (reported failed, so the
        scheduler gives them out again). With ``new_version`` (the task was reset to another
        version of the file) failures of the old version no longer count either."""
        if new_version is not None:
            self.origin_validator = new_version
            self.failures.clear()
            self.file_sha256 = ""
            self.done_seen = False
        self.held.clear()
        self.results = [r for r in self.results if not r.ok]
        for num, a in sorted(self.in_flight.items()):
            self.results.append(PieceResult(num, False, _src_id(a), "other", 0))
        self.in_flight.clear()

    def on_piece(
        self, num: int, ok: bool, failure: str = "", nbytes: int = 0, digest: str = ""
    ) -> None:
        """A fetch ended. ``digest`` is the sha256 the piece was verified (or, with no digest
        assigned, computed) to have: a piece fetched from the origin without a digest
        (cdn_pattern "source") reports it, and the first such report defines the piece for
        every later downloader."""
        a = self.in_flight.pop(num, None)
        if a is None:
            return
        reported = ""
        if ok:
            self.held[num] = (a.digest or digest).lower()
            self.bytes_from[source_class(a)] += nbytes
            if not a.digest and a.source.kind == "origin":
                reported = digest.lower()
        else:
            self.failures[num] = self.failures.get(num, 0) + 1
        self.results.append(
            PieceResult(num, ok, _src_id(a), "" if ok else failure, nbytes, digest=reported)
        )

    def take_results(self) -> list[PieceResult]:
        out, self.results = self.results, []
        return out

    def requeue(self, results: list[PieceResult]) -> None:
        """Results that did not reach the scheduler (its call failed) go out with the next."""
        self.results[:0] = results

    def _fits(self, a: PieceAssignment) -> bool:
        if not 0 <= a.num < self.pieces.count:
            return False
        return a.start == self.pieces.start(a.num) and a.size == self.pieces.size(a.num)

    def __repr__(self) -> str:
        return (
            f"DownloadPlan(held={len(self.held)}/{self.pieces.count}, "
            f"in_flight={sorted(self.in_flight)}, unreported={len(self.results)}, "
            f"failures={sum(self.failures.values())}, done_seen={self.done_seen})"
        )


def off_version(count: int, versions: Mapping[int, str], version: str) -> list[int]:
    """cdn_pattern "source", before the file is placed: the pieces (of ``count``) not tied to
    ``version``, the one the supernode names now — held under another version, or under none.
    The file is placed only when this is empty: its bytes then all come from one version.

    Nothing else can tell two versions apart here: the supernode has no digest of the whole
    file, and a piece's digest only says it is the bytes reported under the version it was
    assigned under. So the version travels with each piece, from the answer that assigned it
    to the store (``TaskData.versions``), and is checked once more at the end, against the
    last answer's."""
    return [n for n in range(count) if versions.get(n) != version or not version]


def _src_id(a: PieceAssignment) -> str:
    return a.source.id or (ORIGIN if a.source.kind == "origin" else SUPERNODE)
