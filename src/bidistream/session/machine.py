"""The bidi session core: events in, actions out, every transition in one table.

One :class:`BidiSession` per session, on every door: the HTTP/2 event stream
and the WebSocket front door in the gateway (relaying to an instance's
WebSocket) and the model server (relaying between the gateway's WebSocket and
the model).  It holds no socket and no clock; the adapter feeds it
:mod:`~bidistream.session.events` and executes the
:mod:`~bidistream.session.actions` it returns, in order.

::

    IDLE ──start──► CONNECTING ──connected──► CONFIRMING ──frame / pong / confirm timer──► OPEN
                      ▲   │                     │  │                                        │
                      │   │ connect failed      │  └─ instance full (1013, nothing relayed)  │ client ended
                      │   ▼                     │         └──────► CONNECTING (next one)    ▼
                      │ CLOSED ◄──refuse────────┘                                      HALF_CLOSED
                      │   ▲                                                                 │
                      │   └──── instance closed (either state) ◄────────────────────────────┤
                      │   ▲                                                                 │
                      │   └── instance closed / abort timer ── ABORTING ◄── client gone, bad input,
                      │                                  ping / close / idle timeout, shutdown
                      │                                  (from OPEN or HALF_CLOSED)

The confirmation phase exists because a full instance accepts the upgrade and
closes with 1013 at once (possibly in a later read than the 101): until the
instance shows it kept the session (a frame, a pong, or ``confirm_timeout``
of silence) nothing is relayed either way, so the router can still move the
session elsewhere.  Client frames wait in ``early`` (client reads paused);
attaching replays them in order, before the instance's first frame is relayed.

Why some defects cannot happen here (issue 10):

* a client that leaves while the instance connection opens (CONNECTING,
  CONFIRMING) always yields :class:`DisconnectInstance`: the adapter cuts the
  connect and its socket, no instance session is orphaned (10.1);
* a client that leaves an attached session yields :class:`CloseInstance`
  together with :class:`ResumeInstanceReads` when reads were paused, and the
  ``ABORT`` timer: the instance's close is read (its frames drained) or the
  transport is cut at the deadline; no paused read survives the client (10.2);
* every path that ends the client's side while its reads were paused resumes
  them, so a WebSocket client's close reply is read (10.5).

A pair missing from :data:`TRANSITIONS` closes the session with a reason
(h2's stream state machine does the same): the client is told, the instance
transport is cut.  Effects may chain one further input (an internal one, such
as ``PING_TIMEOUT``, or a replay of ``CLIENT_ENDED`` after attaching), which
goes through the same table.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from bidistream.errors import (
    BidistreamError,
    IdleTimeoutError,
    InstanceFullError,
    InternalError,
    ModelTimeoutError,
    PingTimeoutError,
    SessionTimeoutError,
    wire_form,
)
from bidistream.session import actions as a
from bidistream.session import events as e
from bidistream.session.reason import close_reason

__all__ = ["TRANSITIONS", "BidiSession", "Input", "SessionLimits", "State"]


class State(enum.Enum):
    # Members are singletons: identity hashing keeps a table lookup at C speed
    # (Enum's own __hash__ is Python code, hashing the name on every lookup).
    __hash__ = object.__hash__

    IDLE = "idle"
    CONNECTING = "connecting"
    CONFIRMING = "confirming"
    OPEN = "open"
    HALF_CLOSED = "half-closed"
    ABORTING = "aborting"
    CLOSED = "closed"


class Input(enum.Enum):
    """What the table is keyed by: an event's kind, or an input the session raises itself."""

    __hash__ = object.__hash__

    START = "start"
    CLIENT_PART = "client_part"
    CLIENT_BYTES = "client_bytes"
    CLIENT_ENDED = "client_ended"
    CLIENT_GONE = "client_gone"
    CLIENT_FAILED = "client_failed"
    CLIENT_BLOCKED = "client_blocked"
    CLIENT_WRITABLE = "client_writable"
    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    INSTANCE_FRAME = "instance_frame"
    INSTANCE_PONG = "instance_pong"
    # The instance closed with 1013 before relaying anything: try the next one.
    INSTANCE_FULL = "instance_full"
    INSTANCE_CLOSED = "instance_closed"
    INSTANCE_BLOCKED = "instance_blocked"
    INSTANCE_WRITABLE = "instance_writable"
    CONFIRM_TIMER = "confirm_timer"
    CLOSE_TIMER = "close_timer"
    ABORT_TIMER = "abort_timer"
    PING_TICK = "ping_tick"
    IDLE_TICK = "idle_tick"
    MAX_DURATION = "max_duration"
    FAILED = "failed"
    # Raised by effects, never by an adapter.
    PING_TIMEOUT = "ping_timeout"
    IDLE_TIMEOUT = "idle_timeout"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The session's named limits (seconds; None turns a phase off)."""

    # Wait this long for a sign the instance kept the session; None attaches at once
    # (the model server, whose "instance" is the model in the same process).
    confirm_timeout: float | None = 0.25
    # After the client ends its input, the instance gets this long to close.
    close_timeout: float | None = 30.0
    # After the session sends its own close to the instance, the transport is cut
    # this long later if the close handshake has not finished.  The README promises
    # the instance WebSocket closes within 1 s of a client vanishing.
    abort_timeout: float = 0.5
    # Keepalive ticks without a pong before the session fails (SageMaker: 5).
    missed_pongs: int = 5
    # No frame either way for this long closes the session; None: no idle limit.
    idle_timeout: float | None = None
    # The session's whole-life cap (the adapter arms it once); None: no cap.
    max_duration: float | None = None


