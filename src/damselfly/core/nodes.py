"""Supernode lists (``host[:port][=weight]``) and which supernode owns a task.

A task belongs to one supernode by weighted rendezvous hashing of the task id over the list, so
every peer of a task meets on the same supernode; the rest of the ordering is the failover order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from damselfly.core.errors import ConfigError

DEFAULT_SUPERNODE_PORT = 8002


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int = DEFAULT_SUPERNODE_PORT
    weight: int = 1

    @property
    def addr(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}"


def parse_node(spec: str) -> Node:
    spec = spec.strip()
    if not spec or len(spec) > 300:
        raise ConfigError(f"invalid node {spec!r}", "use host[:port][=weight]")
    weight = 1
    if "=" in spec:
        spec, w = spec.rsplit("=", 1)
        try:
            weight = int(w)
        except ValueError as e:
            raise ConfigError(f"invalid node weight {w!r}", "weight must be an integer") from e
        if not 1 <= weight <= 1000:
            raise ConfigError(f"invalid node weight {weight}", "weight must be 1..1000")
    host, port = spec, DEFAULT_SUPERNODE_PORT
    if spec.startswith("["):  # [v6]:port
        end = spec.find("]")
        if end < 0:
            raise ConfigError(f"invalid node {spec!r}")
        host = spec[1:end]
        rest = spec[end + 1 :]
        if rest.startswith(":"):
            port = _port(rest[1:], spec)
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = _port(p, spec)
    if not host:
        raise ConfigError(f"invalid node {spec!r}", "use host[:port][=weight]")
    return Node(host, port, weight)


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError as e:
        raise ConfigError(f"invalid port in node {spec!r}") from e
    if not 0 < port < 65536:
        raise ConfigError(f"invalid port in node {spec!r}")
    return port


def parse_nodes(specs: str | list[str] | None) -> list[Node]:
    """``"a:8002=2,b"`` or ``["a:8002", "b"]`` → nodes, duplicates removed, order kept."""
    if not specs:
        return []
    items = specs.split(",") if isinstance(specs, str) else [s for x in specs for s in x.split(",")]
    out: list[Node] = []
    seen: set[tuple[str, int]] = set()
    for item in items:
        if not item.strip():
            continue
        node = parse_node(item)
        if (node.host, node.port) not in seen:
            seen.add((node.host, node.port))
            out.append(node)
    return out


def rendezvous_order(task_id: str, nodes: list[Node]) -> list[Node]:
    """Nodes ordered by weighted rendezvous score for ``task_id``: the first owns the task.

    Score = -weight / ln(u) with u uniform in (0, 1) from sha256(task_id, node): the standard
    weighted HRW, so a node with twice the weight owns about twice the tasks, and removing a node
    only moves the tasks it owned.
    """

    def score(node: Node) -> float:
        h = hashlib.sha256(f"{task_id}|{node.host}:{node.port}".encode()).digest()
        u = (int.from_bytes(h[:8], "big") + 1) / (2**64 + 2)
        return -node.weight / math.log(u)

    return sorted(nodes, key=score, reverse=True)
