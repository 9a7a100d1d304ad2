"""A hostile peer for tests: it registers for a task, claims every piece it is assigned as
verified (without fetching anything), and serves random bytes of the right length for any piece
— or, with ``--stall``, announces a piece, sends its first 64 KiB and then nothing, forever.

Run: ``python -m tests.support.evil_peer --supernode 127.0.0.1:P --url URL --ready-file F
[--stall]``.
The ready file is written once the supernode has answered "done" for it, i.e. once it is a holder
of every piece; it then keeps serving garbage (and heartbeating) until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import aiohttp
from aiohttp import web


async def serve_garbage(request: web.Request) -> web.Response:
    num = int(request.match_info["num"])
    size = request.app["piece_size"]
    length = request.app["length"]
    n = max(0, min(size, length - num * size))
    request.app["served"] += 1
    return web.Response(body=os.urandom(n), content_type="application/octet-stream")


async def serve_stalling(request: web.Request) -> web.StreamResponse:
    num = int(request.match_info["num"])
    size = request.app["piece_size"]
    n = max(0, min(size, request.app["length"] - num * size))
    request.app["served"] += 1
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = n
    await resp.prepare(request)
    await resp.write(os.urandom(min(n, 64 * 1024)))
    await asyncio.Event().wait()  # never sends the rest: the client must time out
    return resp


async def main_async(args: argparse.Namespace) -> None:
    app = web.Application()
    app.router.add_get("/pieces/{task_id}/{num}", serve_stalling if args.stall else serve_garbage)
    app["served"] = 0
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    peer_id = f"evil-{port}"
    base = f"http://{args.supernode}"
    async with aiohttp.ClientSession() as s:
        reg = {
            "url": args.url,
            "peer": {"id": peer_id, "ip": "127.0.0.1", "port": port, "hostname": "evil"},
        }
        async with s.post(f"{base}/api/v1/register", json=reg) as r:
            r.raise_for_status()
            info = await r.json()
        app["piece_size"] = info["piece_size"]
        app["length"] = info["length"]
        tid = info["task_id"]
        results: list[dict[str, object]] = []
        for _ in range(10_000):  # bounded
            body = {"peer_id": peer_id, "results": results, "want": 16, "wait_ms": 1000}
            async with s.post(f"{base}/api/v1/tasks/{tid}/schedule", json=body) as r:
                r.raise_for_status()
                resp = await r.json()
            results = [
                {"piece": a["num"], "ok": True, "source": a["source"]["id"], "bytes": a["size"]}
                for a in resp["pieces"]
            ]
            if resp["status"] == "done":
                break
        Path(args.ready_file).write_text(json.dumps({"peer_id": peer_id, "port": port}))
        while True:  # stay alive as a "holder" until the test kills us
            async with s.post(f"{base}/api/v1/peers/{peer_id}/heartbeat", json={}) as r:
                pass
            await asyncio.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--supernode", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--stall", action="store_true", help="stall mid-piece instead of lying")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
