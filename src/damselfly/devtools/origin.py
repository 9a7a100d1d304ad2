"""A real origin HTTP server for tests and the demo: serves files from a directory and counts.

Run as a process: ``python -m damselfly.devtools.origin --dir D --port 0 --ready-file F`` (or import
``make_app`` for an in-process aiohttp server). It supports what real origins do and what tests
need to observe:

- GET and HEAD, ``Range: bytes=a-b`` / ``a-`` (206), ``If-Range``, ETag and Last-Modified,
  ``If-None-Match`` / ``If-Modified-Since`` (304);
- ``--require-header-file F`` (F holds one ``Name: value`` line, kept out of argv so that tests
  can check no process shows the secret): 401 without that header, 403 with a wrong value;
- ``/_stats``: JSON counters: requests, body bytes sent, per path, and the request headers seen
  (values hashed, so a test can check a header arrived without the origin keeping it in clear);
- ``/_control`` (POST JSON): ``{"cut_after": N}`` drops the next GET's connection after N body
  bytes (a mid-transfer failure), ``{"status": 503, "times": 2}`` fails the next requests,
  ``{"no_ranges": true}`` disables Range support, ``{"reset": true}`` zeroes the counters,
  ``{"rate": N}`` paces every body to N bytes/s per connection (0: unpaced; a slow origin, so
  that a test can act while a download runs), ``{"drop_active": true}`` cuts every body being
  sent right now (e.g. after the file was replaced, so the next request sees the new version),
  ``{"no_validators": true}`` sends no ETag and no Last-Modified (an origin that names no version).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Origin:
    def __init__(self, root: Path, require: tuple[str, str] | None = None) -> None:
        self.root = root.resolve()
        self.require = require
        self.cut_after: int | None = None
        self.fail: tuple[int, int] | None = None  # (status, times)
        self.no_ranges = False
        self.no_validators = False
        self.rate = 0  # bytes/s per body; 0 = unpaced
        self.drop_gen = 0  # bumped by "drop_active": bodies started before it are cut
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.gets = 0
        self.bytes_sent = 0
        self.per_path: dict[str, dict[str, int]] = {}
        self.header_hashes: list[dict[str, str]] = []
        self.statuses: list[int] = []

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "gets": self.gets,
            "bytes_sent": self.bytes_sent,
            "per_path": self.per_path,
            "header_hashes": self.header_hashes[-200:],
            "statuses": self.statuses[-200:],
        }

    def _file(self, rel: str) -> Path | None:
        p = (self.root / rel).resolve()
        if self.root not in p.parents or not p.is_file():
            return None
        return p

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        self.requests += 1
        self.header_hashes.append(
            {k.lower(): hashlib.sha256(v.encode()).hexdigest() for k, v in request.headers.items()}
        )
        pp = self.per_path.setdefault(rel, {"requests": 0, "bytes": 0})
        pp["requests"] += 1
        resp = await self._answer(request, rel, pp)
        self.statuses.append(resp.status)
        return resp

    async def _answer(
        self, request: web.Request, rel: str, pp: dict[str, int]
    ) -> web.StreamResponse:
        if self.fail is not None:
            status, times = self.fail
            self.fail = (status, times - 1) if times > 1 else None
            return web.Response(status=status, text="injected failure\n")
        if self.require is not None:
            got = request.headers.get(self.require[0])
            if got is None:
                return web.Response(status=401, text="authorization required\n")
            if got != self.require[1]:
                return web.Response(status=403, text="forbidden\n")
        path = self._file(rel)
        if path is None:
            return web.Response(status=404, text="not found\n")
        try:
            f = path.open("rb")
        except OSError:
            return web.Response(status=404, text="not found\n")
        # headers and body from one open file, like real origins: a request being answered
        # keeps the version it named, whatever is renamed over the path meanwhile
        with f:
            return await self._send(request, f, pp)

    async def _send(
        self, request: web.Request, f: BinaryIO, pp: dict[str, int]
    ) -> web.StreamResponse:
        gen = self.drop_gen  # a body of this request is cut by any "drop_active" from now on
        st = os.fstat(f.fileno())
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        last_mod = formatdate(st.st_mtime, usegmt=True)
        headers = {} if self.no_validators else {"ETag": etag, "Last-Modified": last_mod}
        if self.no_validators:
            etag = last_mod = "-"  # nothing a client could have been told matches
        if not self.no_ranges:
            headers["Accept-Ranges"] = "bytes"
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        if inm is not None and inm == etag:
            return web.Response(status=304, headers=headers)
        if inm is None and ims is not None and not self.no_validators:
            try:
                if int(parsedate_to_datetime(ims).timestamp()) >= int(st.st_mtime):
                    return web.Response(status=304, headers=headers)
            except (TypeError, ValueError):
                pass
        size = st.st_size
        start, end, status = 0, size - 1, 200
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and not self.no_ranges and (if_range is None or if_range in (etag, last_mod)):
            m = RANGE_RE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        self.gets += 1
        cut = self.cut_after
        self.cut_after = None
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(256 * 1024, left))
            if not chunk:
                break
            if self.drop_gen != gen:
                assert request.transport is not None
                request.transport.abort()  # cut by "drop_active"
                return resp
            if cut is not None and len(chunk) >= cut:
                chunk = chunk[:cut]
                await resp.write(chunk)
                self.bytes_sent += len(chunk)
                pp["bytes"] += len(chunk)
                assert request.transport is not None
                request.transport.abort()  # a mid-transfer failure
                return resp
            if cut is not None:
                cut -= len(chunk)
            await resp.write(chunk)
            self.bytes_sent += len(chunk)
            pp["bytes"] += len(chunk)
            left -= len(chunk)
            if self.rate > 0:
                await asyncio.sleep(len(chunk) / self.rate)
        await resp.write_eof()
        return resp

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def handle_control(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("reset"):
            self.reset()
        if "cut_after" in body:
            self.cut_after = body["cut_after"]
        if "status" in body:
            self.fail = (int(body["status"]), int(body.get("times", 1)))
        if "no_ranges" in body:
            self.no_ranges = bool(body["no_ranges"])
        if "no_validators" in body:
            self.no_validators = bool(body["no_validators"])
        if "rate" in body:
            self.rate = max(0, int(body["rate"]))
        if body.get("drop_active"):
            self.drop_gen += 1
        return web.json_response({"ok": True})


def make_app(origin: Origin) -> web.Application:
    app = web.Application()
    app.router.add_get("/_stats", origin.handle_stats)
    app.router.add_post("/_control", origin.handle_control)
    app.router.add_route("GET", "/{path:.+}", origin.handle)
    app.router.add_route("HEAD", "/{path:.+}", origin.handle)
    return app


async def _serve(args: argparse.Namespace) -> None:
    require = None
    if args.require_header_file:
        k, _, v = Path(args.require_header_file).read_text().strip().partition(":")
        require = (k.strip(), v.strip())
    origin = Origin(Path(args.dir), require)
    runner = web.AppRunner(make_app(origin), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        Path(tmp).write_text(json.dumps({"port": port, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)
    print(f"origin listening on {args.host}:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="test origin server")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", default="")
    ap.add_argument("--require-header-file", default="")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
