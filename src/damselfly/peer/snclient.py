"""Talking to supernodes (docs/protocol.md): register, schedule, heartbeat, leave.

Foreign failures are translated here: no answer (refused, reset, timeout, 5xx) is
``SupernodeDown`` (→ try the next supernode); an answered error is ``Rejected`` with the
supernode's code and message (→ report it, don't fail over); a schedule for a task or peer the
supernode no longer knows is ``TaskLost`` (→ register again). Answers are read bounded.

Cluster security (``core/cluster.py``): every request carries the cluster token when one is set,
and goes over HTTPS verified against the cluster CA when one is given. A supernode refusing the
token (401) or a certificate that does not verify is ``ClusterAuthError``: a configuration
problem to report, not a supernode to fail over from.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import aiohttp

from damselfly.core.cluster import TOKEN_HEADER
from damselfly.core.errors import BadRequest, DamselflyError
from damselfly.core.nodes import Node
from damselfly.core.protocol import (
    MAX_BODY,
    RegisterRequest,
    RegisterResponse,
    ScheduleRequest,
    ScheduleResponse,
    loads_bounded,
)

log = logging.getLogger("damselfly.peer.snclient")

CONNECT_TIMEOUT = 3.0
#: the first registration of a task waits for the origin's answer: give it time
REGISTER_TIMEOUT = 60.0
#: a schedule answer may be held for wait_ms; this much more means the supernode is gone
SCHEDULE_SLACK = 10.0
SMALL_TIMEOUT = 5.0


class SupernodeDown(DamselflyError):
    code = "no_supernode"


class Rejected(DamselflyError):
    """The supernode answered an error. ``code`` is its error code (errors.*.code)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TaskLost(DamselflyError):
    code = "task_lost"


class ClusterAuthError(DamselflyError):
    """The supernode refused our cluster token, or its TLS certificate did not verify."""

    code = "cluster_auth"


def clean_message(text: str, limit: int = 300) -> str:
    """A remote message made safe to show: one line, printable, bounded."""
    s = "".join(c if c.isprintable() else " " for c in str(text))
    return s[:limit].strip()


def describe(e: BaseException) -> str:
    """A short human text for a network failure."""
    if isinstance(e, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        why = getattr(e.certificate_error, "verify_message", "") or "not trusted"
        return f"its TLS certificate did not verify: {why}"
    if isinstance(e, aiohttp.ClientSSLError):
        return "the TLS handshake failed (does it serve HTTPS? check --tls-ca and --tls-cert)"
    if isinstance(e, aiohttp.ClientConnectorError):
        return (e.os_error.strerror or "cannot connect").lower()
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "connection closed"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return e.__class__.__name__


class SupernodeClient:
    def __init__(
        self, session: aiohttp.ClientSession, token: str = "", tls: ssl.SSLContext | None = None
    ) -> None:
        self.session = session
        self.tls = tls
        self.headers = {TOKEN_HEADER: token} if token else {}

    async def register(self, node: Node, req: RegisterRequest) -> RegisterResponse:
        obj = await self._post(node, "/api/v1/register", req.to_json(), REGISTER_TIMEOUT)
        try:
            return RegisterResponse.from_json(obj)
        except BadRequest as e:
            raise SupernodeDown(f"supernode {node.addr} sent a malformed answer: {e}") from e

    async def schedule(self, node: Node, task_id: str, req: ScheduleRequest) -> ScheduleResponse:
        path = f"/api/v1/tasks/{task_id}/schedule"
        timeout = req.wait_ms / 1000 + SCHEDULE_SLACK
        try:
            obj = await self._post(node, path, req.to_json(), timeout)
        except Rejected as e:
            if 400 <= e.status < 500:  # it restarted or dropped us: registering again fixes it
                raise TaskLost(f"supernode {node.addr} no longer knows this download: {e}") from e
            raise
        try:
            return ScheduleResponse.from_json(obj)
        except BadRequest as e:
            raise SupernodeDown(f"supernode {node.addr} sent a malformed answer: {e}") from e

    async def heartbeat(self, node: Node, peer_id: str) -> bool:
        try:
            await self._post(
                node, f"/api/v1/peers/{peer_id}/heartbeat", {"peer_id": peer_id}, SMALL_TIMEOUT
            )
            return True
        except (SupernodeDown, Rejected, ClusterAuthError):
            return False

    async def leave_task(self, node: Node, task_id: str, peer_id: str) -> None:
        try:
            await self._post(
                node, f"/api/v1/tasks/{task_id}/leave", {"peer_id": peer_id}, SMALL_TIMEOUT
            )
        except (SupernodeDown, Rejected, ClusterAuthError) as e:
            log.debug("leave task %s at %s: %s", task_id[:12], node.addr, e)

    async def report_back_source(
        self, node: Node, task_id: str, peer_id: str, reason: str, limit_s: float = SMALL_TIMEOUT
    ) -> bool:
        """Tell ``node`` this peer takes the task from the origin (for its metrics)."""
        try:
            await self._post(
                node,
                f"/api/v1/tasks/{task_id}/backsource",
                {"peer_id": peer_id, "reason": reason},
                limit_s,
            )
            return True
        except (SupernodeDown, Rejected, ClusterAuthError) as e:
            log.debug("back-source report to %s: %s", node.addr, e)
            return False

    async def leave_peer(self, node: Node, peer_id: str) -> None:
        try:
            await self._post(node, f"/api/v1/peers/{peer_id}/leave", {"peer_id": peer_id}, 2.0)
        except (SupernodeDown, Rejected, ClusterAuthError) as e:
            log.debug("leave at %s: %s", node.addr, e)

    async def _post(
        self, node: Node, path: str, body: dict[str, Any], limit_s: float
    ) -> dict[str, Any]:
        scheme = "https" if self.tls is not None else "http"
        url = f"{scheme}://{node.addr}{path}"
        to = aiohttp.ClientTimeout(total=limit_s, sock_connect=CONNECT_TIMEOUT)
        try:
            async with self.session.post(
                url,
                json=body,
                timeout=to,
                allow_redirects=False,
                headers=self.headers,
                ssl=self.tls if self.tls is not None else True,
            ) as r:
                data = await r.content.read(MAX_BODY + 1)
                status = r.status
        except aiohttp.ClientConnectorCertificateError as e:
            raise ClusterAuthError(
                f"supernode {node.addr}: {describe(e)}",
                "give the cluster's CA with --tls-ca (and check the supernode's --tls-cert)",
            ) from e
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise SupernodeDown(
                f"supernode {node.addr} did not answer ({describe(e)})",
                "check that it runs and that --node is right",
            ) from e
        try:
            obj = loads_bounded(data) if data else {}
        except BadRequest as e:
            raise SupernodeDown(
                f"supernode {node.addr} answered status {status} without a JSON body"
            ) from e
        if status >= 500 and not isinstance(obj.get("error"), str):
            raise SupernodeDown(f"supernode {node.addr} failed with status {status}")
        if status == 401 and obj.get("error") == "unauthorized":
            raise ClusterAuthError(
                f"supernode {node.addr} refused this host: "
                f"{clean_message(obj.get('message', '')) or 'unauthorized'}"
            )
        if status >= 300:
            raise Rejected(
                status,
                clean_message(obj.get("error", ""), 64) or f"http_{status}",
                clean_message(obj.get("message", "")) or f"status {status}",
            )
        return obj
