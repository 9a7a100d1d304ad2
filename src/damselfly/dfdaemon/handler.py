"""dfdaemon's HTTP requests: registry mirror (``/v2/…``), HTTP proxy (absolute URLs) and the
decrypted requests of hijacked HTTPS connections. ``Rules`` decides; this module acts: a swarm
download streamed back (``stream.SwarmStream``), or the request forwarded as it is
(``forward.forward``).

The client's ``Authorization`` header goes with the swarm download as an origin header (to the
supernode's registration, and to the origin if the download falls back to it); it is never logged.
If the swarm fails before any byte was sent, the request goes straight to the origin (unless
``--notbs`` is in ``dfget_flags``), so the client still gets its blob — or the origin's own
answer, such as a 401 asking for a token.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web

from damselfly.core.ids import redact_url, sha256_in_url
from damselfly.dfdaemon.forward import error_response, forward
from damselfly.dfdaemon.probes import ProbeAnswers, is_probe
from damselfly.dfdaemon.rules import Route, Rules, is_mirror_path
from damselfly.dfdaemon.stream import SwarmFailed, SwarmStream, scratch_output
from damselfly.peer.download import Services
from damselfly.peer.fetch import ssl_for
from damselfly.peer.request import DownloadRequest
from damselfly.peer.tasks import TaskOwner

log = logging.getLogger("damselfly.dfdaemon.handler")

#: request headers that travel with a swarm download towards the origin
ORIGIN_HEADERS = ("Authorization",)


@dataclass(frozen=True)
class DownloadDefaults:
    """The download options dfdaemon takes from ``dfget_flags`` and ``ratelimit``."""

    nodes: tuple[str, ...] = ()
    filter: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    locallimit: int | None = None
    minrate: int | None = None
    timeout: float | None = None
    notbs: bool = False
    pattern: str = "p2p"
    identifier: str = ""
    callsystem: str = "dfdaemon"

    def request(
        self,
        url: str,
        output: str,
        headers: dict[str, str],
        cacerts: tuple[str, ...],
        insecure: bool,
    ) -> DownloadRequest:
        merged = dict(self.headers)
        merged.update(headers)
        return DownloadRequest(
            url=url,
            output=output,
            headers=merged,
            identifier=self.identifier,
            filter=list(self.filter),
            pattern=self.pattern,
            nodes=list(self.nodes),
            locallimit=self.locallimit,
            minrate=self.minrate,
            timeout=self.timeout,
            notbs=self.notbs,
            callsystem=self.callsystem,
            cacerts=list(cacerts),
            insecure=insecure,
        )


@dataclass
class Counters:
    swarm: int = 0
    swarm_fallbacks: int = 0
    direct: int = 0
    bad: int = 0


class ProxyHandler:
    """The request handler behind the proxy port (plain and hijacked connections alike)."""

    def __init__(
        self,
        rules: Rules,
        defaults: DownloadDefaults,
        services: Callable[[], Services | None],
        session: aiohttp.ClientSession,
        owner: TaskOwner,
        scratch: Path,
        https_host: Callable[[web.BaseRequest], tuple[str, int] | None] = lambda r: None,
        on_download: tuple[Callable[[], None], Callable[[], None]] = (lambda: None, lambda: None),
    ) -> None:
        self.rules = rules
        self.defaults = defaults
        self.services = services
        self.session = session
        self.owner = owner
        self.scratch = scratch
        self.https_host = https_host
        self.on_download = on_download
        self.counters = Counters()
        self.probes = ProbeAnswers(session)
        m = rules.mirror
        self._mirror_ssl = ssl_for(list(m.certs), m.insecure)
        self._host_ssl: dict[str, ssl.SSLContext | bool | None] = {}

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        target = self._target(request)
        if isinstance(target, str):
            self.counters.bad += 1
            return error_response(
                404,
                f"dfdaemon has no registry for ns={target[:200]!r} (registry_mirror.namespaces); "
                "the client should pull from that registry directly",
                "NAME_UNKNOWN",
            )
        if target is None:
            self.counters.bad += 1
            return error_response(
                404,
                f"dfdaemon serves registry-mirror requests (/v2/…) and proxy requests with an "
                f"absolute URL, not {request.path[:200]!r}",
                "NOT_FOUND",
            )
        url, tls, cacerts, insecure, direct = target
        route = self.rules.route(request.method, url, "Range" in request.headers)
        if direct:
            route = Route("direct", url)
        if route.swarm and self.services() is not None:
            return await self._swarm(request, route.url, url, tls, cacerts, insecure)
        self.counters.direct += 1
        if is_probe(request.method, request.path, request.body_exists) and is_mirror_path(
            request.path
        ):
            return await self.probes.answer(request, url, tls)
        return await forward(request, url, self.session, tls)

    def _target(
        self, request: web.BaseRequest
    ) -> tuple[str, ssl.SSLContext | bool | None, tuple[str, ...], bool, bool] | str | None:
        """(origin URL, TLS for it, CA files, insecure, never through the swarm); None for a
        request dfdaemon does not serve; a string: the ``ns`` no configured remote serves."""
        raw = request.raw_path
        target = self.https_host(request)
        if target is not None:  # a hijacked HTTPS connection: origin-form requests
            host, port = target
            entry = self.rules.hijacked(host)
            certs, insecure = (entry.certs, entry.insecure) if entry else ((), False)
            netloc = f"[{host}]" if ":" in host else host
            netloc += "" if port == 443 else f":{port}"
            return f"https://{netloc}{raw}", self._ssl(certs, insecure), certs, insecure, False
        if raw.startswith(("http://", "https://")):
            return raw, None, (), False, False
        if is_mirror_path(request.path):
            got = self.rules.mirror_target(raw)
            if isinstance(got, str):
                return got
            m, url = got
            tls = self._mirror_ssl if m is self.rules.mirror else self._ssl(m.certs, m.insecure)
            return url, tls, m.certs, m.insecure, m.direct
        return None

    def _ssl(self, certs: tuple[str, ...], insecure: bool) -> ssl.SSLContext | bool | None:
        key = f"{insecure}:{':'.join(certs)}"
        if key not in self._host_ssl:
            self._host_ssl[key] = ssl_for(list(certs), insecure)
        return self._host_ssl[key]

    async def _swarm(
        self,
        request: web.BaseRequest,
        swarm_url: str,
        url: str,
        tls: ssl.SSLContext | bool | None,
        cacerts: tuple[str, ...],
        insecure: bool,
    ) -> web.StreamResponse:
        svc = self.services()
        assert svc is not None
        headers = {h: request.headers[h] for h in ORIGIN_HEADERS if h in request.headers}
        req = self.defaults.request(
            swarm_url, scratch_output(self.scratch), headers, cacerts, insecure
        )
        out_headers = {"Content-Type": "application/octet-stream"}
        digest = sha256_in_url(swarm_url)
        if digest:
            out_headers["Docker-Content-Digest"] = f"sha256:{digest}"
        self.counters.swarm += 1
        stream = SwarmStream(svc, req, self.owner, *self.on_download)
        try:
            return await stream.respond(request, out_headers)
        except SwarmFailed as e:
            if self.defaults.notbs:
                return error_response(
                    502,
                    f"the swarm could not deliver {redact_url(url)}: {e.result.message} "
                    "(dfget_flags has --notbs, so dfdaemon does not fetch it directly)",
                )
            log.info(
                "swarm download of %s failed (%s): fetching it directly",
                redact_url(url),
                e.result.message,
            )
            self.counters.swarm_fallbacks += 1
            return await forward(request, url, self.session, tls)


def with_nodes(defaults: DownloadDefaults, nodes: list[str]) -> DownloadDefaults:
    return replace(defaults, nodes=tuple(nodes))
