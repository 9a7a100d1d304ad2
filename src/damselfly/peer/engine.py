"""The host peer engine: one long-lived process per ``--home``.

It owns the local store, the upload server (the piece server on ``--port``), the control channel
on ``$HOME/engine.sock`` (mode 0600) through which dfget hands it downloads, heartbeats to the
supernodes it registered with, expiry of idle task data, and its own exit after ``--alivetime``
idle. An exclusive flock on ``$HOME/engine.lock`` held for its whole life makes it the only
engine of its home.

``python -m damselfly.peer.engine --home DIR [--port N] [--ip IP] [--alivetime 5m]
[--expiretime 3m] [--totallimit RATE] [--verbose] [--foreground]``
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from damselfly import __version__
from damselfly.core.clock import Clock, MonotonicClock
from damselfly.core.errors import ConfigError, DamselflyError
from damselfly.core.grants import GrantVerifier
from damselfly.core.logs import formatter
from damselfly.core.nodes import Node
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.peer.client import EngineClient
from damselfly.peer.config import EngineConfig, config_from_args, engine_arg_parser
from damselfly.peer.control import ControlApi
from damselfly.peer.download import Services
from damselfly.peer.piececlient import PieceClient
from damselfly.peer.snclient import SupernodeClient
from damselfly.peer.store import LocalStore, TaskData
from damselfly.peer.tasks import TaskOwner
from damselfly.store.pieceserver import GrantGuard, PieceServer

log = logging.getLogger("damselfly.peer.engine")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_LOCKED = 3  # another engine already serves this home
LOCK_WAIT_S = 10.0
MAX_UNIX_PATH = 107


def make_peer_id(hostname: str, pid: int) -> str:
    """Unique per engine process; matches core.ids.PEER_ID_RE."""
    host = re.sub(r"[^A-Za-z0-9.\-]", "-", hostname)[:60] or "host"
    return f"{host}-{pid}-{secrets.token_hex(4)}"


class Engine:
    def __init__(self, cfg: EngineConfig, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or MonotonicClock()
        self.peer_id = make_peer_id(socket.gethostname(), os.getpid())
        self.store = LocalStore(cfg.data_dir, self.clock)
        self.total_limiter = AsyncLimiter(cfg.totallimit, self.clock)
        self.owner = TaskOwner("engine")
        self.stopping = asyncio.Event()
        self.nodes: dict[str, Node] = {}  # supernodes registered with, by address
        self.task_nodes: dict[str, dict[str, Node]] = {}  # task → supernodes that know we hold it
        self.active_downloads = 0
        self.last_activity = self.clock.now()
        self.port = 0
        self.ip = cfg.ip
        # private tasks: pieces only for holders of a grant by a supernode we registered with
        self.grants = GrantVerifier()
        # cluster security (core/cluster.py): read once here, a ConfigError when unusable
        self.token = cfg.security.token()
        self.server_tls = cfg.security.server_ssl()
        self.client_tls = cfg.security.client_ssl()
        self.pieceserver = PieceServer(
            self.store,
            on_served=self._served,
            guard=GrantGuard(self.store.is_private, self.grants),
            token=self.token,
        )
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.services: Services | None = None

    # -- life ------------------------------------------------------------------------------

    async def serve(self, on_ready: Callable[[Engine], None] | None = None) -> None:
        """Run until shut down (POST /shutdown, a signal, or --alivetime idle)."""
        try:
            await self._start()
            if on_ready is not None:
                on_ready(self)
            log.info(
                "engine ready: home=%s peer_id=%s port=%d pid=%d",
                self.cfg.home,
                self.peer_id,
                self.port,
                os.getpid(),
            )
            await self.stopping.wait()
        finally:
            await self._stop()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        await self.store.load()
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=256, limit_per_host=64),
            trust_env=False,
        )
        await self._start_upload_server()
        self.services = Services(
            session=self._session,
            supernodes=SupernodeClient(self._session, self.token, self.client_tls),
            store=self.store,
            total_limiter=self.total_limiter,
            clock=self.clock,
            peer_id=self.peer_id,
            peer_port=self.port,
            ip=self.cfg.ip,
            stall_timeout=self.cfg.stall_timeout,
            on_registered=self._registered,
            grants=self.grants,
            pieces=PieceClient(token=self.token, tls=self.client_tls),
        )
        await self._start_control()
        self.owner.spawn(self._heartbeat_loop(), "heartbeat")
        self.owner.spawn(self._expire_loop(), "expire")
        if self.cfg.alivetime > 0:
            self.owner.spawn(self._idle_loop(), "idle")

    async def _start_upload_server(self) -> None:
        app = web.Application(client_max_size=1024)
        app.add_routes(self.pieceserver.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        host = self.cfg.ip or "0.0.0.0"
        try:
            site = web.TCPSite(
                runner, host, self.cfg.port, reuse_address=True, ssl_context=self.server_tls
            )
            await site.start()
        except OSError as e:
            raise ConfigError(
                f"cannot listen for peers on {host}:{self.cfg.port}: {e.strerror}",
                "choose another --port (or --ip)",
            ) from e
        self.port = int(runner.addresses[0][1])

    async def _start_control(self) -> None:
        path = str(self.cfg.socket_path)
        if len(path.encode()) > MAX_UNIX_PATH:
            raise ConfigError(
                f"--home path too long for a unix socket: {path}", "use a shorter --home"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead engine's socket: we hold the lock, so it is not in use
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        assert self.services is not None
        api = ControlApi(self)
        runner = web.AppRunner(api.app(), access_log=None)
        await runner.setup()
        self._runners.insert(0, runner)  # stopped first
        await web.SockSite(runner, sock).start()

    def request_stop(self, why: str = "") -> None:
        if not self.stopping.is_set():
            log.info("engine stopping: %s", why or "asked to")
            self.stopping.set()

    async def _stop(self) -> None:
        await self.owner.close()  # downloads (cancelled), loops
        for runner in self._runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cfg.socket_path)
        if self._session is not None and self.services is not None:
            sn = self.services.supernodes
            await asyncio.gather(
                *(sn.leave_peer(n, self.peer_id) for n in self.nodes.values()),
                return_exceptions=True,
            )
        await self.store.close()
        if self.services is not None:
            await self.services.pieces.close()
        if self._session is not None:
            await self._session.close()
        log.info("engine stopped")

    # -- activity --------------------------------------------------------------------------

    def _served(self, task_id: str, num: int, size: int) -> None:
        self.last_activity = self.clock.now()
        self.store.touch(task_id)

    def _registered(self, node: Node, td: TaskData) -> None:
        self.nodes[node.addr] = node
        self.task_nodes.setdefault(td.task_id, {})[node.addr] = node

    def download_started(self) -> None:
        self.active_downloads += 1
        self.last_activity = self.clock.now()

    def download_ended(self) -> None:
        self.active_downloads -= 1
        self.last_activity = self.clock.now()

    def idle_for(self) -> float:
        if self.active_downloads or self.pieceserver.active:
            self.last_activity = self.clock.now()
            return 0.0
        return self.clock.now() - self.last_activity

    def status(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "peer_id": self.peer_id,
            "ip": self.ip or (self.services.seen_ip if self.services else ""),
            "port": self.port,
            "home": str(self.cfg.home),
            "version": __version__,
            "tasks": len(self.store.tasks),
            "active": self.active_downloads,
            "uploading": self.pieceserver.active,
            "stopping": self.stopping.is_set(),
        }

    # -- loops -----------------------------------------------------------------------------

    async def _idle_loop(self) -> None:
        tick = min(5.0, max(0.1, self.cfg.alivetime / 10))
        while not self.stopping.is_set():
            await asyncio.sleep(tick)
            if self.idle_for() >= self.cfg.alivetime:
                self.request_stop(f"idle for {self.cfg.alivetime:g}s (--alivetime)")

    async def _heartbeat_loop(self) -> None:
        assert self.services is not None
        sn = self.services.supernodes
        while True:
            await asyncio.sleep(self.cfg.heartbeat_interval)
            for node in list(self.nodes.values()):
                if not await sn.heartbeat(node, self.peer_id):
                    log.debug("heartbeat to %s got no answer", node.addr)

    async def _expire_loop(self) -> None:
        assert self.services is not None
        sn = self.services.supernodes
        tick = min(30.0, max(0.2, self.cfg.expiretime / 4))
        while True:
            await asyncio.sleep(tick)
            for td in self.store.expired(self.clock.now(), self.cfg.expiretime):
                if self.services.locks.get(td.task_id) is not None:
                    continue  # a download of it waits for its turn
                log.info(
                    "task %s idle for %gs: deleting its data", td.task_id[:12], self.cfg.expiretime
                )
                await self.store.remove(td.task_id)
                for node in self.task_nodes.pop(td.task_id, {}).values():
                    await sn.leave_task(node, td.task_id, self.peer_id)


# -- process ---------------------------------------------------------------------------------


def prepare_home(cfg: EngineConfig) -> None:
    for d in (cfg.home, cfg.data_dir, cfg.logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(cfg.home, 0o700)


def acquire_lock(cfg: EngineConfig, wait: float = LOCK_WAIT_S) -> int | None:
    """The home's exclusive lock (fd), or None when a live engine already holds it.

    An engine that holds the lock but does not answer is probably exiting: wait for it a while.
    """
    fd = os.open(cfg.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    client = EngineClient(cfg.socket_path)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if client.alive() or time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.1)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def setup_logging(cfg: EngineConfig) -> None:
    root = logging.getLogger("damselfly")
    root.setLevel(logging.DEBUG if cfg.verbose else logging.INFO)
    root.addHandler(cfg.log.file_handler(cfg.logs_dir / "engine.log"))
    if cfg.foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(formatter(cfg.log.format))
        root.addHandler(sh)


class Ready:
    """The launcher's pipe: exactly one line ("ready …", "locked" or "error …"), then closed."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.fd = cfg.ready_fd

    def send(self, line: str) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.write(fd, (line.replace("\n", " ")[:4000] + "\n").encode())
        except OSError:
            pass  # the launcher gave up waiting
        finally:
            os.close(fd)

    def __call__(self, engine: Engine) -> None:
        line = f"ready pid={os.getpid()} port={engine.port} home={self.cfg.home}"
        self.send(line)
        if self.cfg.foreground:
            sys.stdout.write(f"engine {line}\n")
            sys.stdout.flush()


