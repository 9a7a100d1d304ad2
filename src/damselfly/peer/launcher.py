"""Finding the host's engine, or starting one (dfget's side).

Connect to ``$HOME/engine.sock``; when no engine answers, start one as a fresh process
(``python -m damselfly.peer.engine --home …``, new session: nothing of dfget's argv is kept) and
wait for the single line it writes on a pipe ("ready", "locked" or "error …") — never by
sleeping. Two dfget runs that start at once serialise on ``$HOME/engine.start.lock`` so only one
spawns; the engine's own lifetime lock on ``engine.lock`` guarantees one engine per home anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import sys
import time

from damselfly.peer.client import EngineClient, EngineUnavailable
from damselfly.peer.config import EngineConfig

log = logging.getLogger("damselfly.dfget")

READY_TIMEOUT = 30.0
SPAWN_ATTEMPTS = 3


def ensure_engine(cfg: EngineConfig, timeout: float = READY_TIMEOUT) -> EngineClient:
    """A client of the running engine of ``cfg.home``, started first when none answers."""
    client = EngineClient(cfg.socket_path)
    if client.alive():
        return client
    try:
        cfg.home.mkdir(parents=True, exist_ok=True)
        (cfg.home / "logs").mkdir(exist_ok=True)
        fd = os.open(cfg.home / "engine.start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise EngineUnavailable(
            f"cannot use --home {cfg.home}: {e.strerror}", "choose a writable --home"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by another dfget only while it starts an engine
        for _attempt in range(SPAWN_ATTEMPTS):
            if client.alive():
                return client
            line = spawn_engine(cfg, timeout)
            log.debug("engine start: %s", line)
            if line.startswith("ready"):
                return client
            if line.startswith("locked"):
                continue  # another engine holds the home (maybe exiting): look again
            msg = line[len("error") :].strip() if line.startswith("error") else line
            raise EngineUnavailable(
                f"could not start the engine: {msg or 'it exited at once'}",
                f"see {cfg.home / 'logs'}",
            )
        if client.alive():
            return client
        raise EngineUnavailable(
            f"another engine holds {cfg.home / 'engine.lock'} but does not answer",
            "stop it, or use another --home",
        )
    finally:
        os.close(fd)


def spawn_engine(cfg: EngineConfig, timeout: float) -> str:
    """Start an engine process and return the one line it reports ("" if it said nothing)."""
    r, w = os.pipe()
    err = open(cfg.home / "logs" / "engine.err", "ab")
    try:
        argv = [sys.executable, "-m", "damselfly.peer.engine", *cfg.argv(), "--ready-fd", str(w)]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            pass_fds=(w,),
            start_new_session=True,
            cwd=str(cfg.home),
            env=_child_env(),
        )
    finally:
        os.close(w)
        err.close()
    try:
        line = _read_line(r, timeout)
    finally:
        os.close(r)
    if not line.startswith("ready"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    else:
        proc.returncode = 0  # it lives on by design; don't warn that it still runs
    return line


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf and len(buf) < 8192:
        left = deadline - time.monotonic()
        if left <= 0:
            return "error the engine did not get ready in time"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _child_env() -> dict[str, str]:
    """dfget's environment, with PYTHONPATH made absolute (the engine runs in its home)."""
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    if pp:
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in pp.split(os.pathsep) if p)
    return env
