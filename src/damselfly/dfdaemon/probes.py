"""The runtime's ``GET /v2/`` probes, answered from a short cache (registry auth load).

Every pull starts with a ``GET /v2/`` (or ``HEAD``) probe: anonymous, it brings back the registry's
``401`` with its ``WWW-Authenticate`` challenge; with credentials, a ``200``. A host pulling
several images, or several at once, would send one per pull. dfdaemon answers a repeated probe
from this cache for ``PROBE_TTL`` seconds and sends identical concurrent ones upstream once
(single flight), so the registry sees at most one probe per host, remote and credential per
window.

Entries are keyed by an HMAC (a per-process random key) of the method, the URL and the request's
``Authorization`` value: the cache holds no credential, nor anything from which one could be
checked offline. It stores only the status, an allow-list of response headers (no
``Set-Cookie``) and a small body. ``ProbeCache`` is pure (an injected clock); ``ProbeAnswers``
is its driver.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from damselfly.core.clock import Clock, MonotonicClock
from damselfly.core.ids import redact_url
from damselfly.dfdaemon.forward import NO_AUTO_HEADERS, forward, forward_headers

log = logging.getLogger("damselfly.dfdaemon.probes")

#: how long a probe's answer is reused: short, so that a registry that changes its auth (or a
#: revoked token) shows within half a minute; long enough to cover one pull's burst of probes
PROBE_TTL = 30.0
MAX_ENTRIES = 1024  # hosts × credentials a daemon sees in one window; oldest dropped first
MAX_BODY = 64 * 1024  # a probe's body is "{}" or a short error: anything bigger is not cached
CACHEABLE = frozenset({200, 401})
KEEP_HEADERS = ("Content-Type", "Docker-Distribution-Api-Version", "WWW-Authenticate")


def is_probe(method: str, path: str, body: bool) -> bool:
    return method in ("GET", "HEAD") and path in ("/v2", "/v2/") and not body


@dataclass(frozen=True)
class Probe:
    """A probe's answer as stored: no request header, only the allowed response headers."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    at: float

    def response(self, method: str) -> web.Response:
        body = b"" if method == "HEAD" else self.body
        resp = web.Response(status=self.status, body=body)
        for k, v in self.headers:
            resp.headers.add(k, v)
        return resp


class ProbeCache:
    """Probe answers by keyed hash, for ``ttl`` seconds, at most ``cap`` of them."""

    def __init__(
        self,
        clock: Clock,
        ttl: float = PROBE_TTL,
        cap: int = MAX_ENTRIES,
        secret: bytes | None = None,
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.cap = cap
        self._secret = secret or secrets.token_bytes(32)
        self._entries: OrderedDict[str, Probe] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(self, method: str, url: str, authorization: str | None) -> str:
        msg = b"\0".join(x.encode() for x in (method, url, authorization or ""))
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def get(self, key: str) -> Probe | None:
        p = self._entries.get(key)
        if p is not None and self.clock.now() - p.at < self.ttl:
            self.hits += 1
            return p
        if p is not None:
            del self._entries[key]
        self.misses += 1
        return None

    def put(self, key: str, status: int, headers: CIMultiDict[str], body: bytes) -> Probe:
        kept = tuple((k, v) for k in KEEP_HEADERS for v in headers.getall(k, []))
        p = Probe(status, kept, body, self.clock.now())
        if status in CACHEABLE and len(body) <= MAX_BODY:
            self._entries[key] = p
            self._entries.move_to_end(key)
            while len(self._entries) > self.cap:
                self._entries.popitem(last=False)
        return p

    def keys(self) -> list[str]:
        return list(self._entries)

    def __repr__(self) -> str:
        return f"ProbeCache({len(self._entries)} answers, {self.hits} hits, {self.misses} misses)"


class ProbeAnswers:
    """Answer probes from the cache; one upstream request for identical concurrent ones."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock | None = None) -> None:
        self.session = session
        self.cache = ProbeCache(clock or MonotonicClock())
        self._inflight: dict[str, asyncio.Future[Probe | None]] = {}

    async def answer(
        self, request: web.BaseRequest, url: str, tls: ssl.SSLContext | bool | None
    ) -> web.StreamResponse:
        key = self.cache.key(request.method, url, request.headers.get("Authorization"))
        probe = self.cache.get(key)
        if probe is None:
            waiting = self._inflight.get(key)
            if waiting is not None:
                probe = await asyncio.shield(waiting)
            else:
                fut: asyncio.Future[Probe | None] = asyncio.get_running_loop().create_future()
                self._inflight[key] = fut
                try:
                    probe = await self._fetch(request, url, tls, key)
                    fut.set_result(probe)
                except BaseException:
                    fut.set_result(None)
                    raise
                finally:
                    del self._inflight[key]
        if probe is None:  # not answered, or not fit to share: each request goes as it is
            return await forward(request, url, self.session, tls)
        return probe.response(request.method)

    async def _fetch(
        self, request: web.BaseRequest, url: str, tls: ssl.SSLContext | bool | None, key: str
    ) -> Probe | None:
        headers = forward_headers(CIMultiDict(request.headers))
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                allow_redirects=False,
                ssl=tls if tls is not None else True,
                skip_auto_headers=NO_AUTO_HEADERS,
            ) as up:
                body = b"" if request.method == "HEAD" else await up.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    log.info("%s: the probe's answer is too large to keep", redact_url(url))
                    return None
                return self.cache.put(key, up.status, CIMultiDict(up.headers), body)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.info("probe %s: the registry did not answer: %s", redact_url(url), e)
            return None
