"""The HTTP/2 front door: an asyncio Protocol driving the sans-I/O ``h2`` state machine.

Chosen over hypercorn because it was the cheapest full-duplex server measured
(17.6 µs per echoed chunk against hypercorn's 20.5 µs, transport bench) and
because it lets a relayed frame go from the instance's WebSocket callback to
``send_data`` in one call stack, with no ASGI queue or task per chunk.

Each ``InvokeEndpointWithBidirectionalStream`` stream is a :class:`BidiStream`:

* request DATA is cut into events by length prefix, unwrapped, its signature
  chain checked (when SigV4 is on) and each PayloadPart sent on the instance
  WebSocket (UTF8 → text, BINARY/absent → binary, PARTIAL → FIN=0);
* client data is acknowledged (HTTP/2 WINDOW_UPDATE) only while the instance
  socket is writable, so a slow instance closes the client's window; acks are
  computed once per socket read, and a read carrying several events for one
  stream corks the instance socket so they leave in one segment;
* instance frames become PayloadPart events written within the client's
  stream window; events relayed in one loop turn share DATA frames (one h2
  ``send_data`` and one TLS write per turn, not per event); above
  ``high_water`` queued bytes the instance socket's reads pause until the
  client's WINDOW_UPDATEs drain the queue;
* the response ends with END_STREAM (never RST_STREAM): after the instance's
  close, with a ``ModelStreamError`` event first if it closed with an error
  code, or ``InternalStreamFailure`` for a gateway fault.

Other requests (InvokeEndpoint, the control plane) are read whole and handed to
the gateway's handler, whose :class:`HttpResponse` is written back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame

from bidistream.contract import check_invocation_path, check_name, check_query
from bidistream.errors import (
    BidistreamError,
    InputValidationError,
    MessageTooLargeError,
    wire_form,
)
from bidistream.eventstream import (
    EventStreamDecoder,
    encode_internal_stream_failure,
    encode_model_stream_error,
    encode_payload_part,
    unwrap,
)
from bidistream.gateway.bridge import Relay
from bidistream.gateway.h2limits import BodyBudget, FrameGuard, Violation, request_header_problem
from bidistream.gateway.http import Api, HttpResponse, error_response, new_request_id
from bidistream.gateway.routes import RouteKind, classify
from bidistream.session.events import (
    ClientBlocked,
    ClientBytes,
    ClientEnded,
    ClientFailed,
    ClientGone,
    ClientWritable,
)
from bidistream.sigv4 import EventChain, verify_request

if TYPE_CHECKING:
    from bidistream.gateway.context import DoorContext

__all__ = ["H2Protocol"]

log = logging.getLogger("bidistream.gateway.h2")


# Relay DATA frames of open bidi streams without h2's frame objects (see H2Protocol._cut).
FAST_DATA = True
_PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NOT_FAST = 0x1 | 0x8  # END_STREAM, PADDED: h2 handles those frames
_STREAM_OPEN = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)
# Where h2's SEND_DATA is a no-op transition (no side effect, same state): the send fast path.
_CONN_SEND_OPEN = (h2.connection.ConnectionState.SERVER_OPEN, h2.connection.ConnectionState.CLIENT_OPEN)
_STREAM_SEND_OPEN = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE)


def _charge(conn: h2.connection.H2Connection, sid: int, length: int) -> bool:
    """Charge a DATA frame to h2's receive windows as h2 would; False if h2 must see it.

    This reads h2's own window managers (pinned h2 4.4.1; the unit test
    compares with h2's path byte for byte, so an h2 change that breaks it fails
    there): the connection must not be CLOSED, the stream OPEN (or half-closed by
    us) with no declared content-length, and both windows must cover the frame.
    """
    if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
        return False
    stream = conn.streams.get(sid)
    if stream is None or stream.state_machine.state not in _STREAM_OPEN:
        return False
    if stream._expected_content_length is not None:
        return False
    cwin = conn._inbound_flow_control_window_manager
    swin = stream._inbound_window_manager
    if cwin.current_window_size < length or swin.current_window_size < length:
        return False  # a flow-control violation: h2 answers it
    cwin.window_consumed(length)
    swin.window_consumed(length)
    return True


def _send_fast(conn: h2.connection.H2Connection, sid: int, pending: bytearray) -> int:
    """Frame ``pending`` as DATA without h2's frame objects; bytes sent (-1: h2 must send).

    The mirror of :func:`_charge`: ``send_data`` builds a ``DataFrame``, runs two
    state machines whose ``SEND_DATA`` transitions change nothing in these
    states, serializes, and subtracts the length from both send windows — 8-12
    µs per frame, about a tenth of a relayed reply.  Here the same bytes go to
    h2's outbound buffer and the same windows are charged (pinned h2 4.4.1; the
    unit test compares both paths byte for byte and window for window).
    """
    if conn.state_machine.state not in _CONN_SEND_OPEN:
        return -1
    stream = conn.streams.get(sid)
    if stream is None or stream.state_machine.state not in _STREAM_SEND_OPEN:
        return -1
    out = conn._data_to_send
    tail = b"\x00\x00" + sid.to_bytes(4, "big")  # type DATA, no flags, stream id
    frame_max = conn.max_outbound_frame_size
    sent = 0
    while pending:
        window = min(conn.outbound_flow_control_window, stream.outbound_flow_control_window, frame_max)
        if window <= 0:
            break
        n = min(window, len(pending))
        out += n.to_bytes(3, "big")
        out += tail
        if n == len(pending):
            out += pending
            pending.clear()
        else:
            out += pending[:n]
            del pending[:n]
        conn.outbound_flow_control_window -= n
        stream.outbound_flow_control_window -= n
        sent += n
    return sent


def _brief_frame_repr(frame: hyperframe.frame.Frame) -> str:
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


# h2 builds ``repr(frame)`` for every frame it receives, as the argument of a
# trace log that is off (``H2Configuration``'s logger only decides whether the
# string is used, not whether it is built).  hyperframe's repr formats the
# flags and a hex dump of the body: 5-16 µs per DATA frame measured here, a
# tenth of the gateway's CPU per relayed pair.  The gateway owns its process,
# so frames get a short repr (type and stream id) instead.
hyperframe.frame.Frame.__repr__ = _brief_frame_repr  # type: ignore[method-assign]


class H2Protocol(asyncio.Protocol):
    """One client connection speaking HTTP/2 (ALPN ``h2``)."""

    def __init__(self, ctx: DoorContext) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.write_paused = False
        self._flush_pending = False
        # Senders written to since the last flush; their bytes leave in as few
        # DATA frames as the window and frame size allow.
        self._dirty: list[_Sender] = []
        self.closed = False
        # True while a read's events are handled: its flush at the end sends everything.
        self.reading = False
        self._loop = loop = asyncio.get_running_loop()
        lim = self.limits
        # Connection-level accounting (h2limits): frame sizes, control-frame rates,
        # stalled frames, buffered request bodies.
        self.guard = FrameGuard(
            max_frame_size=self.conn.max_inbound_frame_size,
            control_frames_per_second=lim.control_frames_per_second,
            control_frame_burst=lim.control_frame_burst,
            window_updates_per_second=lim.window_updates_per_second,
            window_update_burst=lim.window_update_burst,
            frame_timeout=lim.frame_timeout,
            now=loop.time(),
        )
        self.bodies = BodyBudget(lim.max_connection_bodies)
        self._stall_timer: asyncio.TimerHandle | None = None
        self._shut_down = False
        # The client preface goes to h2 as is; after it, frames are cut here (see _cut).
        self._preface_left = _PREFACE_LEN
        self._in = bytearray()
        # Set when a frame declares more than h2 accepts: from then on h2 sees raw bytes
        # and fails the connection the way it does.
        self._raw = not FAST_DATA

    # ------------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        conn = self.conn
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_streams})
        # Per-stream windows do the real limiting; keep the shared one out of the way.
        conn.increment_flow_control_window(2**31 - 1 - 65535)
        self.ctx.connections.add(self)
        self.transport.write(conn.data_to_send())
        self._arm_stall_timer()

    def data_received(self, data: bytes) -> None:
        """One read: frames cut here, DATA of open bidi streams relayed directly, the rest through h2.

        Connection-level limits (h2limits' FrameGuard: frame sizes, control-frame
        rates, stalls) see every byte first.
        """
        if self._shut_down:
            return
        guard = self.guard
        violation = guard.feed(data, self._loop.time())
        if violation is not None:
            self._violated(violation)
            return
        if self._stall_timer is None and guard.incomplete:
            self._arm_stall_timer()
        fed: list[_Stream] = []
        self.reading = True
        try:
            if self._raw:
                self._to_h2(data, fed)
            else:
                if self._preface_left:
                    head = data[: self._preface_left]
                    self._preface_left -= len(head)
                    data = data[len(head) :]
                    if not self._to_h2(head, fed) or not data:
                        return
                self._cut(data, fed)
        finally:
            self.reading = False
            for st in fed:
                try:
                    st.after_data()
                except Exception:
                    log.exception("HTTP/2 stream failed after its data")
            self.flush()

    def _to_h2(self, data: bytes | bytearray | memoryview, fed: list[_Stream]) -> bool:
        """Bytes through h2's state machine; False once the connection failed."""
        try:
            events: list[Any] = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error from client: %s", exc)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            self._raw = True
            return False
        self.handle_events(events, fed)
        return True

    def _cut(self, data: bytes, fed: list[_Stream]) -> None:
        """Cut complete frames; the DATA of an open bidi stream skips h2's frame machinery.

        h2 costs 10-15 µs to turn one DATA frame into a ``DataReceived`` event
        (frame objects, flags, two state machines); a relayed pair is ~50 µs in
        all.  For a DATA frame on a bidi stream h2 holds OPEN, without padding
        or END_STREAM, within both receive windows and the frame size, the
        bytes go straight to the stream, and h2's two receive windows are
        charged exactly as h2 charges them (so its WINDOW_UPDATEs stay right).
        Any other frame, and any DATA frame that misses one condition, goes
        through h2 in order.  ``tests/unit/gateway/test_h2front.py`` checks
        both paths produce the same bytes on the wire.
        """
        buf = self._in
        if buf:
            buf += data
            view = memoryview(buf)
        else:
            view = memoryview(data)
        end = len(view)
        pos = 0
        h2_from = 0
        conn = self.conn
        streams = self.streams
        max_len = conn.max_inbound_frame_size
        while end - pos >= 9:
            length = (view[pos] << 16) | (view[pos + 1] << 8) | view[pos + 2]
            if length > max_len:
                # h2 refuses it (FRAME_SIZE_ERROR); it sees everything from here on.
                self._raw = True
                view.release()
                rest = bytes((buf if buf else data)[h2_from:])
                buf.clear()
                self._to_h2(rest, fed)
                return
            nxt = pos + 9 + length
            if nxt > end:
                break
            if view[pos + 3] == 0 and not view[pos + 4] & _NOT_FAST and length:
                if h2_from < pos:
                    # What came before goes first (it may open this very stream).
                    if not self._to_h2(view[h2_from:pos], fed):
                        view.release()
                        buf.clear()
                        return
                    h2_from = pos
                sid = int.from_bytes(view[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                st = streams.get(sid)
                if st is not None and st.fast and _charge(conn, sid, length):
                    if st not in fed:
                        fed.append(st)
                    elif fed[-1] is st:
                        st.more_data()
                    st.on_data(bytes(view[pos + 9 : nxt]), length)
                    h2_from = nxt
            pos = nxt
        if h2_from < pos:
            ok = self._to_h2(view[h2_from:pos], fed)
        else:
            ok = True
        left = bytes(view[pos:]) if ok and pos < end else b""
        view.release()
        buf.clear()
        if left:
            buf += left

    def handle_events(self, events: list[Any], fed: list[_Stream]) -> None:
        """Handle one read's events, each against its stream's state at that point.

        A read may carry HEADERS and RST_STREAM (or GOAWAY) for the same
        stream: h2 has closed that stream before we see its HEADERS, so every
        step tolerates a stream h2 already closed, and an error in one stream's
        handling resets that stream only — never its neighbours (issue 10.3).
        """
        streams = self.streams
        # ``fed``: streams that took DATA in this read, acknowledged once at its end,
        # so a read carrying many events costs one window computation, not one each.
        for ev in events:
            try:
                t = type(ev)
                if t is h2.events.DataReceived:
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        if fed and fed[-1] is st:
                            st.more_data()
                        elif st not in fed:
                            fed.append(st)
                        st.on_data(ev.data, ev.flow_controlled_length)
                    else:
                        with contextlib.suppress(
                            h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError
                        ):
                            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif t is h2.events.WindowUpdated:
                    if ev.stream_id == 0:
                        for st in list(streams.values()):
                            st.pump()
                    else:
                        st = streams.get(ev.stream_id)
                        if st is not None:
                            st.pump()
                elif t is h2.events.RequestReceived:
                    self._on_request(ev.stream_id, ev.headers, ev.stream_ended is not None)
                elif t is h2.events.StreamEnded:
                    st = streams.get(ev.stream_id)
                    if st is not None:
                        st.on_end()
                elif t is h2.events.StreamReset:
                    st = streams.pop(ev.stream_id, None)
                    if st is not None:
                        st.on_reset()
                elif t is h2.events.RemoteSettingsChanged:
                    for st in list(streams.values()):
                        st.pump()
                elif t is h2.events.ConnectionTerminated:
                    # GOAWAY: h2 sends nothing more on this connection, so every
                    # stream ends here as if reset; its instance is closed.
                    self._end_all_streams()
                    self.flush()
                    if self.transport is not None:
                        self.transport.close()
            except Exception:
                sid = getattr(ev, "stream_id", 0)
                log.exception("HTTP/2 stream %s failed handling %s", sid, type(ev).__name__)
                if sid:
                    self._reset_stream(sid)

    def _reset_stream(self, sid: int) -> None:
        """One stream failed in our own code: reset it alone (INTERNAL_ERROR)."""
        st = self.streams.pop(sid, None)
        with contextlib.suppress(Exception):
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        if st is not None:
            with contextlib.suppress(Exception):
                st.on_reset()

    def _end_all_streams(self) -> None:
        streams, self.streams = self.streams, {}
        for st in streams.values():
            try:
                st.on_reset()
            except Exception:
                log.exception("HTTP/2 stream failed while the connection ended")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self.ctx.connections.discard(self)
        self._end_all_streams()

    def pause_writing(self) -> None:
        self.write_paused = True
        for st in self.streams.values():
            st.on_transport_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.streams.values()):
            st.on_transport_resumed()

    # ------------------------------------------------------------------ connection limits
    def _arm_stall_timer(self) -> None:
        deadline = self.guard.deadline()
        if deadline is not None and not self.closed:
            self._stall_timer = self._loop.call_at(deadline, self._stall_check)

    def _stall_check(self) -> None:
        self._stall_timer = None
        violation = self.guard.check(self._loop.time())
        if violation is not None:
            self._violated(violation)
        else:
            self._arm_stall_timer()  # a later frame is pending: its own deadline

    def _violated(self, violation: Violation) -> None:
        """End the connection for a limit: GOAWAY with the code, then close (abort if it lingers)."""
        log.info("HTTP/2 connection closed: %s", violation.message)
        self._shut_down = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(error_code=violation.code, additional_data=violation.message.encode())
        self.flush()
        transport = self.transport
        if transport is not None:
            transport.close()
            self._loop.call_later(self.limits.close_grace, transport.abort)

    # ------------------------------------------------------------------ writing
    def flush(self) -> None:
        self._flush_pending = False
        if self._dirty:
            dirty, self._dirty = self._dirty, []
            for sender in dirty:
                sender.pump()
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Coalesce writes: many frames relayed in one loop turn leave in one TLS write."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.flush)

    def close_gracefully(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ routing
    def _on_request(self, sid: int, raw_headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        problem = request_header_problem(raw_headers)
        if problem is not None:
            # RFC 9113 §8.1.1: a malformed request is a stream error; neighbours live on.
            log.info("stream %s: malformed request: %s", sid, problem)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        headers: dict[str, str] = {}
        for k, v in raw_headers:
            key = k.decode("ascii", "replace").lower()
            val = v.decode("utf-8", "replace")
            headers[key] = f"{headers[key]},{val}" if key in headers else val
        st = self._open_stream(sid, headers, raw_headers)
        self.streams[sid] = st
        # Open the stream's receive window with an explicit WINDOW_UPDATE: awscrt
        # does not apply a larger SETTINGS_INITIAL_WINDOW_SIZE to a stream it has
        # already opened, and stalls at 64 KiB.  The stream may already be closed
        # by a RST_STREAM later in this same read: then there is no window to open.
        # InvokeEndpoint bodies keep the default window: BodyBudget acknowledges them.
        extra = self.limits.stream_window - 65535
        if extra > 0 and not ended and st.wide_window:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.increment_flow_control_window(extra, sid)
        st.start()
        if ended:
            st.on_end()

    def _open_stream(
        self, sid: int, headers: dict[str, str], raw_headers: list[tuple[bytes, bytes]]
    ) -> _Stream:
        """The one place a new stream gets its handler (the gRPC relay hooks in here)."""
        method = headers.get(":method", "")
        path, _, query = headers.get(":path", "/").partition("?")
        route = classify(method, path, headers)
        if route.kind is RouteKind.BIDI:
            return BidiStream(self, sid, path, route.endpoint, query, headers)
        if route.kind is RouteKind.GRPC:
            # Imported here: the relay's module builds on this one's _Stream and _Sender.
            from bidistream.gateway.grpcrelay import GrpcCall

            return GrpcCall(self, sid, headers.get(":path", "/"), route.endpoint, headers, raw_headers)
        return RequestStream(self, sid, method, path, query, headers)

    # ------------------------------------------------------------------ helpers for streams
    def ack(self, sid: int, n: int) -> None:
        """Hand ``n`` flow-controlled bytes of ``sid`` back (for a closed stream, the connection's share)."""
        if n:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(n, sid)

    def send_headers(self, sid: int, status: int, headers: list[tuple[str, str]], end: bool = False) -> None:
        self.conn.send_headers(sid, [(":status", str(status)), *headers], end_stream=end)


class _Stream:
    """Common surface of a stream handler."""

    # True while this stream's DATA may skip h2's frame objects (H2Protocol._cut).
    fast = False
    # True when the stream's receive window is opened to ``limits.stream_window``
    # (streamed requests; InvokeEndpoint bodies keep the default, BodyBudget acknowledges them).
    wide_window = False

    def start(self) -> None: ...

    def on_data(self, data: bytes, fc_len: int) -> None: ...

    def more_data(self) -> None:
        """A second DATA frame for this stream in the same read: a burst is coming."""

    def after_data(self) -> None:
        """End of a read that fed this stream DATA (acknowledge it now if due)."""

    def on_end(self) -> None: ...

    def on_reset(self) -> None: ...

    def pump(self) -> None: ...

    def on_transport_paused(self) -> None: ...

    def on_transport_resumed(self) -> None: ...


class _Sender:
    """Writes one stream's response bytes within the client's flow-control window."""

    __slots__ = ("_end_after", "ended", "pending", "proto", "sid")

    def __init__(self, proto: H2Protocol, sid: int) -> None:
        self.proto = proto
        self.sid = sid
        self.pending = bytearray()
        self.ended = False
        self._end_after = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; it leaves at the next flush (same loop turn) or window update.

        Events relayed in one turn share DATA frames: framing a DATA frame in
        h2 costs more than the event inside it, and HTTP/2 frames need not
        line up with events (the client cuts events by their length prefix).
        """
        if self.ended:
            return
        pending = self.pending
        if not pending:
            proto = self.proto
            proto._dirty.append(self)
            if not proto._flush_pending:
                proto.schedule_flush()
        pending += data

    def end(self) -> None:
        self._end_after = True
        self.pump()

    def pump(self) -> bool:
        """Send what the window allows; True when nothing is left queued."""
        if self.ended:
            return True
        conn = self.proto.conn
        pending = self.pending
        sent = 0
        try:
            if FAST_DATA and pending:
                sent = max(0, _send_fast(conn, self.sid, pending))
            while pending:
                window = min(conn.local_flow_control_window(self.sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(pending[:window])
                del pending[:window]
                conn.send_data(self.sid, chunk)
                sent += len(chunk)
            if not pending and self._end_after:
                self._send_end(conn)
                self.ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.ended = True
            pending.clear()
            self._after_pump(0)
            return True
        if sent or self.ended:
            self.proto.schedule_flush()
        self._after_pump(sent)
        return not pending

    def _send_end(self, conn: h2.connection.H2Connection) -> None:
        """How the response ends once everything queued has left (a subclass may send trailers)."""
        conn.end_stream(self.sid)

    def _after_pump(self, sent: int) -> None:
        """``sent`` bytes left within the window (``self.ended`` says whether the response is done)."""


class BidiStream(_Stream):
    """One InvokeEndpointWithBidirectionalStream session: the HTTP/2 adapter of the session core.

    It translates h2 events into session events (parts decoded from the event
    stream, bytes per read, END_STREAM, RST_STREAM) and carries out the
    session's client-side actions (status and headers, PayloadPart events,
    WINDOW_UPDATE, END_STREAM); the :class:`~bidistream.gateway.bridge.Relay`
    carries out the rest.  HTTP/2 needs no read pausing per stream: holding
    back the acknowledgement closes the client's window.
    """

    wide_window = True
    __slots__ = (
        "blocked",
        "chain",
        "decoder",
        "endpoint",
        "failed",
        "fast",
        "fed",
        "headers",
        "input_ended",
        "path",
        "proto",
        "query",
        "relay",
        "request_id",
        "sender",
        "sid",
    )

    def __init__(
        self, proto: H2Protocol, sid: int, path: str, endpoint: str, query: str, headers: dict[str, str]
    ) -> None:
        self.proto = proto
        self.sid = sid
        self.path = path
        self.query = query
        self.headers = headers
        self.endpoint = endpoint
        self.decoder = EventStreamDecoder(proto.limits.max_event_size)
        self.sender = _Sender(proto, sid)
        self.chain: EventChain | None = None
        self.relay: Relay | None = None
        self.input_ended = False
        self.failed = False
        # Flow-controlled bytes of this read, reported to the session once at its end.
        self.fed = 0
        # Whether the session was told the client's queue is over high water.
        self.blocked = False
        self.fast = False
        self.request_id = new_request_id()

    # ------------------------------------------------------------------ opening
    def start(self) -> None:
        gw = self.proto.ctx
        h = self.headers
        try:
            check_name(self.endpoint, "EndpointName")
            variant = h.get("x-amzn-sagemaker-target-variant")
            if variant is not None:
                check_name(variant, "TargetVariant")
            inv_path = h.get("x-amzn-sagemaker-model-invocation-path")
            if inv_path is not None:
                check_invocation_path(inv_path)
            mquery = h.get("x-amzn-sagemaker-model-query-string")
            if mquery is not None:
                check_query(mquery, lenient=gw.limits.lenient_query)
            if gw.credentials.enabled:
                self.chain = EventChain(verify_request(gw.credentials, "POST", self.path, self.query, h))
        except BidistreamError as exc:
            self.failed = True
            self.refuse(exc)
            return
        upstream_headers = {
            "X-Amzn-SageMaker-Request-Id": self.request_id,
            "X-Amzn-SageMaker-Endpoint-Name": self.endpoint,
        }
        if variant is not None:
            upstream_headers["X-Amzn-SageMaker-Target-Variant"] = variant
        self.relay = Relay(
            self,
            gw.router,
            gw.limits,
            gw.ticker,
            endpoint=self.endpoint,
            variant=variant,
            path=inv_path,
            query=mquery,
            headers=upstream_headers,
        )
        self.fast = True
        self.relay.start()

    # ------------------------------------------------------------------ client → session
    def on_data(self, data: bytes, fc_len: int) -> None:
        relay = self.relay
        if relay is None or self.failed:
            self._ack_now(fc_len)
            return
        self.fed += fc_len
        try:
            for raw in self.decoder.feed(data):
                ev = unwrap(raw)
                chain = self.chain
                if chain is not None:
                    if ev.signature is None or ev.date_header is None or ev.date_ms is None:
                        raise InputValidationError("unsigned event on a signed stream")
                    chain.verify(ev.date_header, ev.date_ms, ev.inner, ev.signature)
                part = ev.part
                if part is None:
                    continue  # client 0.12's final empty envelope; END_STREAM follows
                relay.client_part(part.data, part.data_type == "UTF8", part.completion_state != "PARTIAL")
        except BidistreamError as exc:
            self._input_error(exc)

    def _ack_now(self, n: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.proto.conn.acknowledge_received_data(n, self.sid)

    def more_data(self) -> None:
        relay = self.relay
        if relay is not None and relay.link is not None:
            relay.link.cork()

    def after_data(self) -> None:
        relay = self.relay
        if relay is None:
            return
        link = relay.link
        if link is not None and link.corked:
            link.uncork()
        n, self.fed = self.fed, 0
        if n:
            relay.feed(ClientBytes(n))

    def _input_error(self, exc: BidistreamError) -> None:
        log.info("stream %s: bad input: %s", self.sid, exc)
        self.failed = True
        self.fast = False
        if self.relay is not None:
            self.relay.feed(ClientFailed(exc))

    def on_end(self) -> None:
        self.input_ended = True
        self.fast = False
        if not self.failed:
            try:
                self.decoder.finish()
            except BidistreamError as exc:
                self._input_error(exc)
        if self.relay is not None and not self.failed:
            self.relay.feed(ClientEnded())
        self._maybe_done()

    def on_reset(self) -> None:
        """Client reset the stream or the connection is gone: the session closes the instance."""
        self.input_ended = True
        self.fast = False
        self.sender.ended = True
        self.sender.pending.clear()
        if self.relay is not None:
            self.relay.feed(ClientGone())

    def _maybe_done(self) -> None:
        if self.input_ended and self.sender.ended:
            self.proto.streams.pop(self.sid, None)

    # ------------------------------------------------------------------ window and buffers
    def pump(self) -> None:
        done = self.sender.pump()
        if self.blocked and len(self.sender.pending) < self.proto.limits.high_water // 4:
            if not self.proto.write_paused:
                self.blocked = False
                if self.relay is not None:
                    self.relay.feed(ClientWritable())
        if done:
            self._maybe_done()

    def on_transport_paused(self) -> None:
        if not self.blocked and self.relay is not None:
            self.blocked = True
            self.relay.feed(ClientBlocked())

    def on_transport_resumed(self) -> None:
        if self.blocked and len(self.sender.pending) < self.proto.limits.high_water // 4:
            self.blocked = False
            if self.relay is not None:
                self.relay.feed(ClientWritable())

    # ------------------------------------------------------------------ session → client
    def accept(self, variant: str) -> None:
        try:
            self.proto.send_headers(
                self.sid,
                200,
                [
                    ("content-type", "application/vnd.amazon.eventstream"),
                    ("x-amzn-requestid", self.request_id),
                    ("x-amzn-invoked-production-variant", variant),
                ],
            )
        except h2.exceptions.ProtocolError:
            return
        self.proto.schedule_flush()

    def refuse(self, error: BidistreamError) -> None:
        """Fail before the response started: the HTTP status the client turns into an exception."""
        resp = error_response(error, Api.BIDI, self.request_id)
        assert isinstance(resp.body, bytes)
        try:
            self.proto.send_headers(self.sid, resp.status, resp.headers)
        except h2.exceptions.ProtocolError:
            return
        self.sender.write(resp.body)
        self.sender.end()
        self._maybe_done()

    def end(self, error: BidistreamError | None) -> None:
        """The response ends with END_STREAM (never RST_STREAM), after the error event if any."""
        if error is not None:
            if wire_form(error).stream_event == "ModelStreamError":
                self.sender.write(encode_model_stream_error(error.message, error.code))
            else:
                self.sender.write(encode_internal_stream_failure(error.message))
        self.sender.end()
        self._maybe_done()

    def send(self, data: bytes, text: bool, fin: bool, cont: bool) -> None:
        sender = self.sender
        sender.write(encode_payload_part(data, text=text, complete=fin))
        if not self.blocked and len(sender.pending) > self.proto.limits.high_water and self.relay is not None:
            self.blocked = True
            self.relay.feed(ClientBlocked())

    def send_last(self, data: bytes, text: bool) -> None:
        """Write now rather than a loop turn later: one epoll round less per reply.

        Frames of one instance read still share a write (only the last one
        flushes, taking what the others queued); inside the door's own read the
        flush at its end does it.  A flush already scheduled finds nothing left.
        """
        proto = self.proto
        if proto.reading:
            self.send(data, text, True, False)
            return
        pending = proto._flush_pending
        proto._flush_pending = True  # what send() queues leaves in this flush, not a scheduled one
        try:
            self.send(data, text, True, False)
        finally:
            proto.flush()
            proto._flush_pending = pending  # the scheduled call still runs: it must see a flush due

    def ack(self, n: int) -> None:
        self._ack_now(n)
        proto = self.proto
        if not proto.reading and not proto._flush_pending:
            proto.schedule_flush()  # an ack from an instance callback leaves this turn too

    def pause_reads(self) -> None:
        """Nothing to do: unacknowledged bytes close this stream's window on their own."""

    def resume_reads(self) -> None:
        """Nothing to do: the acknowledgement reopens the window."""


class RequestStream(_Stream):
    """Any other request: read the body whole, call the gateway's handler, write its answer."""

    def __init__(
        self, proto: H2Protocol, sid: int, method: str, path: str, query: str, headers: dict[str, str]
    ) -> None:
        self.proto = proto
        self.sid = sid
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = bytearray()
        self.sender = _Sender(proto, sid)
        self.task: asyncio.Task[None] | None = None
        self.too_large = False
        self._drained: asyncio.Event | None = None
        self._budgeted = False  # counted in the connection's BodyBudget (from the first DATA on)

    def on_data(self, data: bytes, fc_len: int) -> None:
        proto = self.proto
        if not self._budgeted and not self.body and not self.too_large:
            cap = proto.limits.max_invoke_body
            declared = self.headers.get("content-length", "")
            proto.bodies.open(self.sid, min(int(declared), cap) if declared.isdigit() else cap)
            self._budgeted = True
        if self.too_large or len(self.body) + len(data) > proto.limits.max_invoke_body:
            self.too_large = True
            self.body = bytearray()
            self._release()
            proto.ack(self.sid, fc_len)  # dropped, not kept: nothing to hold back
            return
        self.body += data
        proto.ack(self.sid, proto.bodies.hold(self.sid, fc_len) if self._budgeted else fc_len)

    def _release(self) -> None:
        """The body is consumed (or dropped): give its reservation back, admit who waited."""
        if self._budgeted:
            self._budgeted = False
            for sid, n in self.proto.bodies.release(self.sid):
                self.proto.ack(sid, n)

    def on_end(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        gw = self.proto.ctx
        if self.too_large:
            resp = error_response(
                MessageTooLargeError(f"request body exceeds {self.proto.limits.max_invoke_body} bytes"),
                Api.RUNTIME,
            )
        else:
            body, self.body = bytes(self.body), bytearray()
            try:
                resp = await gw.handle_http(self.method, self.path, self.query, self.headers, body)
            finally:
                self._release()
                self.proto.flush()
        await self.write_response(resp)

    async def write_response(self, resp: HttpResponse) -> None:
        if self.proto.closed:
            return
        headers = [(k.lower(), v) for k, v in resp.headers if k.lower() not in _H2_FORBIDDEN]
        body = resp.body
        try:
            if isinstance(body, bytes):
                self.proto.send_headers(self.sid, resp.status, headers, end=not body)
                if body:
                    self.sender.write(body)
                    self.sender.end()
                self.proto.flush()
                return
            self.proto.send_headers(self.sid, resp.status, headers)
            self.proto.flush()
            await self._stream_body(body)
        except h2.exceptions.ProtocolError:
            return

    async def _stream_body(self, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                if self.sender.ended:
                    break
                self.sender.write(chunk)
                self.proto.flush()
                while len(self.sender.pending) > self.proto.limits.high_water and not self.sender.ended:
                    self._drained = asyncio.Event()
                    await self._drained.wait()
        finally:
            aclose: Callable[[], object] | None = getattr(body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()  # type: ignore[misc]
        self.sender.end()
        self.proto.flush()

    def pump(self) -> None:
        self.sender.pump()
        if self._drained is not None:
            self._drained.set()

    def on_reset(self) -> None:
        self.sender.ended = True
        self._release()
        if self._drained is not None:
            self._drained.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()


_H2_FORBIDDEN = frozenset({"connection", "transfer-encoding", "keep-alive", "upgrade", "proxy-connection"})
