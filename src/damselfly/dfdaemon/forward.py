"""Requests that do not go through the swarm: passed to the origin as they are and the answer
streamed back as it is (status, headers, body; no decompression, no redirect following).

Headers keep their order and their repetitions (several ``Accept`` lines stay several lines:
merging them makes registries answer 404 for OCI images). Only hop-by-hop headers are dropped.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from damselfly.core.ids import redact_url

log = logging.getLogger("damselfly.dfdaemon.forward")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
#: aiohttp adds these when absent; a forwarded request carries only what the client sent
NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
CHUNK = 256 * 1024


def forward_headers(src: CIMultiDict[str]) -> CIMultiDict[str]:
    """The request headers to send on: all but hop-by-hop ones (and those ``Connection`` names)."""
    named = {
        t.strip().lower() for v in src.getall("Connection", []) for t in v.split(",") if t.strip()
    }
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in src.items():
        if k.lower() not in HOP_BY_HOP and k.lower() not in named:
            out.add(k, v)
    return out


def response_headers(src: CIMultiDict[str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in src.items():
        if k.lower() not in HOP_BY_HOP:
            out.add(k, v)
    return out


def error_response(status: int, message: str, code: str = "UNKNOWN") -> web.Response:
    """An error the registry clients can print: the distribution spec's error body."""
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)


async def forward(
    request: web.BaseRequest,
    url: str,
    session: aiohttp.ClientSession,
    ssl_ctx: ssl.SSLContext | bool | None = None,
) -> web.StreamResponse:
    """Send ``request`` to ``url`` and stream the answer back."""
    headers = forward_headers(CIMultiDict(request.headers))
    data = request.content if request.body_exists else None
    try:
        upstream = await session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            ssl=ssl_ctx if ssl_ctx is not None else True,
            skip_auto_headers=NO_AUTO_HEADERS,
        )
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        log.info("%s %s: the origin did not answer: %s", request.method, redact_url(url), e)
        return error_response(
            502,
            f"dfdaemon could not reach {redact_url(url)}: {e.__class__.__name__}; "
            "check the registry_mirror.remote (or the URL) and the network",
        )
    async with upstream:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        resp.headers.extend(response_headers(upstream.headers))
        if request.method == "HEAD" or upstream.status in (204, 304):
            resp.headers.pop("Transfer-Encoding", None)
            await resp.prepare(request)
            return resp
        if "Content-Length" not in upstream.headers:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await resp.write(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.info("%s %s: the origin's body broke off: %s", request.method, redact_url(url), e)
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
