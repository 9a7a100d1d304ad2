"""The fluid network: nodes with an upload and a download rate, transfers between them.

Each transfer moves a fixed number of bytes from a sender to a receiver at a rate set by the
links it crosses, *equal share per link*: a sender with k uploads gives each ``up/k``, a
receiver with m downloads gives each ``down/m``, and a transfer runs at the smaller of its two
shares. Bandwidth one side leaves unused is not handed to the others (max-min fairness would);
the model is therefore slightly pessimistic, never optimistic. No TCP dynamics, no latency, no
loss: a transfer starts at full share at once.

Event-driven: rates change only when a transfer starts or ends, and then only for the
transfers sharing its sender or its receiver, so each event costs O(uploads per sender +
downloads per receiver), never O(transfers). Completion times sit in a heap; an entry made stale
by a rate change is skipped when popped (``Transfer.version``).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

#: a transfer with fewer bytes left than this counts as finished (float rounding)
EPSILON_BYTES = 1e-6


class Transfer:
    """Bytes in motion from ``src`` to ``dst``; ``tag`` is the caller's (piece number, …)."""

    __slots__ = (
        "done_at",
        "dst",
        "left",
        "rate",
        "size",
        "src",
        "started",
        "tag",
        "updated",
        "version",
    )

    def __init__(self, src: str, dst: str, size: float, tag: Any, now: float) -> None:
        self.src = src
        self.dst = dst
        self.size = size
        self.left = float(size)
        self.tag = tag
        self.rate = 0.0  # bytes/s
        self.started = now
        self.updated = now  # ``left`` is exact as of this time
        self.done_at = float("inf")
        self.version = 0

    def __repr__(self) -> str:
        return f"<Transfer {self.src}->{self.dst} {self.tag!r} left={self.left:.0f} rate={self.rate:.0f}>"


@dataclass
class Node:
    up: float  # bytes/s
    down: float  # bytes/s
    uploads: list[Transfer] = field(default_factory=list)
    downloads: list[Transfer] = field(default_factory=list)
    sent: float = 0.0  # bytes, counted when a transfer ends
    received: float = 0.0


class Network:
    """Nodes and the transfers between them; see the module docstring."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self._heap: list[tuple[float, int, int, Transfer]] = []
        self._seq = itertools.count()
        self.active = 0

    def add_node(self, name: str, up_bps: float, down_bps: float) -> None:
        """A host with ``up_bps``/``down_bps`` bits per second (inf: unlimited)."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} already exists")
        if not (up_bps > 0 and down_bps > 0):
            raise ValueError(f"node {name!r}: rates must be positive, not {up_bps}/{down_bps}")
        self.nodes[name] = Node(up_bps / 8, down_bps / 8)

    def start(self, src: str, dst: str, size: float, tag: Any, now: float) -> Transfer:
        if size <= 0:
            raise ValueError(f"a transfer moves at least one byte, not {size}")
        s, d = self.nodes[src], self.nodes[dst]
        x = Transfer(src, dst, size, tag, now)
        s.uploads.append(x)
        d.downloads.append(x)
        self.active += 1
        self._rerate(s, d, now)
        return x

    def next_time(self) -> float:
        """When the next transfer ends (inf when none is active)."""
        heap = self._heap
        while heap and heap[0][2] != heap[0][3].version:
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")

    def pop_done(self) -> tuple[float, Transfer]:
        """End the transfer that finishes first; the caller's clock moves to the returned time."""
        t = self.next_time()
        if t == float("inf"):
            raise LookupError("no transfer in progress")
        _, _, _, x = heapq.heappop(self._heap)
        s, d = self.nodes[x.src], self.nodes[x.dst]
        s.uploads.remove(x)
        d.downloads.remove(x)
        s.sent += x.size
        d.received += x.size
        x.left = 0.0
        x.version += 1
        self.active -= 1
        self._rerate(s, d, t)
        return t, x

    def rate_in_use(self) -> float:
        """Bits/s moving right now, over every transfer (O(transfers): for traces)."""
        return 8 * sum(x.rate for n in self.nodes.values() for x in n.uploads)

    def _rerate(self, s: Node, d: Node, now: float) -> None:
        """Recompute every transfer sharing ``s``'s uplink or ``d``'s downlink."""
        for x in itertools.chain(s.uploads, d.downloads):
            self._update(x, now)

    def _update(self, x: Transfer, now: float) -> None:
        nodes = self.nodes
        s, d = nodes[x.src], nodes[x.dst]
        rate = min(s.up / len(s.uploads), d.down / len(d.downloads))
        x.left -= x.rate * (now - x.updated)
        x.updated = now
        if rate == x.rate and x.done_at != float("inf"):
            return  # unchanged: its heap entry still holds
        x.rate = rate
        x.version += 1
        left = x.left if x.left > EPSILON_BYTES else 0.0
        x.done_at = now + left / rate
        heapq.heappush(self._heap, (x.done_at, next(self._seq), x.version, x))