def run_engine(cfg: EngineConfig) -> int:
    """Run an engine for ``cfg`` in this process until it stops; the process exit code."""
    ready = Ready(cfg)
    try:
        prepare_home(cfg)
    except OSError as e:
        msg = f"cannot use --home {cfg.home}: {e.strerror}"
        ready.send(f"error {msg}")
        print(f"engine: {msg}", file=sys.stderr)
        return EXIT_CONFIG
    lock = acquire_lock(cfg)
    if lock is None:
        ready.send("locked")
        print(f"engine: another engine already serves --home {cfg.home}", file=sys.stderr)
        return EXIT_LOCKED
    try:
        setup_logging(cfg)
        engine = Engine(cfg)
        asyncio.run(engine.serve(ready))
        return EXIT_OK
    except DamselflyError as e:
        log.error("engine failed: %s", e)
        ready.send(f"error {e}")
        print(f"engine: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        ready.send("error the engine stopped before it was ready (see --home/logs/engine.log)")
        os.close(lock)


def main(argv: list[str] | None = None) -> int:
    ap = engine_arg_parser()
    ns = ap.parse_args(argv)
    try:
        cfg = config_from_args(ns)
    except ConfigError as e:
        ap.error(str(e))
    return run_engine(cfg)


if __name__ == "__main__":
    sys.exit(main())
