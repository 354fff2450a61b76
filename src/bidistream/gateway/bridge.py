"""The bridge (SageMaker's sidecar): one WebSocket per session to the chosen instance.

Every session decision (hold, confirm, attach, replay, fragments, flow
control, timeouts, who is told what) is made by the sans-I/O
:class:`~bidistream.session.BidiSession`.  This module is its gateway-side
I/O, written once for both front doors:

* :class:`Relay` owns one session: it feeds it events, executes its actions
  on the instance connection, on the door's :class:`ClientSide` and on the
  loop's clock (timers are ``call_later`` handles that come back as events);
* :class:`InstanceLink` is the picows listener of one instance WebSocket; it
  turns frames, pongs, closes and write-buffer pauses into events;
* :class:`PingTicker` is one keepalive timer for all sessions (SageMaker's
  sidecar pings every 60 s and gives up after 5 unanswered pings).

picows was chosen for this hop: in the transport benchmark it cost 4-10 µs per
message as a client against websockets' 14-21 µs, and its callback API lets a
frame from the instance reach the client's socket in the same call stack it
arrived in: no task, no queue per frame.

A connect runs in a task that owns its socket (``socket_factory``): when the
client leaves mid-handshake the session says ``DisconnectInstance``, the task
is cancelled and the socket shut, so the instance never keeps a session
nobody owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol
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
    ServiceUnavailableError,
    error_from_close,
    wire_form,
)
from bidistream.gateway.limits import GatewayLimits
from bidistream.metrics import GATEWAY, SessionMeter
from bidistream.model import DEFAULT_INVOCATION_PATH
from bidistream.routing import RoutableInstance, Router
from bidistream.session import BidiSession, SessionLimits, State
from bidistream.session import actions as a
from bidistream.session import events as e

__all__ = [
    "SESSION_HEADER",
    "ClientSide",
    "InstanceLink",
    "PingTicker",
    "Relay",
    "at_capacity",
    "session_limits",
    "upstream_url",
]

log = logging.getLogger("bidistream.gateway.bridge")

_CLOSED = State.CLOSED
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONT = WSMsgType.CONTINUATION
_PONG = WSMsgType.PONG
_CLOSE = WSMsgType.CLOSE
# The session id the front doors forward to the instance (its logs carry the same id).
SESSION_HEADER = "X-Amzn-SageMaker-Request-Id"


class ClientSide(Protocol):
    """What a front door does for its session (HTTP/2 stream or WebSocket)."""

    def accept(self, variant: str) -> None: ...

    def refuse(self, error: BidistreamError) -> None: ...

    def end(self, error: BidistreamError | None) -> None: ...

    def send(self, data: bytes, text: bool, fin: bool, cont: bool) -> None: ...

    def send_last(self, data: bytes, text: bool) -> None:
        """A whole message that ends the instance's read: nothing more is coming this turn."""
        ...

    def ack(self, n: int) -> None: ...

    def pause_reads(self) -> None: ...

    def resume_reads(self) -> None: ...


# What of an instance's refused upgrade a front door repeats to its client: the body (bounded) and
# the headers a client of that model reads.  Hop-by-hop and framing headers are the door's own.
MAX_REFUSAL_BODY = 64 * 1024
_REFUSAL_HEADERS = ("content-type", "dg-error", "dg-request-id", "www-authenticate", "retry-after")


