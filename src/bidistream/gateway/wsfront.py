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
from urllib.parse import unquote

import h11
from websockets.exceptions import InvalidState
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bidistream.contract import check_invocation_path, check_name, check_query, close_reason
from bidistream.errors import (
    AuthError,
    BidistreamError,
    ModelRefusedError,
    NotFoundError,
    wire_form,
    ws_close_code,
)
from bidistream.gateway.auth import authenticate_upgrade
from bidistream.gateway.bridge import Relay
from bidistream.gateway.routes import RouteKind, classify
from bidistream.session.events import ClientBlocked, ClientEnded, ClientGone, ClientWritable

if TYPE_CHECKING:
    from bidistream.gateway.context import DoorContext

__all__ = ["WsSession", "take_over"]

log = logging.getLogger("bidistream.gateway.ws")


def _first_offered(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # Deepgram's SDKs authenticate with `Sec-WebSocket-Protocol: token, <key>` and
    # fail unless one is echoed back; the first offered one is what they expect.
    return offered[0] if offered else None


# Client headers the instance must see for end-to-end auth: Deepgram-style
# clients send their key as `Authorization: Token <key>` or as the subprotocols
# `token, <key>`; the model checks it, not the gateway.
_FORWARDED = {b"authorization": "Authorization", b"sec-websocket-protocol": "Sec-WebSocket-Protocol"}


def _lowered(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key, val = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = f"{out[key]},{val}" if key in out else val
    return out


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
    """One client WebSocket: the WebSocket adapter of the session core.

    It turns websockets' events into session events and carries out the
    session's client-side actions; the :class:`~bidistream.gateway.bridge.Relay`
    does the instance side.  Backpressure here is pausing this socket's reads.
    After our close frame the client gets ``ws_close_timeout`` to answer it
    before the socket is cut.
    """

    def __init__(self, ctx: DoorContext, transport: asyncio.Transport) -> None:
        self.ctx = ctx
        self.transport = transport
        self.ws = ServerProtocol(
            max_size=ctx.limits.max_event_size, select_subprotocol=_first_offered, logger=log
        )
        self.relay: Relay | None = None
        # The 101 held until an instance takes the session (see start and accept).
        self._pending_response: WsResponse | None = None
        self.closed = False
        self.reads_paused = False
        self._close_deadline: asyncio.TimerHandle | None = None
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
        if not events or not isinstance(events[0], WsRequest):
            self._refuse_head()
            return
        request = events[0]
        target = req.target.decode("utf-8", "replace")
        path, _, query = target.partition("?")
        try:
            query = authenticate_upgrade(self.ctx.credentials, path, query, _lowered(req.headers))
        except AuthError as exc:
            self._refuse_upgrade(exc)
            return
        response = self.ws.accept(request)
        if response.status_code != 101:  # not a valid WebSocket handshake: websockets says why
            self.ws.send_response(response)
            self._flush()
            return
        try:
            endpoint, inv_path = self._parse(path)
            if query:
                check_query(query, lenient=self.ctx.limits.lenient_query)
        except BidistreamError as exc:
            # The gateway's own refusals open and close with a code and reason: a browser can read
            # a close reason, never the body of a refused upgrade.
            self.ws.send_response(response)
            self._close_with(exc)
            return
        # The 101 waits until an instance has taken the session (accept), so an instance that
        # refuses the upgrade is answered with its own status, body and headers (refuse).
        self._pending_response = response
        headers = {
            "X-Amzn-SageMaker-Request-Id": uuid.uuid4().hex,
            "X-Amzn-SageMaker-Endpoint-Name": endpoint,
            **_forwarded(req.headers),
        }
        gw = self.ctx
        self.relay = Relay(
            self,
            gw.router,
            gw.limits,
            gw.ticker,
            endpoint=endpoint,
            variant=None,
            path=inv_path,
            query=query or None,
            headers=headers,
        )
        self.relay.start()
        self._handle(events[1:])

    def _refuse_upgrade(self, error: AuthError) -> None:
        """Answer the upgrade with the error's status (401/403) instead of a 101."""
        form = wire_form(error)
        response = self.ws.reject(form.http_status, error.message + "\n")
        response.headers["x-amzn-ErrorType"] = form.amzn_error_type
        if form.http_status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="bidistream"'
        self.ws.send_response(response)
        self._flush()  # ends with the protocol's end-of-stream marker: the transport closes

    def _refuse_head(self) -> None:
        """The upgrade's head broke a websockets limit (more than 128 headers, a line over 8 KiB).

        websockets queues its own answer for those (431, or 414 for the request
        line); for any other head it cannot parse it only closes, so say 400.
        """
        log.info("WS upgrade refused: %s", self.ws.handshake_exc)
        answered = False
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
                answered = True
        if not answered:
            body = f"Failed to open a WebSocket connection: {self.ws.handshake_exc}.\n".encode()
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        self.closed = True
        self.transport.close()

    @staticmethod
    def _parse(path: str) -> tuple[str, str | None]:
        route = classify("GET", path, {}, upgrade=True)
        if route.kind is not RouteKind.WEBSOCKET or not route.endpoint:
            raise NotFoundError(f"no WebSocket route {path}; use /endpoints/{{name}}/ws[/<path>]")
        # The browser percent-encoded the URL; an error quotes what the user typed.
        check_name(route.endpoint, "EndpointName", shown=unquote(route.endpoint))
        if route.invocation_path is None:
            return route.endpoint, None
        inv_path = route.invocation_path
        return route.endpoint, check_invocation_path(inv_path, shown=unquote(inv_path))

    # ------------------------------------------------------------------ client → session
    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._handle(self.ws.events_received())

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._handle(self.ws.events_received())
        return None

    def _handle(self, events: Sequence[object]) -> None:
        relay = self.relay
        for ev in events:
            if not isinstance(ev, WsFrame) or relay is None:
                continue
            op = ev.opcode
            if op is Opcode.TEXT:
                relay.client_part(bytes(ev.data), True, ev.fin)
            elif op is Opcode.BINARY:
                relay.client_part(bytes(ev.data), False, ev.fin)
            elif op is Opcode.CONT:
                relay.client_part(bytes(ev.data), None, ev.fin)
            elif op is Opcode.CLOSE:
                relay.feed(ClientEnded())
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self._close_deadline is not None:
            self._close_deadline.cancel()
        if self.relay is not None:
            self.relay.feed(ClientGone())

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.feed(ClientBlocked())

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.feed(ClientWritable())

    # ------------------------------------------------------------------ session → client
    def accept(self, variant: str) -> None:
        """An instance took the session: now the client gets its 101."""
        self._send_pending_response()

    def refuse(self, error: BidistreamError) -> None:
        if (
            self._pending_response is not None
            and isinstance(error, ModelRefusedError)
            and error.original_status
        ):
            # Answer as the instance answered us (Deepgram: 400, its JSON body, dg-error), the way
            # the client would have been answered talking to the model server directly.
            self._pending_response = None
            status = error.original_status
            response = self.ws.reject(status, error.original_message or error.message)
            del response.headers["Content-Type"]
            for name, value in error.original_headers.items():
                response.headers[name] = value
            if "Content-Type" not in response.headers:
                response.headers["Content-Type"] = "text/plain; charset=utf-8"
            response.headers["x-amzn-ErrorType"] = wire_form(error).amzn_error_type
            self.ws.send_response(response)
            self._flush()
            return
        self._send_pending_response()
        self._close_with(error)

    def _send_pending_response(self) -> None:
        response, self._pending_response = self._pending_response, None
        if response is not None:
            self.ws.send_response(response)
            self._flush()

    def end(self, error: BidistreamError | None) -> None:
        if error is not None:
            self._close_with(error)
            return
        with contextlib.suppress(InvalidState):
            if self.ws.state is State.OPEN:
                self.ws.send_close(1000, "")
        self._flush()
        self._arm_close_deadline()

    def send(self, data: bytes, text: bool, fin: bool, cont: bool) -> None:
        ws = self.ws
        try:
            if cont:
                ws.send_continuation(data, fin)
            elif text:
                ws.send_text(data, fin)
            else:
                ws.send_binary(data, fin)
        except InvalidState:
            return
        self._flush()

    def send_last(self, data: bytes, text: bool) -> None:
        self.send(data, text, True, False)  # every send already leaves at once

    def ack(self, n: int) -> None:
        """WebSocket has no window: backpressure is pausing reads."""

    def pause_reads(self) -> None:
        if not self.closed and not self.reads_paused:
            self.reads_paused = True
            self.transport.pause_reading()

    def resume_reads(self) -> None:
        if not self.closed and self.reads_paused:
            self.reads_paused = False
            self.transport.resume_reading()

    def _close_with(self, error: BidistreamError) -> None:
        code = ws_close_code(error)  # the container's own close code is relayed as is
        with contextlib.suppress(InvalidState):
            if self.ws.state is State.OPEN:
                self.ws.send_close(code, close_reason(error.message))
        self._flush()
        self._arm_close_deadline()

    def _arm_close_deadline(self) -> None:
        """Our close is sent: read the client's reply (reads resumed), cut the socket if none comes."""
        self.resume_reads()
        if self._close_deadline is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._close_deadline = loop.call_later(self.ctx.limits.ws_close_timeout, self.transport.abort)

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
