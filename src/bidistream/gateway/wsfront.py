"""The WebSocket front door: ``wss://host:port/endpoints/{name}/ws[/<path>][?query]``.

Browsers and Deepgram-style clients reach an endpoint without HTTP/2 or event
streams.  The HTTP/1.1 front door hands the upgraded TLS transport over
(``transport.set_protocol``), and this protocol drives the sans-I/O
``websockets.ServerProtocol`` on it: no second server, same port.

The path after ``/ws`` is the model invocation path and the query is the model
query string, validated like the bidi API's headers.  The upgrade is accepted
at once and failures are said with close codes from the wire table (1008
validation, 1011 model error, 1013 no capacity), because a browser cannot read
the status of a refused upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import h11
from websockets.exceptions import InvalidState
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bidistream.errors import BidistreamError, InternalError, NotFoundError, wire_form
from bidistream.gateway.bridge import Upstream, open_upstream
from bidistream.gateway.routes import RouteKind, classify
from bidistream.gateway.validation import check_invocation_path, check_name, check_query

if TYPE_CHECKING:
    from bidistream.gateway.context import DoorContext

__all__ = ["WsSession", "take_over"]

log = logging.getLogger("bidistream.gateway.ws")

_MAX_REASON = 120


def _first_offered(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # Deepgram's SDKs authenticate with `Sec-WebSocket-Protocol: token, <key>` and
    # fail unless one is echoed back; the first offered one is what they expect.
    return offered[0] if offered else None


# Client headers the instance must see for end-to-end auth: Deepgram-style
# clients send their key as `Authorization: Token <key>` or as the subprotocols
# `token, <key>`; the model checks it, not the gateway.
_FORWARDED = {b"authorization": "Authorization", b"sec-websocket-protocol": "Sec-WebSocket-Protocol"}


def _forwarded(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for name, value in raw:
        key = _FORWARDED.get(name.lower())
        if key is not None:
            out.setdefault(key, []).append(value.decode("latin-1"))
    return {key: ", ".join(values) for key, values in out.items()}


def take_over(ctx: DoorContext, transport: asyncio.Transport, req: h11.Request, trailing: bytes) -> None:
    """The HTTP/1.1 door hands an upgrade request (and what was read past it) to this door."""
    proto = WsSession(ctx, transport)
    transport.set_protocol(proto)
    proto.start(req, trailing)


class WsSession(asyncio.Protocol):
    """One client WebSocket bridged to one instance WebSocket."""

    def __init__(self, ctx: DoorContext, transport: asyncio.Transport) -> None:
        self.ctx = ctx
        self.transport = transport
        self.ws = ServerProtocol(
            max_size=ctx.limits.max_event_size, select_subprotocol=_first_offered, logger=log
        )
        self.up: Upstream | None = None
        self.early: list[tuple[bytes, bool, bool]] | None = []
        self.closed = False
        self._out_frag = False
        self._in_text = False
        self._task: asyncio.Task[None] | None = None
        ctx.connections.add(self)

    def close_gracefully(self) -> None:
        with contextlib.suppress(InvalidState):
            if self.ws.state is State.OPEN:
                self.ws.send_close(1001, "gateway shutting down")
        self._flush()
        self.transport.close()

    # ------------------------------------------------------------------ opening
    def start(self, req: h11.Request, trailing: bytes) -> None:
        head = [b"GET " + req.target + b" HTTP/1.1\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in req.headers]
        self.ws.receive_data(b"".join(head) + b"\r\n" + trailing)
        events = self.ws.events_received()
        request = events[0]
        target = req.target.decode("utf-8", "replace")
        path, _, query = target.partition("?")
        response = self.ws.accept(request)  # type: ignore[arg-type]
        self.ws.send_response(response)
        self._flush()
        if response.status_code != 101:
            return
        try:
            endpoint, inv_path = self._parse(path)
            if query:
                check_query(query, lenient=self.ctx.limits.lenient_query)
        except BidistreamError as exc:
            self._close_with(exc)
            return
        self._handle(events[1:])
        headers = {
            "X-Amzn-SageMaker-Request-Id": uuid.uuid4().hex,
            "X-Amzn-SageMaker-Endpoint-Name": endpoint,
            **_forwarded(req.headers),
        }
        self._task = asyncio.get_running_loop().create_task(self._connect(endpoint, inv_path, query, headers))

    @staticmethod
    def _parse(path: str) -> tuple[str, str | None]:
        route = classify("GET", path, {}, upgrade=True)
        if route.kind is not RouteKind.WEBSOCKET or not route.endpoint:
            raise NotFoundError(f"no WebSocket route {path}; use /endpoints/{{name}}/ws[/<path>]")
        check_name(route.endpoint, "EndpointName")
        if route.invocation_path is None:
            return route.endpoint, None
        return route.endpoint, check_invocation_path(route.invocation_path)

    async def _connect(
        self, endpoint: str, inv_path: str | None, query: str, headers: dict[str, str]
    ) -> None:
        gw = self.ctx
        try:
            up = await open_upstream(
                gw.router,
                endpoint,
                variant=None,
                path=inv_path,
                query=query or None,
                headers=headers,
                limits=gw.limits,
                ticker=gw.ticker,
            )
        except BidistreamError as exc:
            self._close_with(exc)
            return
        except Exception as exc:
            log.exception("WS front door connect failed")
            self._close_with(InternalError(f"gateway failed to open the session: {exc}"))
            return
        if self.closed or self.ws.state is not State.OPEN:
            up.abort()
            return
        self.up = up
        early, self.early = self.early, None
        for data, text, fin in early or ():
            up.send(data, text, fin)
        up.attach(self)
        self.transport.resume_reading()
        if up.closed:
            self.on_upstream_closed(up.close_error)

    # ------------------------------------------------------------------ client → instance
    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._handle(self.ws.events_received())

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._handle(self.ws.events_received())
        return None

    def _handle(self, events: Sequence[object]) -> None:
        up = self.up
        for ev in events:
            if not isinstance(ev, WsFrame):
                continue
            op = ev.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY or op is Opcode.CONT:
                if op is not Opcode.CONT:
                    self._in_text = op is Opcode.TEXT
                item = (bytes(ev.data), self._in_text, ev.fin)
                if up is not None:
                    up.send(*item)
                elif self.early is not None:
                    self.early.append(item)
                    # Nothing read until the instance is there: bounded by the socket.
                    self.transport.pause_reading()
            elif op is Opcode.CLOSE:
                if up is not None:
                    up.close_input()
        if up is not None and up.write_paused:
            self.transport.pause_reading()
        self._flush()

    def on_upstream_writable(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ instance → client
    def on_upstream_frame(self, data: bytes, text: bool, fin: bool) -> None:
        ws = self.ws
        try:
            if self._out_frag:
                ws.send_continuation(data, fin)
            elif text:
                ws.send_text(data, fin)
            else:
                ws.send_binary(data, fin)
        except InvalidState:
            return
        self._out_frag = not fin
        self._flush()

    def on_upstream_closed(self, error: BidistreamError | None) -> None:
        if error is None:
            with contextlib.suppress(InvalidState):
                self.ws.send_close(1000, "")
            self._flush()
            return
        self._close_with(error)

    def _close_with(self, error: BidistreamError) -> None:
        code = wire_form(error).ws_close
        if error.code.isdigit() and 1000 <= int(error.code) < 5000 and int(error.code) not in (1005, 1006):
            code = int(error.code)  # the container's own close code, relayed as is
        reason = error.message.encode()[:_MAX_REASON].decode("utf-8", "ignore")
        with contextlib.suppress(InvalidState):
            if self.ws.state is State.OPEN:
                self.ws.send_close(code, reason)
        self._flush()
        if self.up is not None and not self.up.closed:
            self.up.abort(code, reason)

    # ------------------------------------------------------------------ plumbing
    def _flush(self) -> None:
        if self.closed:
            return
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                # The protocol's end-of-stream marker: the close handshake is done.
                self.transport.close()
                return

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.up is not None:
            self.up.abort(1001, "client went away")
