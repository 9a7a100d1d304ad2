"""Every state machine of the scheduler, as literal tables in one place.

Three roles have states: a task's CDN copy (``TASK``), a peer on one task (``PEER_TASK``) and a
peer host as a source (``SOURCE``). A transition not in its table is a bug in the caller and
raises :class:`IllegalTransition`, naming the role, the state and the event (as h11 does).
"""

from __future__ import annotations

from damselfly.core.errors import DamselflyError

# --- a task's copy at the CDN ----------------------------------------------------------------
TASK_WAITING = "waiting"  # registered; the CDN holds no piece yet
TASK_RUNNING = "running"  # the CDN holds some pieces (or, cdn_pattern "source", the origin does)
TASK_COMPLETE = "complete"  # the CDN holds the whole file and knows its sha256
TASK_FAILED = "failed"  # the origin failed; schedule answers STATUS_FAILED until a reset

TASK: dict[tuple[str, str], str] = {
    (TASK_WAITING, "piece_ready"): TASK_RUNNING,
    (TASK_WAITING, "from_origin"): TASK_RUNNING,  # cdn_pattern "source": all pieces at once
    (TASK_RUNNING, "piece_ready"): TASK_RUNNING,
    # A piece found corrupt and fetched again after the file was complete.
    (TASK_COMPLETE, "piece_ready"): TASK_COMPLETE,
    # The fetch that failed may still deliver a piece it had in hand: recorded, state kept.
    (TASK_FAILED, "piece_ready"): TASK_FAILED,
    (TASK_WAITING, "complete"): TASK_COMPLETE,  # an empty file, or a cache hit
    (TASK_RUNNING, "complete"): TASK_COMPLETE,
    (TASK_COMPLETE, "complete"): TASK_COMPLETE,
    (TASK_WAITING, "failed"): TASK_FAILED,
    (TASK_RUNNING, "failed"): TASK_FAILED,
    (TASK_COMPLETE, "failed"): TASK_FAILED,
    (TASK_FAILED, "failed"): TASK_FAILED,
    (TASK_WAITING, "reset"): TASK_WAITING,
    (TASK_RUNNING, "reset"): TASK_WAITING,
    (TASK_COMPLETE, "reset"): TASK_WAITING,
    (TASK_FAILED, "reset"): TASK_WAITING,
}

# --- one peer on one task --------------------------------------------------------------------
PEER_RUNNING = "running"  # still missing pieces
PEER_DONE = "done"  # holds every piece

PEER_TASK: dict[tuple[str, str], str] = {
    (PEER_RUNNING, "all_held"): PEER_DONE,
    (PEER_RUNNING, "reset"): PEER_RUNNING,
    (PEER_DONE, "reset"): PEER_RUNNING,  # the origin's content changed: start over
}

# --- a peer host as a source for others ------------------------------------------------------
SOURCE_ACTIVE = "active"
SOURCE_ISOLATED = "isolated"  # failed too often in a row: never chosen again (v1 auto-isolation)

SOURCE: dict[tuple[str, str], str] = {
    (SOURCE_ACTIVE, "isolate"): SOURCE_ISOLATED,
}


class IllegalTransition(DamselflyError):
    """An event that the role's table does not allow in its current state (a caller's bug)."""

    code = "scheduler_state"


def step(table: dict[tuple[str, str], str], role: str, state: str, event: str) -> str:
    """The state after ``event``; raise IllegalTransition when the table has no such edge."""
    try:
        return table[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"{role} cannot take event {event!r} in state {state!r}",
            "this is a bug in the supernode; please report it with the log",
        ) from None