Effect = Callable[["BidiSession", object, list[object]], Input | None]

_KINDS: dict[type, Input] = {
    e.Start: Input.START,
    e.ClientPart: Input.CLIENT_PART,
    e.ClientBytes: Input.CLIENT_BYTES,
    e.ClientEnded: Input.CLIENT_ENDED,
    e.ClientGone: Input.CLIENT_GONE,
    e.ClientFailed: Input.CLIENT_FAILED,
    e.ClientBlocked: Input.CLIENT_BLOCKED,
    e.ClientWritable: Input.CLIENT_WRITABLE,
    e.InstanceConnected: Input.CONNECTED,
    e.ConnectFailed: Input.CONNECT_FAILED,
    e.InstanceFrame: Input.INSTANCE_FRAME,
    e.InstancePong: Input.INSTANCE_PONG,
    e.InstanceBlocked: Input.INSTANCE_BLOCKED,
    e.InstanceWritable: Input.INSTANCE_WRITABLE,
    e.Failed: Input.FAILED,
}

_TIMERS: dict[e.Timer, Input] = {
    e.Timer.CONFIRM: Input.CONFIRM_TIMER,
    e.Timer.CLOSE: Input.CLOSE_TIMER,
    e.Timer.ABORT: Input.ABORT_TIMER,
    e.Timer.PING: Input.PING_TICK,
    e.Timer.IDLE: Input.IDLE_TICK,
    e.Timer.MAX_DURATION: Input.MAX_DURATION,
}


