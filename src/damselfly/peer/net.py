"""The engine's own address as peers see it: the local address of a socket that reaches the
supernode (a UDP "connect" sends nothing; it only asks the kernel for a route)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


def _route_source(family: int, addr: tuple[Any, ...]) -> str:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        return str(s.getsockname()[0])


async def local_ip_for(host: str, port: int) -> str:
    """The local IP that routes to ``host:port`` ("127.0.0.1" when it cannot be found)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return "127.0.0.1"
    for family, _type, _proto, _name, addr in infos:
        try:
            return await asyncio.to_thread(_route_source, family, addr)
        except OSError:
            continue
    return "127.0.0.1"