def _refusal_headers(response: object) -> dict[str, str]:
    headers = getattr(response, "headers", None) or {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if str(name).lower() in _REFUSAL_HEADERS:
            out[str(name)] = str(value)
    return out


def session_limits(limits: GatewayLimits) -> SessionLimits:
    return SessionLimits(
        confirm_timeout=limits.confirm_timeout,
        close_timeout=limits.close_timeout,
        abort_timeout=limits.abort_timeout,
        missed_pongs=limits.missed_pongs,
    )


def upstream_url(base_url: str, path: str | None, query: str | None) -> str:
    base = base_url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[7:]
    elif base.startswith("https://"):
        base = "wss://" + base[8:]
    url = f"{base}/{quote(path or DEFAULT_INVOCATION_PATH, safe='/-._~')}"
    return f"{url}?{query}" if query else url


class InstanceLink(WSListener):
    """picows listener for one instance WebSocket: wire facts in, nothing decided here."""

    def __init__(self, relay: Relay, target: RoutableInstance) -> None:
        self.relay: Relay | None = relay
        self.router = relay.router
        self.target = target
        self.transport: WSTransport | None = None
        self.close_error: BidistreamError | None = None
        self.got_close = False
        self.counted = False
        self.read_paused = False
        self.write_paused = False
        self.closed = False
        self._sock: socket.socket | None = None
        self.corked = False

    # ------------------------------------------------------------------ picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        relay = self.relay
        if relay is None:
            transport.disconnect(graceful=False)
            return
        transport.underlying_transport.set_write_buffer_limits(high=relay.limits.high_water)
        relay.feed(e.InstanceConnected(self.target.variant))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        relay = self.relay
        if kind is _BINARY or kind is _TEXT or kind is _CONT:
            if relay is not None:
                fin = frame.fin
                if fin and kind is not _CONT and not relay.busy and relay.session.pass_instance_frame():
                    payload = frame.get_payload_as_bytes()
                    m = relay.meter  # METRICS/LOGS: the fast path counts like _send_to_client
                    if m is not None:
                        m.outbound(len(payload))
                    if frame.last_in_buffer:
                        relay.client.send_last(payload, kind is _TEXT)
                    else:
                        relay.client.send(payload, kind is _TEXT, True, False)
                else:
                    text = None if kind is _CONT else kind is _TEXT
                    relay.feed(e.InstanceFrame(frame.get_payload_as_bytes(), text, fin))
        elif kind is _PONG:
            if relay is not None:
                relay.feed(e.InstancePong())
        elif kind is _CLOSE:
            self.got_close = True
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if code is not None and code != 1000:
                self.close_error = error_from_close(code, payload[2:].decode("utf-8", "replace"))
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closed:
            return
        self.closed = True
        relay, self.relay = self.relay, None
        if self.counted:
            self.counted = False
            self.router.session_ended(self.target)
        if relay is None:
            return
        err = self.close_error
        if err is None and not self.got_close:
            err = ModelStreamError(
                "the model container closed the connection without a WebSocket close frame", code="1006"
            )
        relay.link = None
        relay.feed(e.InstanceClosed(err))

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.relay is not None:
            self.relay.feed(e.InstanceBlocked())

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.relay is not None:
            self.relay.feed(e.InstanceWritable())

    # ------------------------------------------------------------------ used by the relay
    def detach(self) -> None:
        """Stop reporting to the relay (the session moved on); cut the connection."""
        self.relay = None
        t = self.transport
        if t is not None and not self.closed:
            t.disconnect(graceful=False)

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


class Relay:
    """One session between a front door and an instance: the session core's gateway adapter."""

    __slots__ = (
        "_candidates",
        "_connect_task",
        "_end",
        "_full",
        "_last",
        "_targets",
        "_timers",
        "busy",
        "client",
        "connect_args",
        "endpoint",
        "limits",
        "link",
        "meter",
        "queue",
        "router",
        "session",
        "ticker",
    )

    def __init__(
        self,
        client: ClientSide,
        router: Router,
        limits: GatewayLimits,
        ticker: PingTicker | None,
        *,
        endpoint: str,
        variant: str | None,
        path: str | None,
        query: str | None,
        headers: Mapping[str, str],
    ) -> None:
        self.client = client
        self.router = router
        self.limits = limits
        self.ticker = ticker
        self.endpoint = endpoint
        self.connect_args = (variant, path, query, dict(headers))
        self.session = BidiSession(session_limits(limits))
        self.link: InstanceLink | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._candidates: Iterator[RoutableInstance] | None = None
        self._last: BidistreamError | None = None
        self._timers: dict[e.Timer, asyncio.TimerHandle] = {}
        # METRICS/LOGS: the session's meter (opened at Accept), how it ended
        # (close code, error type, reason), and how many candidates said "full".
        self.meter: SessionMeter | None = None
        self._end: tuple[int, str, str] | None = None
        self._full = 0
        self._targets: list[RoutableInstance] = []
        # Events raised while actions run (a send that fills a buffer) wait their turn,
        # so every event meets the state the previous one left.
        self.busy = False
        self.queue: list[object] = []

    # ------------------------------------------------------------------ the one way in
    def feed(self, event: object) -> None:
        """Hand one event to the session and carry out what it says."""
        if self.busy:
            self.queue.append(event)
            return
        self.busy = True
        do = _DO
        session = self.session
        try:
            for action in session.handle(event):
                do[type(action)](self, action)
            queue = self.queue
            while queue:
                for action in session.handle(queue.pop(0)):
                    do[type(action)](self, action)
        finally:
            self.busy = False
        if session.state is _CLOSED:
            self._finish()

    def client_part(self, data: bytes, text: bool | None, fin: bool) -> None:
        """One client message part: a whole frame the table would relay as is skips the event.

        The doors call this for every part; ``pass_client_frame`` says when the table's
        answer would be exactly one ``SendToInstance`` of it (the tests hold the two to
        the same result in every state), which saves the event, the action and the list.
        """
        if fin and text is not None and not self.busy and self.session.pass_client_frame():
            self.send_to_instance(data, text)
        else:
            self.feed(e.ClientPart(data, text, fin))

    def start(self) -> None:
        self.feed(e.Start())

    @property
    def closed(self) -> bool:
        return self.session.closed

    def _finish(self) -> None:
        if self.ticker is not None:
            self.ticker.remove(self)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._session_ended()

    def _session_ended(self) -> None:
        """METRICS/LOGS: the one place a gateway session ends (count it, log one line)."""
        m, self.meter = self.meter, None
        if m is None:
            return
        code, error, reason = self._end or (1000, "", "")
        seconds = m.close(code, error)
        endpoint, variant, instance = m.location
        log.info(
            "session end",
            extra={
                "session": self.connect_args[3].get(SESSION_HEADER, ""),
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

    # ------------------------------------------------------------------ instance actions
    def send_to_instance(self, data: bytes, text: bool) -> None:
        """A whole frame the session passed (``BidiSession.pass_client_frame``)."""
        link = self.link
        if link is not None and link.transport is not None and not link.closed:
            m = self.meter  # METRICS/LOGS: the fast path counts like _send_to_instance
            if m is not None:
                m.inbound(len(data))
            link.transport.send(_TEXT if text else _BINARY, data, True)

    def _send_to_instance(self, act: a.SendToInstance) -> None:
        link = self.link
        if link is None or link.transport is None or link.closed:
            return
        m = self.meter
        if m is not None:
            m.inbound(len(act.data))
        if act.cont:
            link.transport.send(_CONT, act.data, act.fin)
        else:
            link.transport.send(_TEXT if act.text else _BINARY, act.data, act.fin)

    def _pause_instance(self, act: object) -> None:
        link = self.link
        if link is not None and link.transport is not None and not link.read_paused:
            link.read_paused = True
            link.transport.underlying_transport.pause_reading()

    def _resume_instance(self, act: object) -> None:
        link = self.link
        if link is not None and link.transport is not None and link.read_paused:
            link.read_paused = False
            link.transport.underlying_transport.resume_reading()

    def _ping(self, act: object) -> None:
        link = self.link
        if link is not None and link.transport is not None and not link.closed:
            link.transport.send_ping()

    def _close_input(self, act: object) -> None:
        link = self.link
        t = link.transport if link is not None else None
        if t is not None and not link.closed and not t.is_close_frame_sent:  # type: ignore[union-attr]
            t.send_close(WSCloseCode.OK)

    def _close_instance(self, act: a.CloseInstance) -> None:
        link = self.link
        t = link.transport if link is not None else None
        if self._end is None:
            # The client's side went first (gone: 1001) or the gateway ends it.
            self._end = (act.code, "ClientGone" if act.code == 1001 else "SessionClosed", act.reason)
        if t is None or link.closed:  # type: ignore[union-attr]
            return
        if not t.is_close_frame_sent:
            with contextlib.suppress(Exception):
                t.send_close(WSCloseCode(act.code), act.reason.encode("utf-8"))

    def _disconnect(self, act: object) -> None:
        task = self._connect_task
        if task is not None and not task.done():
            task.cancel()  # its socket is shut by the task itself
        link, self.link = self.link, None
        if link is not None:
            link.detach()

    # ------------------------------------------------------------------ client actions
    def _send_to_client(self, act: a.SendToClient) -> None:
        m = self.meter
        if m is not None:
            m.outbound(len(act.data))
        self.client.send(act.data, act.text, act.fin, act.cont)

    def _acknowledge(self, act: a.Acknowledge) -> None:
        self.client.ack(act.n)

    def _pause_client(self, act: object) -> None:
        self.client.pause_reads()

    def _resume_client(self, act: object) -> None:
        self.client.resume_reads()

    def _accept(self, act: a.Accept) -> None:
        # Counted only once confirmed: a full instance that closes with 1013 is never committed to.
        link = self.link
        if link is not None and not link.closed and not link.counted:
            link.counted = True
            self.router.session_started(link.target)
            # METRICS/LOGS: the one place a gateway session opens.
            t = link.target
            metrics.router_decision(self.endpoint, t.variant, t.instance_id, metrics.ROUTED)
            self.meter = GATEWAY.open(self.endpoint, t.variant, t.instance_id)
        if self.ticker is not None:
            self.ticker.add(self)
        self.client.accept(act.variant)

    def _refuse(self, act: a.Refuse) -> None:
        err = act.error
        # LOGS: a session refused before it opened gets its line too (code as the client sees it).
        log.info(
            "session refused",
            extra={
                "session": self.connect_args[3].get(SESSION_HEADER, ""),
                "endpoint": self.endpoint,
                "variant": self.connect_args[0] or "",
                "error": err.code,
                "code": wire_form(err).ws_close,
                "reason": err.message,
            },
        )
        self.client.refuse(err)

    def _end_client(self, act: a.EndClient) -> None:
        err = act.error
        self._end = (1000, "", "") if err is None else (wire_form(err).ws_close, err.code, err.message)
        self.client.end(act.error)

    # ------------------------------------------------------------------ timers
    def _start_timer(self, act: a.StartTimer) -> None:
        old = self._timers.pop(act.timer, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[act.timer] = loop.call_later(act.seconds, self._fire, act.timer)

    def _cancel_timer(self, act: a.CancelTimer) -> None:
        handle = self._timers.pop(act.timer, None)
        if handle is not None:
            handle.cancel()

    def _fire(self, timer: e.Timer) -> None:
        self._timers.pop(timer, None)
        self.feed(e.TimerFired(timer))

    # ------------------------------------------------------------------ connecting
    def _connect(self, act: a.ConnectInstance) -> None:
        if act.after is not None:
            self._last = act.after
        if act.retry and self.link is not None:
            link, self.link = self.link, None
            # The instance took the upgrade, then said it was full (1013): try the next one.
            self._full += 1
            t = link.target
            metrics.router_decision(self.endpoint, t.variant, t.instance_id, metrics.RETRY_FULL)
            link.detach()
        self._connect_task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        """Connect to the next candidate that accepts; report failure once none is left.

        A full instance (upgrade answered 503 or 429) or an unreachable one
        makes us try the next candidate; a refused upgrade (any other status)
        is the model's answer and surfaces as 424.  Success is reported by the
        link itself (``on_ws_connected``), in the same callback as the 101.
        """
        variant, path, query, headers = self.connect_args
        try:
            if self._candidates is None:
                try:
                    self._targets = self.router.candidates(self.endpoint, variant)
                except ServiceUnavailableError:
                    metrics.router_decision(self.endpoint, variant or "", "", metrics.NO_HEALTHY_INSTANCE)
                    raise
                self._candidates = iter(self._targets)
            for target in self._candidates:
                try:
                    await self._open_one(target, path, query, headers)
                    return
                except WSInvalidStatusError as exc:
                    status = int(exc.response.status) if exc.response is not None else 0
                    body = (exc.raw_body or b"").decode("utf-8", "replace")[:1024]
                    if status in (503, 429):
                        self._full += 1
                        metrics.router_decision(
                            self.endpoint, target.variant, target.instance_id, metrics.RETRY_FULL
                        )
                        self._last = InstanceFullError(
                            f"instance {target.instance_id} of endpoint {self.endpoint} is full or not ready "
                            f"(upgrade answered {status})"
                        )
                        continue
                    raise ModelRefusedError(
                        f'Received client error ({status}) from primary with message "{body}". '
                        "The model container refused the WebSocket connection.",
                        original_status=status,
                        original_message=(exc.raw_body or b"").decode("utf-8", "replace")[:MAX_REFUSAL_BODY],
                        original_headers=_refusal_headers(exc.response),
                    ) from exc
                except (OSError, TimeoutError, WSError) as exc:
                    log.warning("instance %s unreachable: %s", target.instance_id, exc)
                    metrics.router_decision(
                        self.endpoint, target.variant, target.instance_id, metrics.RETRY_UNREACHABLE
                    )
                    self._last = ServiceUnavailableError(
                        f"instance {target.instance_id} of endpoint {self.endpoint} is unreachable "
                        f"({type(exc).__name__}); try again later"
                    )
                    continue
            targets = self._targets
            if targets and self._full >= len(targets):
                metrics.router_decision(self.endpoint, variant or "", "", metrics.BUSY)
                error: BidistreamError = InstanceFullError(at_capacity(self.endpoint, targets))
            else:
                if not targets:
                    metrics.router_decision(self.endpoint, variant or "", "", metrics.NO_HEALTHY_INSTANCE)
                error = self._last or ServiceUnavailableError(
                    f"endpoint {self.endpoint} has no instance to take the session"
                )
        except asyncio.CancelledError:
            raise
        except BidistreamError as exc:
            error = exc
        except Exception as exc:
            log.exception("opening the instance connection failed")
            error = InternalError(f"gateway failed to open the session: {exc}")
        self.feed(e.ConnectFailed(error))

    async def _open_one(
        self, target: RoutableInstance, path: str | None, query: str | None, headers: dict[str, str]
    ) -> None:
        limits = self.limits
        url = upstream_url(target.base_url, path, query)
        link = InstanceLink(self, target)
        self.link = link
        owned: list[socket.socket] = []
        connecting: list[socket.socket] = []  # created, not yet handed to a transport

        async def own_socket(parsed: object) -> socket.socket:
            # We create (and so can always shut) the socket: a cancelled handshake
            # must not leave a connection the instance keeps serving.
            loop = asyncio.get_running_loop()
            host, port = getattr(parsed, "host"), getattr(parsed, "port")  # noqa: B009
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            owned.append(sock)
            connecting.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
            connecting.remove(sock)  # the transport made from it closes it
            return sock

        began = time.monotonic()
        try:
            async with asyncio.timeout(limits.connect_timeout):
                await ws_connect(
                    lambda: link,
                    url,
                    extra_headers=headers,
                    enable_auto_ping=False,
                    websocket_handshake_timeout=limits.connect_timeout,
                    read_buffer_init_size=limits.ws_read_buffer,
                    max_frame_size=limits.max_event_size,
                    logger_name="gateway.upstream",
                    disconnect_on_exception=True,
                    socket_factory=own_socket,
                    use_aiofastnet=False,
                )
        except BaseException:
            if self.link is link:
                self.link = None
            link.relay = None
            for sock in owned:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if link.transport is not None:
                link.transport.disconnect(graceful=False)
            for sock in connecting:
                # Cancelled before any transport took it: shut is not closed, and the
                # traceback would keep the socket (and its fd) until a cyclic GC.
                sock.close()
            raise
        log.debug("instance %s connected in %.1f ms", url, (time.monotonic() - began) * 1000)


def at_capacity(endpoint: str, targets: list[RoutableInstance]) -> str:
    """The busy message: which endpoint, how many instances, how many sessions they hold."""
    n = len(targets)
    live = sum(t.live_sessions for t in targets)
    return (
        f"endpoint {endpoint} is at capacity: all {n} instance{'s' if n != 1 else ''} "
        f"refused the session as full ({live} live sessions); retry later or raise the "
        "variant's instance count"
    )


# Action type -> the Relay method that carries it out (one table for all sessions:
# a dict of bound methods per session would cost ~2.5 KiB of each idle session).
_DO: dict[type, Callable[[Relay, Any], None]] = {
    a.SendToClient: Relay._send_to_client,
    a.SendToInstance: Relay._send_to_instance,
    a.Acknowledge: Relay._acknowledge,
    a.PauseInstanceReads: Relay._pause_instance,
    a.ResumeInstanceReads: Relay._resume_instance,
    a.PauseClientReads: Relay._pause_client,
    a.ResumeClientReads: Relay._resume_client,
    a.ConnectInstance: Relay._connect,
    a.PingInstance: Relay._ping,
    a.CloseInstanceInput: Relay._close_input,
    a.CloseInstance: Relay._close_instance,
    a.DisconnectInstance: Relay._disconnect,
    a.Accept: Relay._accept,
    a.Refuse: Relay._refuse,
    a.EndClient: Relay._end_client,
    a.StartTimer: Relay._start_timer,
    a.CancelTimer: Relay._cancel_timer,
}


class PingTicker:
    """One timer for all sessions: every ``interval`` each relay gets a keepalive tick."""

    def __init__(self, interval: float, missed_limit: int) -> None:
        self.interval = interval
        self.missed_limit = missed_limit
        self._live: set[Relay] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, relay: Relay) -> None:
        self._live.add(relay)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-ping")

    def remove(self, relay: Relay) -> None:
        self._live.discard(relay)

    def __len__(self) -> int:
        return len(self._live)

    async def _run(self) -> None:
        tick = e.TimerFired(e.Timer.PING)
        while True:
            await asyncio.sleep(self.interval)
            for relay in list(self._live):
                relay.feed(tick)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
