"""JSON-able views of the scheduler's state for the API and console (never any credential:
the scheduler holds no URL and no header)."""

from __future__ import annotations

from typing import Any

from damselfly.scheduler.model import Peer, Task
from damselfly.scheduler.states import PEER_DONE, TASK_COMPLETE, TASK_FAILED


def task_view(task: Task, with_peers: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "task_id": task.id,
        "length": task.plan.length,
        "piece_size": task.plan.piece_size,
        "piece_count": task.plan.count,
        "cdn_pattern": task.cdn_pattern,
        "state": task.state,
        "pieces_ready": task.ready_count,
        "complete": task.state == TASK_COMPLETE,
        "failed": task.state == TASK_FAILED,
        "error_code": task.error_code,
        "file_sha256": task.file_sha256,
        "bytes_by_source": dict(task.bytes_by_kind),
        "inflight_from_fallback": task.fallback_inflight,
        "peer_count": len(task.peers),
        "peers_done": sum(tp.state == PEER_DONE for tp in task.peers.values()),
    }
    if with_peers:
        view["peers"] = [
            {
                "id": tp.id,
                "ip": tp.peer.info.ip,
                "port": tp.peer.info.port,
                "pattern": tp.pattern,
                "pieces": tp.held,
                "done": tp.state == PEER_DONE,
                "inflight": len(tp.inflight),
                "failures": tp.failures,
            }
            for tp in task.peers.values()
        ]
    return view


def peer_view(p: Peer) -> dict[str, Any]:
    return {
        "id": p.id,
        "ip": p.info.ip,
        "port": p.info.port,
        "hostname": p.info.hostname,
        "tasks": sorted(p.tasks),
        "uploads": len(p.serving),
        "bytes_served": p.bytes_served,
        "failures": p.failures,
        "consecutive_failures": p.consecutive_failures,
        "isolated": p.isolated,
    }
