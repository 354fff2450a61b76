"""The bridge (SageMaker's sidecar): one WebSocket per session to the chosen instance.

picows was chosen for this hop: in the transport benchmark it cost 4-10 µs per
message as a client against websockets' 14-21 µs, and the relay prototype built
on it (h2 + picows callbacks) measured 27.7 µs per relayed pair against 36.6 µs
with websockets.  Its callback API also lets the front door relay a frame in the
same call stack it arrived in: no task, no queue per frame.

A front door implements :class:`Downstream`; the :class:`Upstream` listener
calls it for every instance frame and once when the instance is gone.
Backpressure goes both ways without queues growing: the front door pauses this
socket's reads when the client is slow (``pause_reading``), and this socket's
``pause_writing`` tells the front door to stop acknowledging client data.

Keepalive is one timer for all sessions (:class:`PingTicker`) rather than one
per session: every ``ping_interval`` each upstream gets a ping and counts one
miss; a pong resets the count; ``missed_pongs`` misses close the session with
``ModelStreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import quote

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from bidistream import metrics
from bidistream.errors import (
    BidistreamError,
    InstanceFullError,
    InternalError,
    ModelRefusedError,
    ModelStreamError,
    PingTimeoutError,
    ServiceUnavailableError,
    error_from_close,
    wire_form,
)
from bidistream.gateway.limits import GatewayLimits
from bidistream.metrics import GATEWAY, SessionMeter
from bidistream.model import DEFAULT_INVOCATION_PATH
from bidistream.routing import RoutableInstance, Router

__all__ = ["Downstream", "PingTicker", "Upstream", "open_upstream"]

log = logging.getLogger("bidistream.gateway.bridge")

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE
_MAX_REASON = 123
# The session id the front doors forward to the instance (its logs carry the same id).
SESSION_HEADER = "X-Amzn-SageMaker-Request-Id"


class Downstream(Protocol):
    """What the bridge needs from a front door (HTTP/2 stream or WebSocket)."""

    def on_upstream_frame(self, data: bytes, text: bool, fin: bool) -> None: ...

    def on_upstream_closed(self, error: BidistreamError | None) -> None: ...

    def on_upstream_writable(self) -> None: ...


def _reason(text: str) -> bytes:
    data = text.encode("utf-8")
    return data if len(data) <= _MAX_REASON else data[: _MAX_REASON - 3] + b"..."


class Upstream(WSListener):
    """picows listener for one session's instance WebSocket.

    It starts *unconfirmed*: a full instance accepts the upgrade and closes with
    1013 at once (``bidistream serve`` does), and that close may come in a later
    read than the 101.  Until the instance has shown it took the session (a
    frame, a pong, or ``confirm_timeout`` of silence) nothing is relayed either
    way: the instance's frames are held here (reads paused) and the client's in
    the front door, so the router can still move the session elsewhere.
    :meth:`attach` ends that phase.
    """

    def __init__(self, downstream: Downstream | None = None) -> None:
        self.downstream = downstream
        self.transport: WSTransport | None = None
        self.target: RoutableInstance | None = None
        self.router: Router | None = None
        self.ticker: PingTicker | None = None
        self.missed = 0
        self.write_paused = False
        self.read_paused = False
        self.closed = False
        self.close_error: BidistreamError | None = None
        self.got_close = False
        self.relayed = 0
        # Opcode of the message being fragmented in each direction (None between messages).
        self._out_frag = False
        self._in_text = False
        # Instance frames received before attach(); None once attached.
        self._held: list[tuple[bytes, bool, bool]] | None = []
        self._confirm: asyncio.Future[None] | None = None
        self.settled = False
        self._sock: socket.socket | None = None
        self.corked = False
        # METRICS/LOGS: the session's meter (frames, bytes, first output) and its
        # id as forwarded to the instance; set in open_upstream, read in _session_ended.
        self.meter: SessionMeter | None = None
        self.session_id = ""
        # How the client side ended it (abort): (code, reason), else None.
        self.ended_by_client: tuple[int, str] | None = None

    # ------------------------------------------------------------------ picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            self.relayed += 1
            fin = frame.fin
            text = kind is _TEXT
            if not fin:
                self._in_text = text
            ds = self.downstream
            if ds is not None:
                payload = frame.get_payload_as_bytes()
                m = self.meter
                if m is not None:
                    m.outbound(len(payload))
                ds.on_upstream_frame(payload, text, fin)
            elif self._held is not None:
                self._hold(frame.get_payload_as_bytes(), text, fin)
        elif kind is _CONT:
            self.relayed += 1
            ds = self.downstream
            if ds is not None:
                payload = frame.get_payload_as_bytes()
                m = self.meter
                if m is not None:
                    m.outbound(len(payload))
                ds.on_upstream_frame(payload, self._in_text, frame.fin)
            elif self._held is not None:
                self._hold(frame.get_payload_as_bytes(), self._in_text, frame.fin)
        elif kind is _PONG:
            self.missed = 0
            if not self.settled:
                self._settle()
        elif kind is _CLOSE:
            self.got_close = True
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            reason = payload[2:].decode("utf-8", "replace")
            if self.close_error is None:
                if code == 1000 or code is None:
                    self.close_error = None
                else:
                    self.close_error = error_from_close(code, reason)
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            if not self.settled:
                self._settle()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.settled:
            self._settle()
        if self.ticker is not None:
            self.ticker.remove(self)
        if self.router is not None and self.target is not None:
            self.router.session_ended(self.target)
        err = self.close_error
        if err is None and not self.got_close and self.ended_by_client is None:
            err = ModelStreamError(
                "the model container closed the connection without a WebSocket close frame", code="1006"
            )
        self._session_ended(err)
        ds = self.downstream
        self.downstream = None
        if ds is not None:
            ds.on_upstream_closed(err)

    def _session_ended(self, err: BidistreamError | None) -> None:
        """METRICS/LOGS: the one place a gateway session ends (count it, log one line)."""
        m = self.meter
        if m is None:
            return
        self.meter = None
        if err is not None:
            code, error, reason = wire_form(err).ws_close, err.code, err.message
        elif self.ended_by_client is not None:
            code, reason = self.ended_by_client
            error = "" if code == 1000 else "ClientClosed"
        else:
            code, error, reason = 1000, "", ""
        seconds = m.close(code, error)
        endpoint, variant, instance = m.location
        log.info(
            "session end",
            extra={
                "session": self.session_id,
                "endpoint": endpoint,
                "variant": variant,
                "instance": instance,
                "seconds": round(seconds, 3),
                "frames_in": m.frames_in,
                "bytes_in": m.bytes_in,
                "frames_out": m.frames_out,
                "bytes_out": m.bytes_out,
                "code": code,
                "error": error,
                "reason": reason,
            },
        )

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        ds = self.downstream
        if ds is not None:
            ds.on_upstream_writable()

    # ------------------------------------------------------------------ confirmation
    def _hold(self, data: bytes, text: bool, fin: bool) -> None:
        """The instance spoke before attach(): keep it, and read no more until attached."""
        assert self._held is not None
        self._held.append((data, text, fin))
        self.pause_reading()
        if not self.settled:
            self._settle()

    def _settle(self) -> None:
        self.settled = True
        fut = self._confirm
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def confirm(self, timeout: float) -> None:
        """Wait until the instance shows it kept the session, or ``timeout`` of silence.

        A ping is the probe: an instance that closes right after accepting
        (1013, full) has sent that close before it can answer, and a WebSocket
        peer answers pings in order, so a pong means the accept stood.  An
        instance that does not read yet (pongs come from the read loop) is taken
        after ``timeout``.
        """
        if self.settled or self.transport is None:
            return
        self._confirm = asyncio.get_running_loop().create_future()
        self.transport.send_ping()
        try:
            async with asyncio.timeout(timeout):
                await self._confirm
        except TimeoutError:
            self.settled = True
        finally:
            self._confirm = None

    def attach(self, downstream: Downstream) -> None:
        """Start relaying to ``downstream``: first the frames held while unconfirmed."""
        self.downstream = downstream
        held, self._held = self._held, None
        if held:
            for data, text, fin in held:
                downstream.on_upstream_frame(data, text, fin)
                if self.downstream is None:
                    return  # the front door gave up while we replayed
            self.resume_reading()

    # ------------------------------------------------------------------ used by front doors
    def send(self, data: bytes, text: bool, fin: bool = True) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        m = self.meter
        if m is not None:
            m.inbound(len(data))
        if self._out_frag:
            transport.send(_CONT, data, fin)
        else:
            transport.send(_TEXT if text else _BINARY, data, fin)
        self._out_frag = not fin

    def cork(self) -> None:
        """Hold back partial segments: several frames from one client read leave together.

        picows writes each frame with its own ``send()``; on loopback each one
        costs a full transmit and a wakeup of the instance.  Corked for the rest
        of a read, a burst of N frames costs one.
        """
        if self.corked or self.closed:
            return
        sock = self._sock
        if sock is None:
            t = self.transport
            if t is None:
                return
            sock = self._sock = t.underlying_transport.get_extra_info("socket")
            if sock is None:
                return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            self.corked = True

    def uncork(self) -> None:
        if self.corked:
            self.corked = False
            if self._sock is not None and not self.closed:
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.underlying_transport.resume_reading()

    def close_input(self) -> None:
        """The client finished sending: a normal close; the instance answers with its own."""
        t = self.transport
        if t is not None and not self.closed and not t.is_close_frame_sent:
            t.send_close(WSCloseCode.OK)

    def abort(self, code: int = 1001, reason: str = "client went away") -> None:
        """The client is gone or failed: close now, without waiting for the instance."""
        self.downstream = None
        if self.ended_by_client is None:
            self.ended_by_client = (code, reason)
        t = self.transport
        if t is None or self.closed:
            return
        if not t.is_close_frame_sent:
            with contextlib.suppress(Exception):
                t.send_close(WSCloseCode(code), _reason(reason))
        t.disconnect(graceful=True)

    def fail(self, error: BidistreamError) -> None:
        """Gateway-side failure (ping timeout): tell the client and close the instance socket."""
        self.close_error = error
        t = self.transport
        if t is None or self.closed:
            return
        if not t.is_close_frame_sent:
            with contextlib.suppress(Exception):
                t.send_close(WSCloseCode(wire_form(error).ws_close), _reason(error.message))
        t.disconnect(graceful=False)


class PingTicker:
    """One timer pinging every live upstream; ``missed_pongs`` misses in a row close it."""

    def __init__(self, interval: float, missed_limit: int) -> None:
        self.interval = interval
        self.missed_limit = missed_limit
        self._live: set[Upstream] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, up: Upstream) -> None:
        up.ticker = self
        self._live.add(up)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-ping")

    def remove(self, up: Upstream) -> None:
        self._live.discard(up)

    def __len__(self) -> int:
        return len(self._live)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for up in list(self._live):
                if up.missed >= self.missed_limit:
                    up.fail(
                        PingTimeoutError(
                            f"the model container did not answer {up.missed} consecutive pings "
                            f"(every {self.interval:g} s); the session was closed"
                        )
                    )
                    continue
                t = up.transport
                if t is not None and not up.closed:
                    up.missed += 1
                    t.send_ping()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def upstream_url(base_url: str, path: str | None, query: str | None) -> str:
    base = base_url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[7:]
    elif base.startswith("https://"):
        base = "wss://" + base[8:]
    url = f"{base}/{quote(path or DEFAULT_INVOCATION_PATH, safe='/-._~')}"
    return f"{url}?{query}" if query else url


async def open_upstream(
    router: Router,
    endpoint: str,
    *,
    variant: str | None,
    path: str | None,
    query: str | None,
    headers: Mapping[str, str],
    limits: GatewayLimits,
    ticker: PingTicker | None,
) -> Upstream:
    """Connect to the first candidate instance that accepts the session.

    A full instance (upgrade answered 503, or close 1013 right after the
    accept) or an unreachable one makes us try the next candidate; a refused
    upgrade (any other status) is the model's answer and surfaces as 424.

    The returned upstream is confirmed but not attached: the caller calls
    ``attach(downstream)`` once it is ready to relay (response headers sent),
    and checks ``closed`` for an instance that closed during the handshake.
    """
    try:
        return await _open_upstream(router, endpoint, variant, path, query, headers, limits, ticker)
    except BidistreamError as exc:
        # LOGS: a session refused before it opened gets its line too (code as the client sees it).
        log.info(
            "session refused",
            extra={
                "session": headers.get(SESSION_HEADER, ""),
                "endpoint": endpoint,
                "variant": variant or "",
                "error": exc.code,
                "code": wire_form(exc).ws_close,
                "reason": exc.message,
            },
        )
        raise


async def _open_upstream(
    router: Router,
    endpoint: str,
    variant: str | None,
    path: str | None,
    query: str | None,
    headers: Mapping[str, str],
    limits: GatewayLimits,
    ticker: PingTicker | None,
) -> Upstream:
    try:
        targets = router.candidates(endpoint, variant)
    except ServiceUnavailableError:
        metrics.router_decision(endpoint, variant or "", "", metrics.NO_HEALTHY_INSTANCE)
        raise
    last: BidistreamError = ServiceUnavailableError(
        f"endpoint {endpoint} has no instance to take the session"
    )
    full = 0
    for target in targets:
        url = upstream_url(target.base_url, path, query)
        listener = Upstream()
        began = time.monotonic()
        try:
            async with asyncio.timeout(limits.connect_timeout):
                transport, _ = await ws_connect(
                    lambda listener=listener: listener,
                    url,
                    extra_headers=dict(headers),
                    enable_auto_ping=False,
                    websocket_handshake_timeout=limits.connect_timeout,
                    read_buffer_init_size=limits.ws_read_buffer,
                    max_frame_size=limits.max_event_size,
                    logger_name="gateway.upstream",
                    disconnect_on_exception=True,
                    use_aiofastnet=False,
                )
        except WSInvalidStatusError as exc:
            status = int(exc.response.status) if exc.response is not None else 0
            body = (exc.raw_body or b"").decode("utf-8", "replace")[:1024]
            if status in (503, 429):
                full += 1
                metrics.router_decision(endpoint, target.variant, target.instance_id, metrics.RETRY_FULL)
                last = InstanceFullError(
                    f"instance {target.instance_id} of endpoint {endpoint} is full or not ready "
                    f"(upgrade answered {status})"
                )
                continue
            raise ModelRefusedError(
                f'Received client error ({status}) from primary with message "{body}". '
                "The model container refused the WebSocket connection.",
                original_status=status,
                original_message=body,
            ) from exc
        except (OSError, TimeoutError, WSError) as exc:
            log.warning("instance %s unreachable at %s: %s", target.instance_id, url, exc)
            metrics.router_decision(endpoint, target.variant, target.instance_id, metrics.RETRY_UNREACHABLE)
            last = ServiceUnavailableError(
                f"instance {target.instance_id} of endpoint {endpoint} is unreachable "
                f"({type(exc).__name__}); try again later"
            )
            continue
        except Exception as exc:
            raise InternalError(f"opening the instance connection failed: {exc}") from exc
        # A full instance accepts and closes with 1013 at once, with the 101 or in
        # a later read: confirm before committing, while nothing has been relayed.
        listener.transport = transport
        try:
            await listener.confirm(limits.confirm_timeout)
        except BaseException:
            transport.disconnect(graceful=False)
            raise
        if (
            listener.got_close
            and not listener.relayed
            and isinstance(listener.close_error, InstanceFullError)
        ):
            last = listener.close_error
            full += 1
            metrics.router_decision(endpoint, target.variant, target.instance_id, metrics.RETRY_FULL)
            transport.disconnect(graceful=False)
            continue
        listener.target = target
        listener.router = router
        transport.underlying_transport.set_write_buffer_limits(high=limits.high_water)
        router.session_started(target)
        # METRICS/LOGS: the one place a gateway session opens.
        metrics.router_decision(endpoint, target.variant, target.instance_id, metrics.ROUTED)
        listener.session_id = headers.get(SESSION_HEADER, "")
        listener.meter = GATEWAY.open(endpoint, target.variant, target.instance_id)
        if listener.closed:
            # It closed during the handshake; the disconnect callback already ran
            # without the router (and the meter), so balance both here.
            router.session_ended(target)
            err = listener.close_error
            if err is None and not listener.got_close:
                err = ModelStreamError(
                    "the model container closed the connection without a WebSocket close frame", code="1006"
                )
            listener._session_ended(err)
        elif ticker is not None:
            ticker.add(listener)
        log.debug("upstream %s connected in %.1f ms", url, (time.monotonic() - began) * 1000)
        return listener
    if targets and full == len(targets):
        metrics.router_decision(endpoint, variant or "", "", metrics.BUSY)
        raise InstanceFullError(at_capacity(endpoint, targets))
    if not targets:
        metrics.router_decision(endpoint, variant or "", "", metrics.NO_HEALTHY_INSTANCE)
    raise last


def at_capacity(endpoint: str, targets: list[RoutableInstance]) -> str:
    """The busy message: which endpoint, how many instances, how many sessions they hold."""
    n = len(targets)
    live = sum(t.live_sessions for t in targets)
    return (
        f"endpoint {endpoint} is at capacity: all {n} instance{'s' if n != 1 else ''} "
        f"refused the session as full ({live} live sessions); retry later or raise the "
        "variant's instance count"
    )
