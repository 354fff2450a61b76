"""The HTTP/1.1 front door (boto3, browsers), over the sans-I/O ``h11`` state machine.

Same TLS port as HTTP/2: ALPN decides.  It serves the plain request/response
operations, answers an HTTP/1.1 attempt at the bidi operation with a clear
error (the awscrt client would otherwise send its head without a body and wait
forever), and hands WebSocket upgrades on ``/endpoints/{name}/ws`` to the
WebSocket front door.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import h11

from bidistream.errors import InputValidationError, MessageTooLargeError
from bidistream.gateway.http import Api, HttpResponse, error_response
from bidistream.gateway.routes import RouteKind, classify

if TYPE_CHECKING:
    from bidistream.gateway.context import DoorContext

__all__ = ["H1Protocol"]

log = logging.getLogger("bidistream.gateway.h1")


class H1Protocol(asyncio.Protocol):
    def __init__(self, ctx: DoorContext) -> None:
        self.ctx = ctx
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=ctx.limits.max_head)
        self.transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._too_large = False
        self._task: asyncio.Task[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed = False
        self.reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.ctx.connections.add(self)

    def close_gracefully(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        self._can_write.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()

    def _pause_reading(self) -> None:
        """A request is being answered: read nothing more until the next cycle.

        h11 buffers whatever arrives meanwhile (pipelined requests) without
        bound; pausing the transport leaves it in the kernel, where TCP's own
        window pushes back on the client.
        """
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._process()
        return None

    def _process(self) -> None:
        while self._task is None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_simple(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                self._pause_reading()
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._body.clear()
                self._too_large = False
                if self._is_ws_upgrade(event):
                    self._upgrade(event)
                    return
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self.ctx.limits.max_invoke_body:
                    self._too_large = True
                else:
                    self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self._request is not None
                self._pause_reading()
                self._task = asyncio.get_running_loop().create_task(self._respond(self._request))
                return
            elif isinstance(event, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    @staticmethod
    def _is_ws_upgrade(req: h11.Request) -> bool:
        if req.method != b"GET":
            return False
        for name, value in req.headers:
            if name == b"upgrade" and value.lower() == b"websocket":
                return True
        return False

    def _upgrade(self, req: h11.Request) -> None:
        assert self.transport is not None
        trailing, _ = self.conn.trailing_data
        self.ctx.connections.discard(self)
        self.ctx.upgrade_ws(self.transport, req, bytes(trailing))

    async def _respond(self, req: h11.Request) -> None:
        target = req.target.decode("utf-8", "replace")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for k, v in req.headers:
            key = k.decode("ascii").lower()
            val = v.decode("utf-8", "replace")
            headers[key] = f"{headers[key]},{val}" if key in headers else val
        method = req.method.decode("ascii")
        if self._too_large:
            resp = error_response(
                MessageTooLargeError(f"request body exceeds {self.ctx.limits.max_invoke_body} bytes"),
                Api.RUNTIME,
            )
        elif (kind := classify(method, path, headers).kind) is RouteKind.GRPC:
            resp = error_response(
                InputValidationError(
                    "gRPC calls need HTTP/2: the connection negotiated HTTP/1.1. Use a gRPC client "
                    "over TLS (it offers ALPN h2)."
                ),
                Api.RUNTIME,
            )
        elif kind is RouteKind.BIDI:
            resp = error_response(
                InputValidationError(
                    "InvokeEndpointWithBidirectionalStream needs HTTP/2: the connection negotiated "
                    "HTTP/1.1. Use an https:// endpoint with a client that offers ALPN h2 "
                    "(aws-sdk-sagemaker-runtime-http2 with AWSCRTHTTPClient)."
                ),
                Api.BIDI,
            )
        else:
            host = headers.get("host")
            if host is not None:
                headers[":authority"] = host
            resp = await self.ctx.handle_http(method, path, query, headers, bytes(self._body))
        try:
            await self._write(resp)
        except (ConnectionError, h11.LocalProtocolError) as exc:
            log.debug("HTTP/1.1 write failed: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        self._task = None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._resume_reading()
            self._process()
        elif self.transport is not None:
            self.transport.close()

    async def _write(self, resp: HttpResponse) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        headers = [(k, v) for k, v in resp.headers if k.lower() != "transfer-encoding"]
        body = resp.body
        if isinstance(body, bytes):
            if not any(k.lower() == "content-length" for k, _ in headers):
                headers.append(("content-length", str(len(body))))
            transport.write(self.conn.send(h11.Response(status_code=resp.status, headers=headers)) or b"")
            if body:
                transport.write(self.conn.send(h11.Data(data=body)) or b"")
            transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            return
        transport.write(self.conn.send(h11.Response(status_code=resp.status, headers=headers)) or b"")
        await self._write_stream(body)

    async def _write_stream(self, body: AsyncIterator[bytes]) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if self.closed:
                    raise ConnectionResetError("client went away")
                transport.write(self.conn.send(h11.Data(data=chunk)) or b"")
                await self._can_write.wait()
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        transport.write(self.conn.send(h11.EndOfMessage()) or b"")

    def _send_simple(self, status: int, text: str) -> None:
        if self.transport is None:
            return
        err = InputValidationError(f"malformed HTTP/1.1 request: {text}")
        resp = error_response(err, Api.RUNTIME)
        assert isinstance(resp.body, bytes)
        with contextlib.suppress(h11.LocalProtocolError):
            self.transport.write(
                self.conn.send(h11.Response(status_code=status, headers=resp.headers)) or b""
            )
            self.transport.write(self.conn.send(h11.Data(data=resp.body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        self.transport.close()