class BidiSession:
    """One session's state and buffers; :meth:`handle` is the only way in."""

    __slots__ = (
        "_in_text",
        "_out_text",
        "active",
        "client_blocked",
        "client_paused",
        "early",
        "input_ended",
        "instance_blocked",
        "instance_paused",
        "limits",
        "missed",
        "quiet_ticks",
        "reason",
        "relayed",
        "started",
        "state",
        "timers",
        "unacked",
        "variant",
    )

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self.state = State.IDLE
        # Client frames waiting for the instance to be confirmed; None once attached.
        self.early: list[tuple[bytes, bool | None, bool]] | None = []
        # Client bytes received and not yet acknowledged (HTTP/2 flow control).
        self.unacked = 0
        self.input_ended = False
        # True once the client's response started (Accept or Refuse sent).
        self.started = False
        self.client_paused = False
        self.instance_paused = False
        self.client_blocked = False
        self.instance_blocked = False
        # Kind of the message being fragmented in each direction (None between messages).
        self._out_text: bool | None = None
        self._in_text: bool | None = None
        self.missed = 0
        self.active = False
        self.quiet_ticks = 0
        # Instance frames received since the last connect (a 1013 after one is no retry).
        self.relayed = 0
        self.variant = "AllTraffic"
        # Timers armed (a dict: an empty one is a third of an empty set's size).
        self.timers: dict[e.Timer, bool] = {}
        # Why the session closed through a missing pair (None otherwise).
        self.reason: str | None = None

    # ------------------------------------------------------------------ the one way in
    def handle(self, event: object) -> list[object]:
        """Feed one event; return the actions the adapter must execute, in order."""
        kind = _KINDS.get(type(event))
        if kind is None:
            kind = self._classify(event)
        out: list[object] = []
        while kind is not None:
            entry = _ROWS[self.state].get(kind)
            if entry is None:
                self._invalid(kind, out)
                break
            effect, self.state = entry
            kind = effect(self, event, out)
        return out

    def _classify(self, event: object) -> Input:
        if type(event) is e.InstanceClosed:
            if isinstance(event.error, InstanceFullError) and not self.relayed:
                return Input.INSTANCE_FULL
            return Input.INSTANCE_CLOSED
        if type(event) is e.TimerFired:
            self.timers.pop(event.timer, None)
            return _TIMERS[event.timer]
        raise TypeError(f"not a session event: {event!r}")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # ------------------------------------------------------------------ the relay's hot path
    def pass_client_frame(self) -> bool:
        """For a whole client frame (fin, no message in progress): True when the table relays it as is.

        Exactly what ``handle(ClientPart(data, text, True))`` would do when it
        returns one ``SendToInstance(data, text, True, False)``, without
        building the event, the action and the list: the caller sends the
        frame itself.  False: feed the event to :meth:`handle`.
        ``tests/unit/session/test_machine.py`` checks the two agree in every state.
        """
        if self.state in _RELAYS_CLIENT and self._out_text is None:
            self.active = True
            return True
        return False

    def pass_instance_frame(self) -> bool:
        """The same for a whole instance frame (``SendToClient``)."""
        if self.state in _RELAYS_INSTANCE and self._in_text is None:
            self.active = True
            self.relayed += 1
            return True
        return False

    def _invalid(self, kind: Input, out: list[object]) -> None:
        """A pair the table does not know: close both sides with the reason."""
        state = self.state
        self.reason = f"session event {kind.value!r} is not valid in state {state.value!r}"
        error = InternalError(self.reason)
        if state is State.CLOSED:
            return
        if state is not State.IDLE:
            out.append(a.DisconnectInstance())
        if not self.started:
            self.started = True
            out.append(a.Refuse(error))
        elif state in _CLIENT_LIVE:
            out.append(a.EndClient(error))
        _release_client(self, out)
        _cancel_timers(self, out)
        self.state = State.CLOSED


# ---------------------------------------------------------------------- helpers
def _release_client(s: BidiSession, out: list[object]) -> None:
    """The client's side is finished: never leave its reads paused or its window held."""
    if s.client_paused:
        s.client_paused = False
        out.append(a.ResumeClientReads())
    if s.unacked:
        out.append(a.Acknowledge(s.unacked))
        s.unacked = 0
    s.early = None


def _resume_instance(s: BidiSession, out: list[object]) -> None:
    if s.instance_paused:
        s.instance_paused = False
        out.append(a.ResumeInstanceReads())


def _cancel(s: BidiSession, timer: e.Timer, out: list[object]) -> None:
    if timer in s.timers:
        del s.timers[timer]
        out.append(a.CancelTimer(timer))


def _cancel_timers(s: BidiSession, out: list[object]) -> None:
    for timer in (e.Timer.CONFIRM, e.Timer.CLOSE, e.Timer.ABORT, e.Timer.IDLE, e.Timer.MAX_DURATION):
        _cancel(s, timer, out)


