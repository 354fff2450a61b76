"""The gateway: SageMaker's runtime API (and the control API's door) on one TLS port.

API for whoever wires it (platform, CLI, tests)::

    from bidistream.gateway.server import Gateway
    from bidistream.gateway.limits import GatewayLimits

    gw = Gateway(
        router,                     # bidistream.routing.Router
        control_plane=None,         # object with
                                    #   async def handle(target: str, body: bytes,
                                    #                    headers: Mapping[str, str])
                                    #       -> tuple[int, dict[str, str], bytes]
                                    # target is X-Amz-Target as sent ("SageMaker.CreateModel",
                                    # "AnyScaleFrontendService.PutScalingPolicy")
        host="127.0.0.1",
        port=8443,                  # 0 picks a free port; read gw.port after start()
        data_dir=Path("~/.bidistream").expanduser(),  # CA + server cert live here
        limits=GatewayLimits(),     # ping interval, missed pongs, windows, timeouts...
        credentials=None,           # bidistream.sigv4.CredentialStore; None = from env
    )
    await gw.start()
    gw.port, gw.ca_path, gw.url     # e.g. 8443, <data_dir>/ca.pem, "https://127.0.0.1:8443"
    await gw.stop()

One TLS listener, ALPN decides the protocol per connection: ``h2`` goes to
:class:`~bidistream.gateway.h2front.H2Protocol` (bidi streams, and any other
request), ``http/1.1`` (or no ALPN) to
:class:`~bidistream.gateway.h1front.H1Protocol` (boto3, WebSocket upgrades).
Each door gets a :class:`~bidistream.gateway.context.DoorContext` (built at
``start()``), never the ``Gateway`` itself, and asks
:func:`~bidistream.gateway.routes.classify` which operation a request is.
Both call :meth:`Gateway.handle_http` for ordinary requests:

* ``POST /`` with ``X-Amz-Target: SageMaker.<Op>`` or ``AnyScaleFrontendService.<Op>``
  (Application Auto Scaling) → ``control_plane.handle``
  (without a control plane: 400 ``UnknownOperationException``, as AWS answers);
* ``POST /endpoints/{name}/invocations`` → InvokeEndpoint;
* ``POST /endpoints/{name}/invocations-response-stream`` → InvokeEndpointWithResponseStream;
* ``GET /ping`` → 200.
* ``GET /`` → 302 to ``/web/``, ``GET /web/<file>`` → the browser demo page (``static.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, cast

import aiohttp

from bidistream import metrics
from bidistream.defaults import DEFAULT_DATA_DIR
from bidistream.errors import BidistreamError, InternalError, NotFoundError, UnknownOperationError
from bidistream.gateway.bridge import PingTicker
from bidistream.gateway.context import Connection, DoorContext
from bidistream.gateway.h1front import H1Protocol
from bidistream.gateway.h2front import H2Protocol
from bidistream.gateway.http import Api, HttpResponse, error_response, new_request_id
from bidistream.gateway.limits import GatewayLimits
from bidistream.gateway.routes import RouteKind, classify
from bidistream.gateway.runtime import invoke_endpoint
from bidistream.gateway.static import static_response
from bidistream.gateway.tls import TLSFiles, ensure_certificates, server_context
from bidistream.gateway.wsfront import take_over as ws_take_over
from bidistream.metrics import exposition
from bidistream.routing import Router
from bidistream.sigv4 import CredentialStore, verify_request

__all__ = ["DEFAULT_DATA_DIR", "ControlPlane", "Gateway"]

log = logging.getLogger("bidistream.gateway")


class ControlPlane(Protocol):
    async def handle(
        self, target: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes]: ...


class _AlpnSwitch(asyncio.Protocol):
    """Picks the protocol once TLS is up (asyncio calls connection_made after the handshake)."""

    def __init__(self, ctx: DoorContext) -> None:
        self.ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        ssl_obj = transport.get_extra_info("ssl_object")
        alpn = ssl_obj.selected_alpn_protocol() if ssl_obj is not None else None
        proto: asyncio.Protocol = H2Protocol(self.ctx) if alpn == "h2" else H1Protocol(self.ctx)
        transport.set_protocol(proto)
        proto.connection_made(transport)


class Gateway:
    def __init__(
        self,
        router: Router,
        control_plane: ControlPlane | None = None,
        host: str = "127.0.0.1",
        port: int = 8443,
        data_dir: Path = DEFAULT_DATA_DIR,
        limits: GatewayLimits | None = None,
        credentials: CredentialStore | None = None,
    ) -> None:
        self.router = router
        self.control_plane = control_plane
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir)
        self.limits = limits or GatewayLimits()
        self.credentials = credentials if credentials is not None else CredentialStore.from_spec(None)
        # Every open client connection (HTTP/2, HTTP/1.1, WebSocket), closed on stop().
        self.connections: set[Connection] = set()
        self.tls: TLSFiles | None = None
        self.ticker: PingTicker | None = None
        self._server: asyncio.Server | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def live_sessions(self) -> int:
        return len(self.ticker) if self.ticker is not None else 0

    async def start(self) -> None:
        self.tls = ensure_certificates(self.data_dir)
        tls_ctx: ssl.SSLContext = server_context(self.tls)
        self.ticker = PingTicker(self.limits.ping_interval, self.limits.missed_pongs)
        ctx = DoorContext(
            limits=self.limits,
            router=self.router,
            credentials=self.credentials,
            ticker=self.ticker,
            connections=self.connections,
            handle_http=self.handle_http,
            # The WS door takes an upgraded transport over with this same context.
            upgrade_ws=lambda transport, req, trailing: ws_take_over(ctx, transport, req, trailing),
        )
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), auto_decompress=False
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _AlpnSwitch(ctx), self.host, self.port, ssl=tls_ctx, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("gateway listening on %s (CA %s)", self.url, self.ca_path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_gracefully()
        if self.connections:
            # A TLS close waits for the peer's close_notify; idle keep-alive clients
            # (boto3's pool) may never send it.
            await asyncio.sleep(0.1)
            for conn in list(self.connections):
                transport = conn.transport
                if transport is not None:
                    cast(asyncio.Transport, transport).abort()
        if self.ticker is not None:
            await self.ticker.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # ------------------------------------------------------------------ ordinary requests
    async def handle_http(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> HttpResponse:
        try:
            return await self._route(method, path, query, headers, body)
        except BidistreamError as exc:
            return error_response(exc, Api.RUNTIME)
        except Exception as exc:
            log.exception("request %s %s failed", method, path)
            return error_response(InternalError(f"gateway error: {type(exc).__name__}"), Api.RUNTIME)

    async def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> HttpResponse:
        route = classify(method, path, headers)
        kind = route.kind
        if kind is RouteKind.PING:
            return HttpResponse(200, [("content-type", "text/plain")], b"ok\n")
        if kind is RouteKind.METRICS:
            return metrics_response()
        if kind is RouteKind.PAGE and (page := static_response(method, path)) is not None:
            return page  # the browser demo page; browsers load it over h2, so both doors
        if kind is RouteKind.CONTROL:
            return await self._control(headers, body)
        if kind is RouteKind.INVOKE or kind is RouteKind.INVOKE_STREAM:
            if self.credentials.enabled:
                self._verify(method, path, query, headers, body)
            assert self._http is not None
            return await invoke_endpoint(
                self._http,
                self.router,
                self.limits,
                route.endpoint,
                headers,
                body,
                stream=kind is RouteKind.INVOKE_STREAM,
            )
        raise NotFoundError(f"no operation at {method} {path}")

    def _verify(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> None:
        h = dict(headers)
        if "host" not in h and ":authority" in h:
            h["host"] = h[":authority"]
        verify_request(self.credentials, method, path, query, h, body)

    async def _control(self, headers: dict[str, str], body: bytes) -> HttpResponse:
        """One count, one latency sample and one log line per control-plane call."""
        began = time.monotonic()
        target = headers["x-amz-target"]
        resp = await self._control_inner(target, headers, body)
        seconds = time.monotonic() - began
        service, _, op = target.rpartition(".")
        error = next((v for k, v in resp.headers if k == "x-amzn-errortype"), "")
        if not error and resp.status >= 400 and isinstance(resp.body, bytes):
            with contextlib.suppress(ValueError, AttributeError):
                error = str(json.loads(resp.body).get("__type", "")).rpartition("#")[2]
        metrics.control_plane_call(service, op, error, seconds)
        fields: dict[str, object] = {
            "service": service,
            "operation": op,
            "status": resp.status,
            "seconds": round(seconds, 4),
            "request": next((v for k, v in resp.headers if k == "x-amzn-requestid"), ""),
            "error": error,
        }
        if error and isinstance(resp.body, bytes):
            with contextlib.suppress(ValueError, AttributeError):
                fields["reason"] = str(json.loads(resp.body).get("message", ""))[:512]
        log.info("control-plane call", extra=fields)
        return resp

    async def _control_inner(self, target: str, headers: dict[str, str], body: bytes) -> HttpResponse:
        rid = new_request_id()
        try:
            if self.credentials.enabled:
                self._verify("POST", "/", "", headers, body)
            if self.control_plane is None:
                raise UnknownOperationError(f"Unknown operation {target}")
        except BidistreamError as exc:
            return error_response(exc, Api.CONTROL, rid)
        status, out_headers, out_body = await self.control_plane.handle(target, body, headers)
        hdrs = [(k.lower(), v) for k, v in out_headers.items()]
        if not any(k == "x-amzn-requestid" for k, _ in hdrs):
            hdrs.append(("x-amzn-requestid", rid))
        if not any(k == "content-type" for k, _ in hdrs):
            hdrs.append(("content-type", "application/x-amz-json-1.1"))
        hdrs = [(k, v) for k, v in hdrs if k != "content-length"]
        hdrs.append(("content-length", str(len(out_body))))
        return HttpResponse(status, hdrs, out_body)


def metrics_response() -> HttpResponse:
    """``GET /metrics`` on either door (h2 and HTTP/1.1 share :meth:`Gateway.handle_http`)."""
    body, ctype = exposition()
    return HttpResponse(200, [("content-type", ctype), ("content-length", str(len(body)))], body)
