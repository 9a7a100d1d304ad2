"""A running dfdaemon: the host's peer engine and, on ``port``, the registry mirror / HTTP(S)
proxy, in one process and one event loop (the proxy streams from the engine's store).

The proxy port opens only once the engine is ready, so ``GET /v2/`` answering means the daemon
is ready. Shutdown (a signal, or the engine's ``POST /shutdown``) stops the proxy first, then the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from damselfly.core.errors import ConfigError, DamselflyError
from damselfly.dfdaemon.certs import LeafCerts
from damselfly.dfdaemon.front import Front
from damselfly.dfdaemon.handler import DownloadDefaults, ProxyHandler
from damselfly.dfdaemon.rules import Rules
from damselfly.peer.config import EngineConfig
from damselfly.peer.engine import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_OK,
    Engine,
    Ready,
    acquire_lock,
    prepare_home,
    setup_logging,
)
from damselfly.peer.metrics import ENGINE as METRICS
from damselfly.peer.metrics import MeteredOwner

log = logging.getLogger("damselfly.dfdaemon")

SHUTDOWN_GRACE = 2.0


@dataclass
class ProxySettings:
    port: int
    rules: Rules
    defaults: DownloadDefaults
    listen: str = "0.0.0.0"
    scratch: Path | None = None  # where streamed downloads are placed (default $HOME/dfdaemon)


class Proxy:
    """The proxy port, bound to a running ``Engine``."""

    def __init__(self, settings: ProxySettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.owner = MeteredOwner("dfdaemon")  # records each swarm download's result
        self.port = 0
        self.handler: ProxyHandler | None = None
        self.front: Front | None = None
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._web: list[web.Server] = []
        rules = settings.rules
        self.leaves = LeafCerts(rules.hijack.cert, rules.hijack.key) if rules.hijack.hosts else None

    async def start(self) -> None:
        scratch = self.settings.scratch or (self.engine.cfg.home / "dfdaemon")
        await asyncio.to_thread(_prepare_scratch, scratch)
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=32),
        )
        engine = self.engine
        handler = ProxyHandler(
            self.settings.rules,
            self.settings.defaults,
            lambda: None if engine.stopping.is_set() else engine.services,
            self._session,
            self.owner,
            scratch,
            on_download=(engine.download_started, engine.download_ended),
        )
        self.handler = handler
        http = web.Server(_with_metrics(handler), access_log=None)
        https = web.Server(handler, access_log=None)
        self._web = [http, https]
        front = Front(http, https, self._hijack, self.owner)
        handler.https_host = front.https_host
        self.front = front
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                front.protocol, self.settings.listen, self.settings.port, reuse_address=True
            )
        except OSError as e:
            raise ConfigError(
                f"cannot listen on {self.settings.listen}:{self.settings.port}: {e.strerror}",
                "choose another port (--port or 'port' in the config)",
            ) from e
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _hijack(self, host: str, port: int) -> ssl.SSLContext | None:
        if self.leaves is None or self.settings.rules.hijacked(host) is None:
            return None
        return self.leaves.context_for(host)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for srv in self._web:
            with contextlib.suppress(Exception):
                await srv.shutdown(SHUTDOWN_GRACE)
        await self.owner.close()
        if self._session is not None:
            await self._session.close()


def _with_metrics(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """``GET /metrics`` (origin-form, on the plain port) is the engine's Prometheus text;
    everything else (``/v2/…``, absolute proxy URLs) goes to the proxy handler."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path == "/metrics":
            if request.method != "GET":
                return web.Response(status=405, text="use GET /metrics\n")
            body, ctype = METRICS.render()
            return web.Response(body=body, headers={"Content-Type": ctype})
        return await handler(request)

    return handle


def _prepare_scratch(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for p in d.glob("blob-*"):  # scratch outputs of an earlier run
        with contextlib.suppress(OSError):
            p.unlink()


async def serve(cfg: EngineConfig, settings: ProxySettings, ready: Ready) -> None:
    engine = Engine(cfg)
    engine_ready = asyncio.Event()
    serving = asyncio.create_task(engine.serve(lambda _e: engine_ready.set()), name="engine")
    waiter = asyncio.create_task(engine_ready.wait(), name="engine-ready")
    await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        waiter.cancel()
        await serving  # raises what stopped it
        return
    METRICS.bind(engine)
    proxy = Proxy(settings, engine)
    try:
        await proxy.start()
    except BaseException:
        engine.request_stop("the proxy could not start")
        await serving
        raise
    line = f"ready pid={os.getpid()} port={proxy.port} peer_port={engine.port} home={cfg.home}"
    log.info("dfdaemon %s", line)
    ready.send(line)
    sys.stdout.write(f"dfdaemon {line}\n")
    sys.stdout.flush()
    try:
        await engine.stopping.wait()
    finally:
        await proxy.stop()
        engine.request_stop("dfdaemon stopping")
        await serving


def run_daemon(cfg: EngineConfig, settings: ProxySettings) -> int:
    """Run the daemon in this process until it stops; the process exit code."""
    ready = Ready(cfg)
    try:
        prepare_home(cfg)
    except OSError as e:
        print(f"dfdaemon: cannot use --home {cfg.home}: {e.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    lock = acquire_lock(cfg)
    if lock is None:
        print(f"dfdaemon: another engine already serves --home {cfg.home}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        setup_logging(cfg)
        asyncio.run(serve(cfg, settings, ready))
        return EXIT_OK
    except DamselflyError as e:
        log.error("dfdaemon failed: %s", e)
        print(f"dfdaemon: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        os.close(lock)
