"""The gRPC relay: a gRPC call on the gateway's TLS port, relayed to an instance's gRPC port.

A request on the HTTP/2 door with ``content-type: application/grpc[+codec]``
(``routes.classify`` → ``RouteKind.GRPC``) becomes a :class:`GrpcCall`.  The
call's bytes are not decoded: request DATA goes to the instance as it came,
the instance's response headers, DATA and trailers come back as they came
(``grpc-status``/``grpc-message`` included).  Only two things are read:

* where the call goes: the ``x-bidistream-endpoint`` metadata key (variant
  from ``x-amzn-sagemaker-target-variant``), else, for a V2 call, the model
  name in the first request message's field 1 (:class:`grpcwire.FirstMessage`
  reads it from the first bytes, before the message is complete);
* whether the instance said RESOURCE_EXHAUSTED before any response (a
  trailers-only answer): the call then goes to the next candidate, with the
  request bytes sent so far replayed, the way a bidi session retries after a
  1013 close.  The replay copy is kept until the instance commits (its first
  response headers or DATA) and for at most :data:`MAX_REPLAY` bytes.

Flow control is end to end, with the client's HTTP/2 stream window and the
instance connection's windows as the only buffers: client DATA is
acknowledged (WINDOW_UPDATE) only once ``send_data`` on the instance
connection took it, and the instance's DATA is acknowledged only once it left
within the client's window (:class:`_RelaySender`).  A client that stops
reading closes the instance's window, and the instance (grpcio) stops
producing.

The upstream side is the sans-I/O ``h2`` library again, as a client over
plain TCP (h2c, prior knowledge): the same state machine the door runs, no
second HTTP/2 stack in the process, and its callbacks let a DATA frame from
the instance reach ``send_data`` toward the client in the same call stack.
One upstream connection per call: a call's windows are its connection's, an
instance's death fails only the calls on it, and nothing is shared to
drain or poison.

Failures the gateway says itself are trailers-only responses (HTTP 200,
``content-type: application/grpc``, ``grpc-status``, ``grpc-message``) with the
status from the one wire table (``errors.py``'s ``grpc_status``): unknown
endpoint NOT_FOUND, no healthy or reachable instance UNAVAILABLE, every
instance busy RESOURCE_EXHAUSTED, missing credentials UNAUTHENTICATED; an
instance that dies mid-call ends it with UNAVAILABLE and a message naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from bidistream import metrics
from bidistream.contract import check_name
from bidistream.errors import (
    BidistreamError,
    InstanceFullError,
    InternalError,
    NotFoundError,
    ServiceUnavailableError,
)
from bidistream.gateway.auth import authenticate_grpc
from bidistream.gateway.bridge import at_capacity
from bidistream.gateway.grpcwire import (
    ENDPOINT_KEY,
    GRPC_STATUS,
    VARIANT_KEY,
    FirstMessage,
    is_busy,
    model_name_method,
    request_problem,
    split_path,
    trailers_only,
)
from bidistream.gateway.h2front import _Sender, _Stream

if TYPE_CHECKING:
    from bidistream.gateway.h2front import H2Protocol
    from bidistream.routing import RoutableInstance

__all__ = ["MAX_REPLAY", "GrpcCall"]

log = logging.getLogger("bidistream.gateway.grpc")

# Request bytes kept to replay on the next instance while the current one may still
# answer RESOURCE_EXHAUSTED; past it the call stays where it is (no retry).
MAX_REPLAY = 256 * 1024

# Headers that belong to one HTTP/2 hop (RFC 9113 §8.2.2) or that the relay sets itself.
_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_UP_STREAM = 1  # the one stream of an upstream connection
_STATUS_NAMES = {str(n): name for name, n in GRPC_STATUS.items()}


class _RelaySender(_Sender):
    """The door's flow-control writer, telling the call how many bytes left within the window.

    What left is what the instance may send again (its DATA is acknowledged
    upstream only then); the response ends with trailers instead of an empty
    END_STREAM DATA frame.
    """

    __slots__ = ("call", "trailers")

    def __init__(self, proto: H2Protocol, sid: int, call: GrpcCall) -> None:
        super().__init__(proto, sid)
        self.call = call
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def _send_end(self, conn: h2.connection.H2Connection) -> None:
        conn.send_headers(self.sid, self.trailers or [], end_stream=True)

    def _after_pump(self, sent: int) -> None:
        if sent:
            self.call.left(sent)
        if self.ended:
            self.call.response_done()


class GrpcCall(_Stream):
    """One relayed gRPC call: the client's HTTP/2 stream on the door, an :class:`Upstream` per try."""

    wide_window = True

    def __init__(
        self,
        proto: H2Protocol,
        sid: int,
        path: str,
        endpoint: str,
        headers: dict[str, str],
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.proto = proto
        self.sid = sid
        self.path = path
        self.endpoint = endpoint
        self.headers = headers
        self.raw_headers = raw_headers
        self.variant: str | None = None
        self.sender = _RelaySender(proto, sid, self)
        # Request bytes read from the client, not yet taken by the instance connection.
        self.queue = bytearray()
        # Copy of what the current instance took while it may still refuse (None: committed).
        self.replay: bytearray | None = bytearray()
        self.first: FirstMessage | None = None
        self.upstream: Upstream | None = None
        self.input_ended = False  # the client's END_STREAM arrived
        self.responded = False  # response headers sent to the client
        self.finished = False  # the response is over (trailers queued or the stream reset)
        self.gone = False  # the client reset the stream or the connection is gone
        self._candidates: Iterator[RoutableInstance] | None = None
        self._targets: list[RoutableInstance] = []
        self._busy = 0
        self._last: BidistreamError | None = None
        self._task: asyncio.Task[None] | None = None
        self._held = 0  # upstream bytes that left to the client while its transport was paused
        self._began = time.monotonic()
        self._target: RoutableInstance | None = None  # the instance that took the call, for metrics
        self._counted = False

    # ------------------------------------------------------------------ opening
    def start(self) -> None:
        gw = self.proto.ctx
        h = self.headers
        try:
            problem = request_problem(h.get(":method", ""), self.path, h)
            if problem is not None:
                raise problem
            authenticate_grpc(gw.credentials, self.path, h)
            if self.endpoint:
                check_name(self.endpoint, "EndpointName")
            variant = h.get(VARIANT_KEY)
            if variant is not None:
                check_name(variant, "TargetVariant")
                self.variant = variant
        except BidistreamError as exc:
            self.fail(exc)
            return
        self.fast = True
        if self.endpoint:
            self._route()
        elif model_name_method(self.path):
            self.first = FirstMessage()
        else:
            self.fail(
                NotFoundError(
                    f"gRPC call {self.path} names no endpoint: set the metadata key {ENDPOINT_KEY} "
                    "(V2 ModelInfer/ModelStreamInfer/ModelReady calls may name it by model_name instead)"
                )
            )

    def _routed_by_name(self, first: FirstMessage) -> None:
        self.first = None
        if first.name is None:
            self.fail(
                NotFoundError(f"gRPC call {self.path} names no endpoint: {first.reason}; set {ENDPOINT_KEY}")
            )
            return
        try:
            check_name(first.name, "EndpointName")
        except BidistreamError as exc:
            self.fail(NotFoundError(f"model_name {first.name!r} names no endpoint: {exc.message}"))
            return
        self.endpoint = first.name
        self._route()

    def _route(self) -> None:
        try:
            try:
                targets = self.proto.ctx.router.candidates(self.endpoint, self.variant)
            except ServiceUnavailableError:
                metrics.router_decision(self.endpoint, self.variant or "", "", metrics.NO_HEALTHY_INSTANCE)
                raise
        except BidistreamError as exc:
            self.fail(exc)
            return
        self._targets = [t for t in targets if t.grpc_address]
        if targets and not self._targets:
            self._last = ServiceUnavailableError(
                f"no instance of endpoint {self.endpoint} serves gRPC (no gRPC port known for it)"
            )
        self._candidates = iter(self._targets)
        self._next()

    def _next(self) -> None:
        """Connect to the next candidate; once none is left, say why the last one did not take it."""
        if self.finished:
            return
        assert self._candidates is not None
        target = next(self._candidates, None)
        if target is None:
            targets = self._targets
            if targets and self._busy >= len(targets):
                metrics.router_decision(self.endpoint, self.variant or "", "", metrics.BUSY)
                self.fail(InstanceFullError(at_capacity(self.endpoint, targets)))
            else:
                self.fail(
                    self._last
                    or ServiceUnavailableError(f"endpoint {self.endpoint} has no instance to take the call")
                )
            return
        self._task = asyncio.get_running_loop().create_task(self._connect(target))

    async def _connect(self, target: RoutableInstance) -> None:
        host, _, port = target.grpc_address.rpartition(":")
        loop = asyncio.get_running_loop()
        up = Upstream(self, target)
        try:
            async with asyncio.timeout(self.proto.ctx.limits.connect_timeout):
                await loop.create_connection(lambda: up, host.strip("[]"), int(port))
        except asyncio.CancelledError:
            up.close()
            raise
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("instance %s gRPC port unreachable: %s", target.instance_id, exc)
            metrics.router_decision(
                self.endpoint, target.variant, target.instance_id, metrics.RETRY_UNREACHABLE
            )
            self._last = ServiceUnavailableError(
                f"instance {target.instance_id} of endpoint {self.endpoint} is unreachable on its gRPC port "
                f"({type(exc).__name__}); try again later"
            )
            self._next()

    def attached(self, up: Upstream) -> None:
        """The instance connection is open and the request headers are on it."""
        if self.finished:
            up.close()
            return
        self.upstream = up
        self._target = up.target
        self.send_up()

    def retry(self, up: Upstream, why: str) -> None:
        """The instance refused before committing: replay what it took on the next candidate."""
        up.close()
        if self.upstream is up:
            self.upstream = None
        self._target = None
        t = up.target
        self._busy += 1
        metrics.router_decision(self.endpoint, t.variant, t.instance_id, metrics.RETRY_FULL)
        self._last = InstanceFullError(
            f"instance {t.instance_id} of endpoint {self.endpoint} is full ({why})"
        )
        replay = self.replay
        assert replay is not None
        self.queue[:0] = replay
        self.replay = bytearray()
        self._next()

    def upstream_request_headers(self, target: RoutableInstance) -> list[tuple[bytes, bytes]]:
        """The client's headers for the instance: its own pseudo-headers, every metadata entry as sent."""
        out: list[tuple[bytes, bytes]] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", self.path.encode()),
            (b":authority", target.grpc_address.encode()),
        ]
        for key, value in self.raw_headers:
            k = key.lower()
            if k.startswith(b":") or k in _HOP:
                continue
            out.append((k, value))
        return out

    # ------------------------------------------------------------------ client → instance
    def on_data(self, data: bytes, fc_len: int) -> None:
        pad = fc_len - len(data)
        if pad:
            self.proto.ack(self.sid, pad)
        if self.finished:
            self.proto.ack(self.sid, len(data))
            return
        self.queue += data
        first = self.first
        if first is not None and first.feed(data):
            self._routed_by_name(first)

    def after_data(self) -> None:
        if self.upstream is not None:
            self.send_up()

    def on_end(self) -> None:
        self.input_ended = True
        self.fast = False
        first = self.first
        if first is not None:
            first.end()
            self._routed_by_name(first)
        if self.upstream is not None:
            self.send_up()
        self._maybe_done()

    def send_up(self) -> None:
        """Move queued request bytes to the instance within its window; acknowledge what it took."""
        up = self.upstream
        if up is None or self.finished or (not self.queue and (up.ended or not self.input_ended)):
            return  # nothing to move (the instance's WINDOW_UPDATEs arrive once per message)
        taken = up.send(self.queue, self.input_ended)
        if taken:
            replay = self.replay
            if replay is not None:
                replay += self.queue[:taken]
                if len(replay) > MAX_REPLAY:
                    self.replay = None  # too much to replay: the call stays on this instance
            del self.queue[:taken]
            self.proto.ack(self.sid, taken)
            if not self.proto.reading:
                self.proto.schedule_flush()

    # ------------------------------------------------------------------ instance → client
    def on_response(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.replay = None
        if self.finished:
            return
        try:
            self.proto.conn.send_headers(self.sid, [(k, v) for k, v in headers if k not in _HOP])
        except h2.exceptions.ProtocolError:
            return
        self.responded = True
        self.proto.schedule_flush()

    def on_trailers_only(self, up: Upstream, headers: list[tuple[bytes, bytes]]) -> None:
        if self.replay is not None and is_busy(headers):
            self.retry(up, "RESOURCE_EXHAUSTED")
            return
        self.replay = None
        self._end_with([(k, v) for k, v in headers if k not in _HOP])

    def on_data_up(self, data: bytes) -> None:
        self.replay = None
        if self.finished:
            if self.upstream is not None:
                self.upstream.ack(len(data))
            return
        self.sender.write(data)

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._end_with([(k, v) for k, v in headers if k not in _HOP])

    def on_reset_up(self, up: Upstream, code: int) -> None:
        """The instance reset its stream: REFUSED_STREAM before any answer is a retry, else relayed."""
        if self.replay is not None and code == h2.errors.ErrorCodes.REFUSED_STREAM:
            self.retry(up, "stream refused")
            return
        self._count("RST_STREAM")
        self.finished = True
        self._close_upstream()
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.proto.conn.reset_stream(self.sid, code)
        self.proto.schedule_flush()
        self.response_done()

    def on_upstream_lost(self, up: Upstream, exc: Exception | None) -> None:
        if self.finished or self.upstream is not up:
            return
        t = up.target
        detail = f" ({exc})" if exc else ""
        self.fail(
            ServiceUnavailableError(
                f"instance {t.instance_id} of endpoint {self.endpoint} closed the connection "
                f"before the call ended{detail}"
            )
        )

    def left(self, n: int) -> None:
        """``n`` response bytes left within the client's window: the instance may send as many again."""
        if self.proto.write_paused:
            self._held += n
            return
        if self.upstream is not None:
            self.upstream.ack(n)

    # ------------------------------------------------------------------ ending
    def fail(self, error: BidistreamError) -> None:
        """End the call with the gateway's own status: trailers-only, or trailers after the response."""
        if self.finished:
            return
        log.info("gRPC call %s on stream %s: %s", self.path, self.sid, error.message)
        trailers = trailers_only(error)
        if self.responded:
            trailers = trailers[2:]  # after response headers, trailers carry no :status
        self._end_with(trailers)

    def _count(self, status: str) -> None:
        """One sample per call: its final status, where it went (empty when refused before routing)."""
        if self._counted:
            return
        self._counted = True
        t = self._target
        # The method names a label only once an instance served it: any client can make up
        # paths, and each label value is a time series kept forever.
        parts = split_path(self.path)
        served = parts is not None and t is not None and status != "UNIMPLEMENTED"
        method = f"{parts[0]}/{parts[1]}" if parts is not None and served else "other"
        where = (t.endpoint, t.variant, t.instance_id) if t is not None else ("", "", "")
        metrics.grpc_call(*where, method, status, time.monotonic() - self._began)

    def _end_with(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.finished:
            return
        status = next((v.decode("ascii", "replace") for k, v in trailers if k == b"grpc-status"), "")
        self._count(_STATUS_NAMES.get(status, status or "none"))
        self.finished = True
        self.fast = False
        self.first = None
        self.queue.clear()
        if not self.responded and not self.sender.pending:
            try:
                self.proto.conn.send_headers(self.sid, trailers, end_stream=True)
            except h2.exceptions.ProtocolError:
                pass
            self.sender.ended = True
            self.proto.schedule_flush()
            self.response_done()
            return
        self.sender.trailers = trailers
        self.sender.end()

    def response_done(self) -> None:
        """The response is over on the client's stream: stop the client sending, release the instance."""
        self.finished = True
        self._close_upstream()
        if not self.input_ended and not self.gone:
            # RFC 9113 §8.1: the response is complete; the rest of the request is not wanted.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.proto.conn.reset_stream(self.sid, h2.errors.ErrorCodes.NO_ERROR)
            self.input_ended = True
            self.proto.schedule_flush()
        self._maybe_done()

    def _close_upstream(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        up, self.upstream = self.upstream, None
        if up is not None:
            up.close()

    def _maybe_done(self) -> None:
        if self.input_ended and self.sender.ended:
            if self.proto.streams.get(self.sid) is self:
                del self.proto.streams[self.sid]

    def on_reset(self) -> None:
        """The client reset the stream (or its connection is gone): cancel the call on the instance."""
        self.gone = True
        self.input_ended = True
        if not self.finished:
            self._count("CANCELLED")
        self.finished = True
        self.fast = False
        self.sender.ended = True
        self.sender.pending.clear()
        self.queue.clear()
        up = self.upstream
        if up is not None:
            up.cancel()
        self._close_upstream()

    # ------------------------------------------------------------------ windows
    def pump(self) -> None:
        self.sender.pump()

    def on_transport_paused(self) -> None:
        """The client's socket is full: what leaves now is not yet read, so the instance waits."""

    def on_transport_resumed(self) -> None:
        held, self._held = self._held, 0
        if held and self.upstream is not None:
            self.upstream.ack(held)


class Upstream(asyncio.Protocol):
    """One h2c connection to an instance's gRPC port, carrying one call (stream 1)."""

    def __init__(self, call: GrpcCall, target: RoutableInstance) -> None:
        self.call: GrpcCall | None = call
        self.target = target
        self.router = call.proto.ctx.router
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.ended = False  # END_STREAM sent on the request
        self._started = False  # counted as a session on the router
        self._closed = False

    # ------------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        call = self.call
        if call is None or self._closed:
            self.close()
            return
        window = call.proto.limits.stream_window
        conn = self.conn
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        conn.increment_flow_control_window(window)
        conn.send_headers(_UP_STREAM, call.upstream_request_headers(self.target))
        self._flush()
        self.router.session_started(self.target)
        self._started = True
        call.attached(self)

    def data_received(self, data: bytes) -> None:
        try:
            events: list[Any] = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("instance %s: HTTP/2 protocol error: %s", self.target.instance_id, exc)
            call = self.call
            self._flush()
            if call is not None:
                call.on_upstream_lost(self, InternalError(f"HTTP/2 protocol error: {exc}"))
            self.close()
            return
        for ev in events:
            call = self.call
            if call is None:
                break
            t = type(ev)
            if t is h2.events.DataReceived:
                pad = ev.flow_controlled_length - len(ev.data)
                if pad:
                    self.ack(pad)
                call.on_data_up(ev.data)
            elif t is h2.events.ResponseReceived:
                if ev.stream_ended is not None:
                    call.on_trailers_only(self, ev.headers)
                else:
                    call.on_response(ev.headers)
            elif t is h2.events.TrailersReceived:
                call.on_trailers(ev.headers)
            elif t is h2.events.StreamEnded:
                # After trailers (or a trailers-only answer) the call is already over; an end
                # without them is no gRPC answer, and the client must not wait for one.
                who = self.target.instance_id
                call.fail(InternalError(f"instance {who} ended the call without trailers"))
            elif t is h2.events.WindowUpdated or t is h2.events.RemoteSettingsChanged:
                call.send_up()
            elif t is h2.events.StreamReset:
                call.on_reset_up(self, ev.error_code)
            elif t is h2.events.ConnectionTerminated:
                if (
                    ev.last_stream_id is not None
                    and ev.last_stream_id < _UP_STREAM
                    and call.replay is not None
                ):
                    call.retry(self, "connection refused the call (GOAWAY)")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._release()
        call, self.call = self.call, None
        if call is not None:
            call.on_upstream_lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.call is not None:
            self.call.send_up()

    # ------------------------------------------------------------------ the call's side
    def send(self, queue: bytearray, end: bool) -> int:
        """Send from ``queue`` what the windows allow (END_STREAM after the last byte); bytes taken."""
        if self.paused or self.ended or self._closed:
            return 0
        conn = self.conn
        taken = 0
        try:
            while taken < len(queue):
                window = min(conn.local_flow_control_window(_UP_STREAM), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(queue[taken : taken + window])
                conn.send_data(_UP_STREAM, chunk)
                taken += len(chunk)
            if end and taken == len(queue):
                conn.end_stream(_UP_STREAM)
                self.ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.ended = True
        self._flush()
        return taken

    def ack(self, n: int) -> None:
        if n and not self._closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(n, _UP_STREAM)
            self._flush()

    def cancel(self) -> None:
        """The client went away: RST_STREAM(CANCEL), as a gRPC client's cancellation says it."""
        if not self._closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(_UP_STREAM, h2.errors.ErrorCodes.CANCEL)
            self._flush()

    def close(self) -> None:
        self.call = None
        self._closed = True
        self._release()
        if self.transport is not None:
            self.transport.close()

    def _release(self) -> None:
        if self._started:
            self._started = False
            self.router.session_ended(self.target)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