def _arm(s: BidiSession, timer: e.Timer, seconds: float, out: list[object]) -> None:
    s.timers[timer] = True
    out.append(a.StartTimer(timer, seconds))


def _close_instance(s: BidiSession, code: int, reason: str, out: list[object]) -> None:
    """Send our close to the instance, drain what it still says, cut it at the deadline."""
    out.append(a.CloseInstance(code, close_reason(reason)))
    _resume_instance(s, out)
    _cancel(s, e.Timer.CLOSE, out)
    _arm(s, e.Timer.ABORT, s.limits.abort_timeout, out)


def _serve_fail(s: BidiSession, error: BidistreamError, out: list[object]) -> Input | None:
    """The serving side ends an attached session: tell the client, close the instance."""
    out.append(a.EndClient(error))
    _release_client(s, out)
    _close_instance(s, wire_form(error).ws_close, error.message, out)
    return None


def _refuse(s: BidiSession, error: BidistreamError, out: list[object]) -> None:
    s.started = True
    out.append(a.Refuse(error))
    _release_client(s, out)
    _cancel_timers(s, out)


# ---------------------------------------------------------------------- effects
def _nothing(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    return None


def _connect(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    out.append(a.ConnectInstance())
    if s.limits.max_duration is not None:
        _arm(s, e.Timer.MAX_DURATION, s.limits.max_duration, out)
    return None


def _hold_client(s: BidiSession, ev: e.ClientPart, out: list[object]) -> Input | None:
    assert s.early is not None
    s.early.append((ev.data, ev.text, ev.fin))
    if not s.client_paused:
        # Nothing more is read until the instance is there: bounded by the socket.
        s.client_paused = True
        out.append(a.PauseClientReads())
    return None


def _count_bytes(s: BidiSession, ev: e.ClientBytes, out: list[object]) -> Input | None:
    s.unacked += ev.n
    return None


def _note_input_end(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.input_ended = True
    return None


def _note_client_blocked(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.client_blocked = True
    return None


def _note_client_writable(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.client_blocked = False
    return None


def _note_instance_blocked(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.instance_blocked = True
    return None


def _note_instance_writable(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.instance_blocked = False
    return None


def _abandon(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    """The client left before anything was relayed: cut the connect and its socket."""
    out.append(a.DisconnectInstance())
    _cancel_timers(s, out)
    s.early = None
    s.started = True
    s.client_paused = False  # nobody left to read from
    s.unacked = 0
    return None


def _refuse_and_cut(s: BidiSession, ev: e.ClientFailed | e.Failed, out: list[object]) -> Input | None:
    out.append(a.DisconnectInstance())
    _refuse(s, ev.error, out)
    return None


def _cut_for_duration(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    out.append(a.DisconnectInstance())
    _refuse(s, _duration_error(s), out)
    return None


def _connect_failed(s: BidiSession, ev: e.ConnectFailed, out: list[object]) -> Input | None:
    _refuse(s, ev.error, out)
    return None


def _probe(s: BidiSession, ev: e.InstanceConnected, out: list[object]) -> Input | None:
    s.variant = ev.variant
    s.relayed = 0
    s.missed = 0
    timeout = s.limits.confirm_timeout
    if timeout is None:
        return Input.CONFIRM_TIMER
    out.append(a.PingInstance())
    _arm(s, e.Timer.CONFIRM, timeout, out)
    return None


def _attach(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    """The instance kept the session: start the response, replay both buffers, in order."""
    _cancel(s, e.Timer.CONFIRM, out)
    s.started = True
    out.append(a.Accept(s.variant))
    if s.limits.idle_timeout is not None:
        _arm(s, e.Timer.IDLE, s.limits.idle_timeout / 2, out)
    early, s.early = s.early, None
    for data, text, fin in early or ():
        out.append(_to_instance_action(s, data, text, fin))
    if not s.client_blocked:
        _resume_instance(s, out)
    if not s.instance_blocked:
        if s.client_paused:
            s.client_paused = False
            out.append(a.ResumeClientReads())
        if s.unacked:
            out.append(a.Acknowledge(s.unacked))
            s.unacked = 0
    return Input.CLIENT_ENDED if s.input_ended else None


def _attach_and_relay(s: BidiSession, ev: e.InstanceFrame, out: list[object]) -> Input | None:
    """The instance's first frame confirms it: attach, then relay the frame itself."""
    follow = _attach(s, ev, out)
    _to_client(s, ev, out)
    return follow


def _attach_then_close(s: BidiSession, ev: e.InstanceClosed, out: list[object]) -> Input | None:
    _attach(s, ev, out)
    return Input.INSTANCE_CLOSED


def _retry(s: BidiSession, ev: e.InstanceClosed, out: list[object]) -> Input | None:
    """A full instance closed before relaying anything: ask for the next candidate."""
    _cancel(s, e.Timer.CONFIRM, out)
    s.instance_paused = False
    s.instance_blocked = False
    out.append(a.ConnectInstance(retry=True, after=ev.error))
    return None


def _to_instance_action(s: BidiSession, data: bytes, text: bool | None, fin: bool) -> a.SendToInstance:
    kind = s._out_text
    if kind is None:  # a new message (a stray continuation starts one as binary)
        kind = bool(text)
        cont = False
    else:
        cont = True
    s._out_text = None if fin else kind
    return a.SendToInstance(data, kind, fin, cont)


def _to_client_action(s: BidiSession, data: bytes, text: bool | None, fin: bool) -> a.SendToClient:
    kind = s._in_text
    if kind is None:
        kind = bool(text)
        cont = False
    else:
        cont = True
    s._in_text = None if fin else kind
    return a.SendToClient(data, kind, fin, cont)


def _to_instance(s: BidiSession, ev: e.ClientPart, out: list[object]) -> Input | None:
    # The hot path: _to_instance_action inlined (one call less per frame).
    s.active = True
    kind = s._out_text
    fin = ev.fin
    if kind is None:
        s._out_text = None if fin else bool(ev.text)
        out.append(a.SendToInstance(ev.data, bool(ev.text), fin, False))
    else:
        if fin:
            s._out_text = None
        out.append(a.SendToInstance(ev.data, kind, fin, True))
    return None


def _to_client(s: BidiSession, ev: e.InstanceFrame, out: list[object]) -> Input | None:
    s.active = True
    s.relayed += 1
    kind = s._in_text
    fin = ev.fin
    if kind is None:
        s._in_text = None if fin else bool(ev.text)
        out.append(a.SendToClient(ev.data, bool(ev.text), fin, False))
    else:
        if fin:
            s._in_text = None
        out.append(a.SendToClient(ev.data, kind, fin, True))
    return None


def _ack(s: BidiSession, ev: e.ClientBytes, out: list[object]) -> Input | None:
    if s.instance_blocked:
        s.unacked += ev.n
    else:
        out.append(a.Acknowledge(s.unacked + ev.n))
        s.unacked = 0
    return None


def _ack_now(s: BidiSession, ev: e.ClientBytes, out: list[object]) -> Input | None:
    """The session no longer relays client data: give the window straight back."""
    out.append(a.Acknowledge(s.unacked + ev.n))
    s.unacked = 0
    return None


def _end_input(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.input_ended = True
    out.append(a.CloseInstanceInput())
    if s.limits.close_timeout is not None:
        _arm(s, e.Timer.CLOSE, s.limits.close_timeout, out)
    return None


def _abort(s: BidiSession, ev: e.ClientGone, out: list[object]) -> Input | None:
    """The client vanished from an attached session: close the instance, never deadlock it."""
    s.started = True
    s.client_paused = False
    s.unacked = 0
    _close_instance(s, 1001, ev.reason, out)
    return None


def _fail_client(s: BidiSession, ev: e.ClientFailed, out: list[object]) -> Input | None:
    return _serve_fail(s, ev.error, out)


def _failed(s: BidiSession, ev: e.Failed, out: list[object]) -> Input | None:
    return _serve_fail(s, ev.error, out)


def _client_blocked(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.client_blocked = True
    if not s.instance_paused:
        s.instance_paused = True
        out.append(a.PauseInstanceReads())
    return None


def _client_writable(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.client_blocked = False
    _resume_instance(s, out)
    return None


def _instance_blocked(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.instance_blocked = True
    if not s.client_paused:
        s.client_paused = True
        out.append(a.PauseClientReads())
    return None


def _instance_writable(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.instance_blocked = False
    if s.client_paused:
        s.client_paused = False
        out.append(a.ResumeClientReads())
    if s.unacked:
        out.append(a.Acknowledge(s.unacked))
        s.unacked = 0
    return None


def _pong(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    s.missed = 0
    return None


def _ping(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    if s.missed >= s.limits.missed_pongs:
        return Input.PING_TIMEOUT
    s.missed += 1
    out.append(a.PingInstance())
    return None


def _ping_timeout(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    return _serve_fail(
        s,
        PingTimeoutError(
            f"the model container did not answer {s.missed} consecutive pings; the session was closed"
        ),
        out,
    )


def _idle_tick(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    """Ticks come every half idle timeout: two quiet ones in a row mean a full timeout of silence."""
    timeout = s.limits.idle_timeout
    if timeout is None:
        return None
    if s.active:
        s.active = False
        s.quiet_ticks = 0
    else:
        s.quiet_ticks += 1
        if s.quiet_ticks >= 2:
            return Input.IDLE_TIMEOUT
    _arm(s, e.Timer.IDLE, timeout / 2, out)
    return None


def _idle_timeout(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    return _serve_fail(
        s, IdleTimeoutError(f"no frames for {s.limits.idle_timeout:g} s; closing idle session"), out
    )


def _duration_error(s: BidiSession) -> SessionTimeoutError:
    cap = s.limits.max_duration
    said = f"{cap:g} s " if cap is not None else ""
    return SessionTimeoutError(f"max session duration {said}reached; reconnect")


def _max_duration(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    return _serve_fail(s, _duration_error(s), out)


def _close_timeout(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    return _serve_fail(
        s,
        ModelTimeoutError(
            f"the model did not close the session within {s.limits.close_timeout:g} s "
            "after the client ended its input"
        ),
        out,
    )


def _instance_done(s: BidiSession, ev: e.InstanceClosed, out: list[object]) -> Input | None:
    """The instance closed: end the client's side with its error (if any)."""
    out.append(a.EndClient(ev.error))
    _release_client(s, out)
    _cancel_timers(s, out)
    return None


def _closed(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    _cancel_timers(s, out)
    return None


def _cut(s: BidiSession, ev: object, out: list[object]) -> Input | None:
    """The instance did not finish its close in time: abort its transport."""
    out.append(a.DisconnectInstance())
    _cancel_timers(s, out)
    return None


# ---------------------------------------------------------------------- the table
S, In = State, Input
_CLIENT_LIVE = frozenset({S.CONNECTING, S.CONFIRMING, S.OPEN, S.HALF_CLOSED})

TRANSITIONS: dict[tuple[State, Input], tuple[Effect, State]] = {
    # IDLE: the adapter validated the request.
    (S.IDLE, In.START): (_connect, S.CONNECTING),
    (S.IDLE, In.CLIENT_GONE): (_nothing, S.CLOSED),
    (S.IDLE, In.CLIENT_FAILED): (_connect_failed, S.CLOSED),  # type: ignore[dict-item]
    (S.IDLE, In.FAILED): (_connect_failed, S.CLOSED),  # type: ignore[dict-item]
    # CONNECTING: a connect to a candidate is in flight; client frames wait.
    (S.CONNECTING, In.CLIENT_PART): (_hold_client, S.CONNECTING),  # type: ignore[dict-item]
    (S.CONNECTING, In.CLIENT_BYTES): (_count_bytes, S.CONNECTING),  # type: ignore[dict-item]
    (S.CONNECTING, In.CLIENT_ENDED): (_note_input_end, S.CONNECTING),
    (S.CONNECTING, In.CLIENT_GONE): (_abandon, S.CLOSED),
    (S.CONNECTING, In.CLIENT_FAILED): (_refuse_and_cut, S.CLOSED),  # type: ignore[dict-item]
    (S.CONNECTING, In.CLIENT_BLOCKED): (_note_client_blocked, S.CONNECTING),
    (S.CONNECTING, In.CLIENT_WRITABLE): (_note_client_writable, S.CONNECTING),
    (S.CONNECTING, In.CONNECTED): (_probe, S.CONFIRMING),  # type: ignore[dict-item]
    (S.CONNECTING, In.CONNECT_FAILED): (_connect_failed, S.CLOSED),  # type: ignore[dict-item]
    (S.CONNECTING, In.CONFIRM_TIMER): (_nothing, S.CONNECTING),  # the last candidate's, stale
    (S.CONNECTING, In.PING_TICK): (_nothing, S.CONNECTING),
    (S.CONNECTING, In.IDLE_TICK): (_nothing, S.CONNECTING),
    (S.CONNECTING, In.MAX_DURATION): (_cut_for_duration, S.CLOSED),
    (S.CONNECTING, In.FAILED): (_refuse_and_cut, S.CLOSED),  # type: ignore[dict-item]
    # CONFIRMING: the instance accepted; wait for a frame, a pong or the timer.
    (S.CONFIRMING, In.CLIENT_PART): (_hold_client, S.CONFIRMING),  # type: ignore[dict-item]
    (S.CONFIRMING, In.CLIENT_BYTES): (_count_bytes, S.CONFIRMING),  # type: ignore[dict-item]
    (S.CONFIRMING, In.CLIENT_ENDED): (_note_input_end, S.CONFIRMING),
    (S.CONFIRMING, In.CLIENT_GONE): (_abandon, S.CLOSED),
    (S.CONFIRMING, In.CLIENT_FAILED): (_refuse_and_cut, S.CLOSED),  # type: ignore[dict-item]
    (S.CONFIRMING, In.CLIENT_BLOCKED): (_note_client_blocked, S.CONFIRMING),
    (S.CONFIRMING, In.CLIENT_WRITABLE): (_note_client_writable, S.CONFIRMING),
    (S.CONFIRMING, In.INSTANCE_FRAME): (_attach_and_relay, S.OPEN),  # type: ignore[dict-item]
    (S.CONFIRMING, In.INSTANCE_PONG): (_attach, S.OPEN),
    (S.CONFIRMING, In.CONFIRM_TIMER): (_attach, S.OPEN),
    (S.CONFIRMING, In.INSTANCE_FULL): (_retry, S.CONNECTING),  # type: ignore[dict-item]
    (S.CONFIRMING, In.INSTANCE_CLOSED): (_attach_then_close, S.OPEN),  # type: ignore[dict-item]
    (S.CONFIRMING, In.INSTANCE_BLOCKED): (_note_instance_blocked, S.CONFIRMING),
    (S.CONFIRMING, In.INSTANCE_WRITABLE): (_note_instance_writable, S.CONFIRMING),
    (S.CONFIRMING, In.PING_TICK): (_nothing, S.CONFIRMING),
    (S.CONFIRMING, In.IDLE_TICK): (_nothing, S.CONFIRMING),
    (S.CONFIRMING, In.MAX_DURATION): (_cut_for_duration, S.CLOSED),
    (S.CONFIRMING, In.FAILED): (_refuse_and_cut, S.CLOSED),  # type: ignore[dict-item]
}

# OPEN and HALF_CLOSED share every row but the client's own input and the close timer.
for _st in (S.OPEN, S.HALF_CLOSED):
    TRANSITIONS.update(
        {
            (_st, In.CLIENT_BYTES): (_ack, _st),  # type: ignore[dict-item]
            (_st, In.CLIENT_GONE): (_abort, S.ABORTING),  # type: ignore[dict-item]
            (_st, In.CLIENT_FAILED): (_fail_client, S.ABORTING),  # type: ignore[dict-item]
            (_st, In.CLIENT_BLOCKED): (_client_blocked, _st),
            (_st, In.CLIENT_WRITABLE): (_client_writable, _st),
            (_st, In.INSTANCE_FRAME): (_to_client, _st),  # type: ignore[dict-item]
            (_st, In.INSTANCE_PONG): (_pong, _st),
            (_st, In.INSTANCE_FULL): (_instance_done, S.CLOSED),  # type: ignore[dict-item]
            (_st, In.INSTANCE_CLOSED): (_instance_done, S.CLOSED),  # type: ignore[dict-item]
            (_st, In.INSTANCE_BLOCKED): (_instance_blocked, _st),
            (_st, In.INSTANCE_WRITABLE): (_instance_writable, _st),
            (_st, In.CONFIRM_TIMER): (_nothing, _st),  # stale: attached already
            (_st, In.ABORT_TIMER): (_nothing, _st),  # stale: no close of ours pending
            (_st, In.PING_TICK): (_ping, _st),
            (_st, In.PING_TIMEOUT): (_ping_timeout, S.ABORTING),
            (_st, In.IDLE_TICK): (_idle_tick, _st),
            (_st, In.IDLE_TIMEOUT): (_idle_timeout, S.ABORTING),
            (_st, In.MAX_DURATION): (_max_duration, S.ABORTING),
            (_st, In.FAILED): (_failed, S.ABORTING),  # type: ignore[dict-item]
        }
    )
TRANSITIONS.update(
    {
        (S.OPEN, In.CLIENT_PART): (_to_instance, S.OPEN),  # type: ignore[dict-item]
        (S.OPEN, In.CLIENT_ENDED): (_end_input, S.HALF_CLOSED),
        (S.OPEN, In.CLOSE_TIMER): (_nothing, S.OPEN),  # stale
        # The client said it was done: more input is a protocol error (missing pair),
        # but a repeated end (EOF after a close frame) is not.
        (S.HALF_CLOSED, In.CLIENT_ENDED): (_nothing, S.HALF_CLOSED),
        (S.HALF_CLOSED, In.CLOSE_TIMER): (_close_timeout, S.ABORTING),
    }
)

# ABORTING: our close is on its way to the instance; drain it until it answers or the timer cuts it.
# CLOSED: terminal; client bytes still get their window back, everything else is dropped.
for _st, _end in ((S.ABORTING, S.CLOSED), (S.CLOSED, S.CLOSED)):
    for _inp in Input:
        TRANSITIONS[(_st, _inp)] = (_nothing, _st)
    TRANSITIONS[(_st, In.CLIENT_BYTES)] = (_ack_now, _st)  # type: ignore[assignment]
TRANSITIONS[(S.ABORTING, In.INSTANCE_CLOSED)] = (_closed, S.CLOSED)
TRANSITIONS[(S.ABORTING, In.INSTANCE_FULL)] = (_closed, S.CLOSED)
TRANSITIONS[(S.ABORTING, In.ABORT_TIMER)] = (_cut, S.CLOSED)
# Internal inputs are only raised from OPEN/HALF_CLOSED effects.
for _st in (S.ABORTING, S.CLOSED):
    del TRANSITIONS[(_st, In.PING_TIMEOUT)]
    del TRANSITIONS[(_st, In.IDLE_TIMEOUT)]
del _end

# The same table, one row per state: the hot path looks up two identity-hashed keys, no tuple.
_ROWS: dict[State, dict[Input, tuple[Effect, State]]] = {st_: {} for st_ in State}
for (_st, _inp), _entry in TRANSITIONS.items():
    _ROWS[_st][_inp] = _entry
del _st, _inp, _entry

# States whose CLIENT_PART / INSTANCE_FRAME row is the plain relay staying in the same state.
_RELAYS_CLIENT = frozenset(
    st_ for st_, row in _ROWS.items() if row.get(In.CLIENT_PART) == (_to_instance, st_)
)
_RELAYS_INSTANCE = frozenset(
    st_ for st_, row in _ROWS.items() if row.get(In.INSTANCE_FRAME) == (_to_client, st_)
)
