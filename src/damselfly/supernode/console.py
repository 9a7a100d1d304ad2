"""The supernode's web console: ``GET /console`` (a page with no external assets), its static
files under ``/console/``, and ``GET /api/v1/console``, the JSON summary the page polls every
second: tasks with progress, peers with their share of the upload, bytes saved at the origin,
isolated peers. Read-only; URLs are shown redacted (query values hidden), never a header.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from damselfly.core.protocol import error_body

if TYPE_CHECKING:
    from damselfly.supernode.app import Supernode

MAX_TASKS = 200  # tasks listed in full (all of them count in the totals)
MAX_PEERS = 500  # peers listed, the biggest uploaders first
STATIC = {
    "index.html": "text/html",
    "console.js": "application/javascript",
    "console.css": "text/css",
}


def _asset(name: str) -> bytes:
    return resources.files("damselfly.supernode").joinpath("console", name).read_bytes()


def summary(node: Supernode) -> dict[str, Any]:
    """What the console shows; its cost grows with tasks and peers, bounded by the caps."""
    tasks: list[dict[str, Any]] = []
    delivered = {"peer": 0, "supernode": 0, "origin": 0}
    views = node.scheduler.tasks_view()
    for view in views:
        for k, v in (view.get("bytes_by_source") or {}).items():
            delivered[k] = delivered.get(k, 0) + int(v)
        if len(tasks) >= MAX_TASKS:
            continue
        tid = view["task_id"]
        full = node.scheduler.task_view(tid) or {}
        peers = full.get("peers") or []
        count = max(int(view.get("piece_count") or 0), 1)
        ct = node.cdn.get(tid)
        tasks.append(
            {
                "task_id": tid,
                "url": ct.url if ct is not None else "",
                "length": view["length"],
                "state": view["state"],
                "cdn_progress": (ct.pieces_ready / count) if ct is not None else 1.0,
                "cdn_complete": bool(ct is not None and ct.complete),
                "cache_hit": bool(ct is not None and ct.cache_hit),
                "peer_count": view["peer_count"],
                "peers_done": view["peers_done"],
                "progress": (
                    sum(int(p.get("pieces", 0)) for p in peers) / (count * len(peers))
                    if peers
                    else 0.0
                ),
                "bytes_by_source": view.get("bytes_by_source") or {},
            }
        )
    peer_views = node.scheduler.peers_view()
    uploaded = sum(int(p.get("bytes_served", 0)) for p in peer_views)
    peer_views.sort(key=lambda p: -int(p.get("bytes_served", 0)))
    peers = [
        {
            "id": p["id"],
            "ip": p["ip"],
            "hostname": p.get("hostname", ""),
            "tasks": len(p.get("tasks", [])),
            "uploads": p.get("uploads", 0),
            "bytes_served": p.get("bytes_served", 0),
            "share": (int(p.get("bytes_served", 0)) / uploaded) if uploaded else 0.0,
            "failures": p.get("failures", 0),
            "isolated": bool(p.get("isolated")),
        }
        for p in peer_views[:MAX_PEERS]
    ]
    total = sum(delivered.values())
    origin_bytes = node.cdn.stats.get("origin_bytes")
    return {
        "tasks": tasks,
        "tasks_total": len(views),
        "peers": peers,
        "peers_total": len(peer_views),
        "isolated_peers": sum(p["isolated"] for p in peer_views),
        "bytes_delivered": total,
        "bytes_by_source": delivered,
        "origin_bytes": origin_bytes,
        "origin_bytes_saved": max(total - origin_bytes - delivered.get("origin", 0), 0),
        "preheats": [j.to_json() for j in node.preheater.jobs()[-20:]],
    }


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_asset("index.html"), content_type="text/html", charset="utf-8")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    ctype = STATIC.get(name)
    if ctype is None:
        return web.json_response(error_body("not_found", "no such console file"), status=404)
    return web.Response(body=_asset(name), content_type=ctype, charset="utf-8")


def routes(node: Supernode) -> list[web.RouteDef]:
    async def data(request: web.Request) -> web.Response:
        return web.json_response(summary(node))

    return [
        web.get("/console", page),
        web.get("/console/", page),
        web.get("/console/{name}", asset),
        web.get("/api/v1/console", data),
    ]
