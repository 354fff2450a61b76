"""What a front door may use of the gateway: one small object instead of the whole ``Gateway``.

The HTTP/2, HTTP/1.1 and WebSocket doors are adapters: they turn wire events
into calls and back.  They need the limits, the router, the credentials, the
ping ticker, the set of open connections (so ``stop()`` can close them), the
handler for ordinary requests and, for the HTTP/1.1 door, the way to hand an
upgraded transport to the WebSocket door.  Naming exactly that here keeps the
doors testable with a hand-built context and keeps them from growing
dependencies on the rest of ``Gateway``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import h11

from bidistream.gateway.bridge import PingTicker
from bidistream.gateway.http import HttpResponse
from bidistream.gateway.limits import GatewayLimits
from bidistream.routing import Router
from bidistream.sigv4 import CredentialStore

__all__ = ["Connection", "DoorContext", "HttpHandler", "WsUpgrade"]


class Connection(Protocol):
    """An open client connection, as ``Gateway.stop()`` closes it."""

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...

    def close_gracefully(self) -> None: ...


# (method, path, query, headers, body) -> response, for every request that is not a stream.
HttpHandler = Callable[[str, str, str, dict[str, str], bytes], Awaitable[HttpResponse]]
# (TLS transport, the upgrade request, bytes read past it) -> None: the WS door owns the transport.
WsUpgrade = Callable[[asyncio.Transport, h11.Request, bytes], None]


@dataclass(slots=True, eq=False)
class DoorContext:
    limits: GatewayLimits
    router: Router
    credentials: CredentialStore
    ticker: PingTicker
    connections: set[Connection]
    handle_http: HttpHandler
    upgrade_ws: WsUpgrade
