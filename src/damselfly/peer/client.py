"""A small blocking client for the engine's control channel (HTTP over ``$HOME/engine.sock``).

Blocking on purpose: dfget is a short command-line program; ``http.client`` starts much faster
than an asyncio stack, and Ctrl-C stays a plain KeyboardInterrupt. The download answer is a
stream of JSON lines, read one at a time.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from damselfly.core.errors import DamselflyError

MAX_LINE = 64 * 1024
#: the engine writes a keepalive line every second; this much silence means it is gone
READ_TIMEOUT = 30.0


class EngineUnavailable(DamselflyError):
    code = "no_engine"


class EngineStopping(EngineUnavailable):
    """The engine refused a download because it is shutting down (e.g. idle exit): start a new
    one and ask again."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except OSError:
            s.close()
            raise
        self.sock = s


class EngineClient:
    def __init__(self, socket_path: str | Path) -> None:
        self.path = str(socket_path)

    def _request(
        self, method: str, route: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, route, body=data, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise EngineUnavailable(f"no engine answers on {self.path}: {e}") from e

    def status(self, timeout: float = 3.0) -> dict[str, Any]:
        conn, resp = self._request("GET", "/status", None, timeout)
        try:
            if resp.status != 200:
                raise EngineUnavailable(f"the engine answered status {resp.status} to /status")
            obj = json.loads(resp.read(MAX_LINE))
        except (OSError, ValueError) as e:
            raise EngineUnavailable(f"the engine on {self.path} sent a bad status: {e}") from e
        finally:
            conn.close()
        if not isinstance(obj, dict):
            raise EngineUnavailable("the engine sent a bad status")
        return obj

    def alive(self) -> bool:
        """An engine answers and takes downloads (one shutting down does not)."""
        try:
            return not self.status(timeout=2.0).get("stopping", False)
        except EngineUnavailable:
            return False

    def shutdown(self, timeout: float = 5.0) -> None:
        conn, resp = self._request("POST", "/shutdown", {}, timeout)
        try:
            resp.read(MAX_LINE)
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()

    def download(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Start a download; yield its events (progress, log, …, then one ``result``).

        Headers in ``request`` travel only over this socket.
        """
        conn, resp = self._request("POST", "/download", request, READ_TIMEOUT)
        try:
            if resp.status == 503:
                raise EngineStopping("the engine is shutting down")
            if resp.status != 200:
                raw = resp.read(MAX_LINE)
                try:
                    msg = json.loads(raw).get("message", "")
                except (ValueError, AttributeError):
                    msg = raw.decode("utf-8", "replace")[:200]
                raise DamselflyError(f"the engine refused the download: {msg}")
            while True:
                try:
                    line = resp.readline(MAX_LINE)
                except (OSError, http.client.HTTPException) as e:
                    raise EngineUnavailable(f"lost the engine during the download: {e}") from e
                if not line:
                    raise EngineUnavailable(
                        "the engine closed the connection before the end of the download"
                    )
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                yield ev
                if ev.get("event") == "result":
                    return
        finally:
            conn.close()
