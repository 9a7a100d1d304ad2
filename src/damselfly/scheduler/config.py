"""The scheduler's knobs, validated once when built (an unknown policy name is a ConfigError)."""

from __future__ import annotations

from dataclasses import dataclass

from damselfly.core.errors import ConfigError
from damselfly.scheduler.policies import piece_policy, source_policy


@dataclass
class SchedulerConfig:
    #: concurrent uploads per peer host (supernode --up-limit; v1 peerUpLimit).
    up_limit: int = 5
    #: pieces in flight per downloading peer (--down-limit; v1 peerDownLimit).
    down_limit: int = 4
    #: concurrent pieces the supernode's piece server is asked to serve per task. v1 used 4,
    #: which starves a big swarm at the start: the supernode then sends one piece at a time to
    #: four peers and its uplink idles while they fetch. 16 keeps a supernode uplink ~16× a
    #: peer's link busy with one task, yet the supernode stays the fallback: holders with a
    #: free slot are always chosen first, so most bytes still move between peers.
    #: While it seeds (serves pieces nobody holds yet) these slots are shared out evenly:
    #: a downloader gets at most max(1, supernode_limit // peers on the task) of them at once.
    #: A peer serves a piece only once it holds all of it, so at the start the swarm's upload
    #: capacity grows with the number of peers holding *some* piece: sixteen peers each
    #: getting one piece become sources sooner than four peers getting four pieces each at a
    #: quarter of their link rate (the scale simulator, benchmarks/simulator, measured 1.51 →
    #: 1.39 × T_min at 200 peers). A small swarm still gets several pieces per peer.
    supernode_limit: int = 16
    #: The supernode seeds each piece once: it serves a piece that some peer already holds or
    #: is already fetching only to a peer that has had nothing in flight and nothing to fetch
    #: for this many seconds. Without this rule a crowd arriving together takes every piece
    #: from the supernode (each asks before any peer holds anything) and the swarm degenerates
    #: into N downloads from the supernode; with it the supernode's uplink carries each piece
    #: about once and peers carry the rest. The delay stays short so a peer whose holders are
    #: all busy or slow is still rescued quickly (0 turns the rule off).
    fallback_reuse_delay: float = 0.5
    #: Slow start for sources: a peer serves at most as many pieces at once as it holds of
    #: the task (and never more than up_limit). A piece is served only once it is whole, so
    #: while the swarm ramps up the number of holders is what limits it: a holder of one
    #: piece that sends it to one peer at its full rate makes a new holder every piece time
    #: (the holders double), where sharing its uplink among up_limit downloaders makes
    #: up_limit holders only after up_limit piece times (×6 per 5 piece times). A holder of
    #: k ≥ up_limit pieces is unaffected.
    source_slow_start: bool = True
    #: Slow start for downloads, the mirror image: a peer fetches at most as many pieces at
    #: once as it holds (one when it holds none; never more than down_limit). A fresh peer's
    #: whole downlink goes to the one piece that makes it a source, instead of four pieces
    #: at a quarter of the rate each; and just after the ramp, when every holder may serve
    #: one or two pieces at once, a downloader does not split its link four ways among
    #: sources that each send it a quarter of what they could (the scale simulator:
    #: 10.05 → 9.85 s at 1,000 peers).
    download_slow_start: bool = True
    #: Fresh peers first: while some peer that holds nothing of the task was told "every
    #: source is busy" within this many seconds (it is still asking), a peer that already
    #: holds pieces gets only the free upload slots beyond those the fresh peers need. An
    #: upload to a fresh peer adds a source; an upload to a holder only adds a copy — in the
    #: ramp the first is what shortens the distribution. Entries expire after the window so a
    #: fresh peer that went away stops counting (its engine asks at least every long poll,
    #: 2 s). 0 turns the rule off.
    fresh_first_window: float = 5.0
    #: with cdn_pattern "source": concurrent Range requests sent to the origin per task. The
    #: origin is someone else's server; peers are preferred and this caps the crowd it sees.
    origin_limit: int = 16
    #: consecutive failures as a source after which a peer is isolated (v1 auto-isolation).
    isolate_after: int = 5
    #: a downloader with more failed fetches from peers than this is served only by the
    #: supernode (or the origin): its own network is the likely problem (v1).
    client_fail_limit: int = 5
    #: seconds a requester avoids a source that failed it.
    blacklist_time: float = 60.0
    #: an assignment not reported within this many seconds is released (its slots freed).
    inflight_timeout: float = 30.0
    #: peers silent (no schedule call, no heartbeat) this long are dropped.
    peer_gc_delay: float = 180.0
    #: tasks with no peer activity this long are listed for removal by expire().
    task_expire: float = 180.0
    piece_policy: str = "rarest"
    source_policy: str = "least_loaded"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in (
            "up_limit",
            "down_limit",
            "supernode_limit",
            "origin_limit",
            "isolate_after",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"scheduler {name} must be a whole number ≥ 1, not {v!r}")
        v = self.client_fail_limit
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"scheduler client_fail_limit must be ≥ 0, not {v!r}")
        for name in (
            "blacklist_time",
            "inflight_timeout",
            "peer_gc_delay",
            "task_expire",
            "fallback_reuse_delay",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"scheduler {name} must be a positive number of seconds")
        v = self.fresh_first_window
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise ConfigError("scheduler fresh_first_window must be a number of seconds ≥ 0")
        for name in ("source_slow_start", "download_slow_start"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"scheduler {name} must be true or false")
        piece_policy(self.piece_policy)
        source_policy(self.source_policy)
