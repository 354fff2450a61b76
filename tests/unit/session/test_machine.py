"""The session table, driven pair by pair and by random event sequences.

As h2's state-machine tests do: every (state, input) pair either follows the
table or closes the session with a reason, and no sequence of events crashes,
loses, duplicates or reorders a frame, or leaves a session that cannot end.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bidistream.errors import InputValidationError, InstanceFullError, ShuttingDownError
from bidistream.session import TRANSITIONS, BidiSession, Input, SessionLimits, State
from bidistream.session import actions as a
from bidistream.session import events as e

_INTERNAL = {Input.PING_TIMEOUT, Input.IDLE_TIMEOUT}


def sample(kind: Input, n: int = 0) -> object:
    """One event of each adapter-facing kind."""
    return {
        Input.START: lambda: e.Start(),
        Input.CLIENT_PART: lambda: e.ClientPart(f"c{n}".encode(), n % 2 == 0, True),
        Input.CLIENT_BYTES: lambda: e.ClientBytes(10),
        Input.CLIENT_ENDED: lambda: e.ClientEnded(),
        Input.CLIENT_GONE: lambda: e.ClientGone(),
        Input.CLIENT_FAILED: lambda: e.ClientFailed(InputValidationError("bad event")),
        Input.CLIENT_BLOCKED: lambda: e.ClientBlocked(),
        Input.CLIENT_WRITABLE: lambda: e.ClientWritable(),
        Input.CONNECTED: lambda: e.InstanceConnected("v1"),
        Input.CONNECT_FAILED: lambda: e.ConnectFailed(InstanceFullError("no instance")),
        Input.INSTANCE_FRAME: lambda: e.InstanceFrame(f"i{n}".encode(), False, True),
        Input.INSTANCE_PONG: lambda: e.InstancePong(),
        Input.INSTANCE_FULL: lambda: e.InstanceClosed(InstanceFullError("full", code="1013")),
        Input.INSTANCE_CLOSED: lambda: e.InstanceClosed(None),
        Input.INSTANCE_BLOCKED: lambda: e.InstanceBlocked(),
        Input.INSTANCE_WRITABLE: lambda: e.InstanceWritable(),
        Input.CONFIRM_TIMER: lambda: e.TimerFired(e.Timer.CONFIRM),
        Input.CLOSE_TIMER: lambda: e.TimerFired(e.Timer.CLOSE),
        Input.ABORT_TIMER: lambda: e.TimerFired(e.Timer.ABORT),
        Input.PING_TICK: lambda: e.TimerFired(e.Timer.PING),
        Input.IDLE_TICK: lambda: e.TimerFired(e.Timer.IDLE),
        Input.MAX_DURATION: lambda: e.TimerFired(e.Timer.MAX_DURATION),
        Input.FAILED: lambda: e.Failed(ShuttingDownError("shutting down")),
    }[kind]()


PATHS: dict[State, list[object]] = {
    State.IDLE: [],
    State.CONNECTING: [e.Start()],
    State.CONFIRMING: [e.Start(), e.InstanceConnected()],
    State.OPEN: [e.Start(), e.InstanceConnected(), e.InstancePong()],
    State.HALF_CLOSED: [e.Start(), e.InstanceConnected(), e.InstancePong(), e.ClientEnded()],
    State.ABORTING: [e.Start(), e.InstanceConnected(), e.InstancePong(), e.ClientGone()],
    State.CLOSED: [e.Start(), e.InstanceConnected(), e.InstancePong(), e.InstanceClosed(None)],
}


def at(state: State, limits: SessionLimits | None = None) -> BidiSession:
    s = BidiSession(limits)
    for ev in PATHS[state]:
        s.handle(ev)
    assert s.state is state
    return s


def kinds(actions: list[object]) -> list[type]:
    return [type(x) for x in actions]


# ---------------------------------------------------------------------- every pair
@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("kind", [k for k in Input if k not in _INTERNAL])
def test_every_pair_follows_the_table_or_closes_with_a_reason(state: State, kind: Input) -> None:
    s = at(state)
    s.handle(sample(kind))
    entry = TRANSITIONS.get((state, kind))
    if entry is None:
        assert s.state is State.CLOSED
        assert s.reason is not None and kind.value in s.reason and state.value in s.reason
    else:
        assert s.reason is None
        assert s.state in State


def test_the_table_covers_every_state() -> None:
    assert {st for st, _ in TRANSITIONS} == set(State)
    assert not [k for (st_, k) in TRANSITIONS if st_ in (State.ABORTING, State.CLOSED) and k in _INTERNAL]


def test_closed_is_terminal() -> None:
    assert all(nxt is State.CLOSED for (st_, _), (_, nxt) in TRANSITIONS.items() if st_ is State.CLOSED)


# ---------------------------------------------------------------------- the happy path
def test_hold_confirm_attach_replay() -> None:
    s = BidiSession()
    assert kinds(s.handle(e.Start())) == [a.ConnectInstance]
    # The client speaks first: held, its reads paused, its window not given back.
    assert kinds(s.handle(e.ClientPart(b"one", True, False))) == [a.PauseClientReads]
    assert s.handle(e.ClientPart(b"two", None, True)) == []
    assert s.handle(e.ClientBytes(40)) == []
    out = s.handle(e.InstanceConnected("v2"))
    assert kinds(out) == [a.PingInstance, a.StartTimer]
    out = s.handle(e.InstancePong())
    assert out == [
        a.CancelTimer(e.Timer.CONFIRM),
        a.Accept("v2"),
        a.SendToInstance(b"one", True, False, False),
        a.SendToInstance(b"two", True, True, True),
        a.ResumeClientReads(),
        a.Acknowledge(40),
    ]
    assert s.state is State.OPEN
    assert s.handle(e.InstanceFrame(b"x", False, False)) == [a.SendToClient(b"x", False, False, False)]
    assert s.handle(e.InstanceFrame(b"y", None, True)) == [a.SendToClient(b"y", False, True, True)]
    out = s.handle(e.ClientEnded())
    assert out == [a.CloseInstanceInput(), a.StartTimer(e.Timer.CLOSE, 30.0)]
    out = s.handle(e.InstanceClosed(None))
    assert out == [a.EndClient(None), a.CancelTimer(e.Timer.CLOSE)]
    assert s.closed


def test_first_instance_frame_confirms_and_is_relayed_after_the_early_client_frames() -> None:
    s = at(State.CONNECTING)
    s.handle(e.ClientPart(b"early", False, True))
    s.handle(e.InstanceConnected())
    out = s.handle(e.InstanceFrame(b"hello", True, True))
    sends = [x for x in out if isinstance(x, a.SendToInstance | a.SendToClient)]
    assert sends == [
        a.SendToInstance(b"early", False, True, False),
        a.SendToClient(b"hello", True, True, False),
    ]


def test_input_ended_before_attach_closes_input_right_after_the_replay() -> None:
    s = at(State.CONFIRMING)
    s.handle(e.ClientPart(b"only", True, True))
    s.handle(e.ClientEnded())
    out = s.handle(e.TimerFired(e.Timer.CONFIRM))
    assert kinds(out)[-2:] == [a.CloseInstanceInput, a.StartTimer]
    assert s.state is State.HALF_CLOSED


def test_full_instance_sends_the_session_to_the_next_one_keeping_early_frames() -> None:
    s = at(State.CONNECTING)
    s.handle(e.ClientPart(b"keep", True, True))
    s.handle(e.InstanceConnected())
    full = InstanceFullError("instance full", code="1013")
    out = s.handle(e.InstanceClosed(full))
    assert out == [a.CancelTimer(e.Timer.CONFIRM), a.ConnectInstance(retry=True, after=full)]
    assert s.state is State.CONNECTING
    s.handle(e.InstanceConnected())
    out = s.handle(e.InstancePong())
    assert a.SendToInstance(b"keep", True, True, False) in out


def test_connect_failure_refuses_and_releases_the_client() -> None:
    s = at(State.CONNECTING)
    s.handle(e.ClientPart(b"x", True, True))
    s.handle(e.ClientBytes(7))
    err = InstanceFullError("no capacity")
    assert s.handle(e.ConnectFailed(err)) == [a.Refuse(err), a.ResumeClientReads(), a.Acknowledge(7)]
    assert s.closed


# ---------------------------------------------------------------------- issue 10, by design
@pytest.mark.parametrize("state", [State.CONNECTING, State.CONFIRMING])
def test_10_1_client_gone_while_connecting_cuts_the_instance_transport(state: State) -> None:
    s = at(state)
    out = s.handle(e.ClientGone())
    assert a.DisconnectInstance() in out
    assert s.closed
    # Whatever the connect still reports afterwards changes nothing.
    assert s.handle(e.InstanceConnected()) == []
    assert s.handle(e.InstanceFrame(b"late", True, True)) == []


@pytest.mark.parametrize("state", [State.OPEN, State.HALF_CLOSED])
def test_10_2_client_gone_with_instance_reads_paused_drains_then_cuts(state: State) -> None:
    s = at(state)
    s.handle(e.ClientBlocked())
    assert s.instance_paused
    out = s.handle(e.ClientGone())
    assert out[0] == a.CloseInstance(1001, "client went away")
    assert a.ResumeInstanceReads() in out
    assert a.StartTimer(e.Timer.ABORT, 0.5) in out
    assert s.state is State.ABORTING and not s.instance_paused
    # What the instance still says is drained, not relayed; the deadline cuts it.
    assert s.handle(e.InstanceFrame(b"more", False, True)) == []
    assert s.handle(e.TimerFired(e.Timer.ABORT)) == [a.DisconnectInstance()]
    assert s.closed


def test_10_2_instance_answering_the_close_ends_it_before_the_deadline() -> None:
    s = at(State.OPEN)
    s.handle(e.ClientGone())
    assert s.handle(e.InstanceClosed(None)) == [a.CancelTimer(e.Timer.ABORT)]
    assert s.closed


def test_10_5_refusal_after_an_early_frame_resumes_client_reads() -> None:
    s = at(State.CONNECTING)
    assert kinds(s.handle(e.ClientPart(b"early", True, True))) == [a.PauseClientReads]
    out = s.handle(e.ConnectFailed(InstanceFullError("full")))
    assert kinds(out) == [a.Refuse, a.ResumeClientReads]
    assert not s.client_paused


def test_failure_while_instance_blocked_resumes_client_reads() -> None:
    s = at(State.OPEN)
    s.handle(e.InstanceBlocked())
    assert s.client_paused
    out = s.handle(e.Failed(ShuttingDownError("bye")))
    assert kinds(out)[:2] == [a.EndClient, a.ResumeClientReads]


# ---------------------------------------------------------------------- flow control
def test_bytes_are_acknowledged_only_while_the_instance_is_writable() -> None:
    s = at(State.OPEN)
    assert s.handle(e.ClientBytes(5)) == [a.Acknowledge(5)]
    s.handle(e.InstanceBlocked())
    assert s.handle(e.ClientBytes(6)) == []
    assert s.handle(e.ClientBytes(7)) == []
    assert s.handle(e.InstanceWritable()) == [a.ResumeClientReads(), a.Acknowledge(13)]


def test_client_backpressure_pauses_and_resumes_instance_reads_once() -> None:
    s = at(State.OPEN)
    assert s.handle(e.ClientBlocked()) == [a.PauseInstanceReads()]
    assert s.handle(e.ClientBlocked()) == []
    assert s.handle(e.ClientWritable()) == [a.ResumeInstanceReads()]
    assert s.handle(e.ClientWritable()) == []


# ---------------------------------------------------------------------- timers
def test_ping_misses_fail_the_session() -> None:
    s = at(State.OPEN, SessionLimits(missed_pongs=2))
    assert s.handle(e.TimerFired(e.Timer.PING)) == [a.PingInstance()]
    s.handle(e.InstancePong())
    for _ in range(2):
        assert s.handle(e.TimerFired(e.Timer.PING)) == [a.PingInstance()]
    out = s.handle(e.TimerFired(e.Timer.PING))
    end = out[0]
    assert isinstance(end, a.EndClient) and "consecutive pings" in str(end.error)
    assert s.state is State.ABORTING


def test_close_timeout_fails_with_model_timeout() -> None:
    s = at(State.HALF_CLOSED)
    out = s.handle(e.TimerFired(e.Timer.CLOSE))
    assert isinstance(out[0], a.EndClient) and "did not close the session" in str(out[0].error)
    close = next(x for x in out if isinstance(x, a.CloseInstance))
    assert close.code == 1011 and len(close.reason.encode()) <= 123


def test_idle_needs_two_quiet_ticks_and_activity_resets_them() -> None:
    s = BidiSession(SessionLimits(confirm_timeout=None, idle_timeout=1.0))
    s.handle(e.Start())
    s.handle(e.InstanceConnected())
    assert s.state is State.OPEN
    assert s.handle(e.TimerFired(e.Timer.IDLE)) == [a.StartTimer(e.Timer.IDLE, 0.5)]
    s.handle(e.ClientPart(b"x", True, True))
    assert s.handle(e.TimerFired(e.Timer.IDLE)) == [a.StartTimer(e.Timer.IDLE, 0.5)]
    assert s.handle(e.TimerFired(e.Timer.IDLE)) == [a.StartTimer(e.Timer.IDLE, 0.5)]
    out = s.handle(e.TimerFired(e.Timer.IDLE))
    assert isinstance(out[0], a.EndClient) and "idle" in str(out[0].error)


def test_max_duration_is_armed_at_start_and_ends_the_session() -> None:
    s = BidiSession(SessionLimits(confirm_timeout=None, max_duration=5.0))
    assert s.handle(e.Start()) == [a.ConnectInstance(), a.StartTimer(e.Timer.MAX_DURATION, 5.0)]
    s.handle(e.InstanceConnected())
    out = s.handle(e.TimerFired(e.Timer.MAX_DURATION))
    assert isinstance(out[0], a.EndClient) and "max session duration" in str(out[0].error)


# ---------------------------------------------------------------------- random sequences
_KINDS = [k for k in Input if k not in _INTERNAL]


class Recorder:
    """Feeds events and checks the invariants after each one."""

    def __init__(self, s: BidiSession) -> None:
        self.s = s
        self.parts_in: list[bytes] = []
        self.accepted_parts: list[bytes] = []
        self.frames_in: list[bytes] = []
        self.to_instance: list[bytes] = []
        self.to_client: list[bytes] = []
        self.opened = 0
        self.refused = 0
        self.ended = 0

    def feed(self, ev: object) -> None:
        s = self.s
        before = s.state
        if isinstance(ev, e.ClientPart):
            self.parts_in.append(ev.data)
            if before in (State.CONNECTING, State.CONFIRMING, State.OPEN):
                self.accepted_parts.append(ev.data)
        if isinstance(ev, e.InstanceFrame):
            self.frames_in.append(ev.data)
        out = s.handle(ev)
        for act in out:
            if isinstance(act, a.SendToInstance):
                self.to_instance.append(act.data)
            elif isinstance(act, a.SendToClient):
                assert self.opened and not self.ended, "a frame outside the response"
                self.to_client.append(act.data)
            elif isinstance(act, a.Accept):
                self.opened += 1
            elif isinstance(act, a.Refuse):
                self.refused += 1
            elif isinstance(act, a.EndClient):
                assert self.opened
                self.ended += 1
        if any(isinstance(act, a.Accept) for act in out):
            assert self.to_instance == self.accepted_parts, "attach lost or reordered early frames"
        assert self.opened + self.refused <= 1
        assert self.ended <= 1
        # No loss, duplicate or reorder: what left is a prefix of what came, in order.
        assert self.to_instance == self.parts_in[: len(self.to_instance)]
        assert self.to_client == self.frames_in[: len(self.to_client)]
        if s.state is State.OPEN and self.opened:
            assert self.to_instance == self.accepted_parts
        if s.state is State.ABORTING:
            assert e.Timer.ABORT in s.timers, "aborting without a deadline"
            assert not s.instance_paused, "a paused instance read outlived the client"
        if s.state in (State.ABORTING, State.CLOSED):
            assert not s.client_paused, "client reads left paused after its side ended"


def events_from(kinds_: list[Input]) -> list[object]:
    return [sample(k, i) for i, k in enumerate(kinds_)]


def ends_closed(rec: Recorder) -> None:
    """From anywhere, the adapter's own closing events reach CLOSED."""
    for ev in (e.ClientGone(), e.InstanceClosed(None), e.TimerFired(e.Timer.ABORT)):
        rec.feed(ev)
    assert rec.s.closed


_limits = st.sampled_from(
    [
        SessionLimits(),
        SessionLimits(confirm_timeout=None, close_timeout=None, idle_timeout=2.0, max_duration=9.0),
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_KINDS), max_size=40), _limits)
def test_random_sequences_keep_every_invariant_and_end_closed(
    seq: list[Input], limits: SessionLimits
) -> None:
    rec = Recorder(BidiSession(limits))
    for ev in events_from(seq):
        rec.feed(ev)
    ends_closed(rec)


# Sequences an adapter can really produce, weighted toward the relay's own traffic.
_plausible = st.lists(
    st.sampled_from(
        [Input.CLIENT_PART] * 6
        + [Input.INSTANCE_FRAME] * 6
        + [Input.CLIENT_BYTES] * 2
        + [
            Input.CLIENT_BLOCKED,
            Input.CLIENT_WRITABLE,
            Input.INSTANCE_BLOCKED,
            Input.INSTANCE_WRITABLE,
            Input.INSTANCE_PONG,
            Input.PING_TICK,
        ]
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_KINDS), max_size=3), _plausible, st.sampled_from(list(Input)))
@example([], [Input.PING_TICK] * 6 + [Input.CLIENT_PART], Input.START)  # found by a CI run's seed
def test_attached_sessions_relay_everything_in_order(
    before: list[Input], traffic: list[Input], ending: Input
) -> None:
    s = BidiSession()
    rec = Recorder(s)
    rec.feed(e.Start())
    for ev in events_from([k for k in before if k is Input.CLIENT_PART]):
        rec.feed(ev)
    rec.feed(e.InstanceConnected())
    rec.feed(e.InstancePong())
    assert s.state is State.OPEN
    for i, k in enumerate(traffic):
        if k is Input.INSTANCE_FRAME and s.instance_paused:
            continue  # a paused read delivers nothing
        if k is Input.PING_TICK and s.missed >= s.limits.missed_pongs:
            # A live instance answers before the limit; one that does not is closed, which
            # test_ping_misses_fail_the_session covers.  (Six ticks in a row once closed it here.)
            rec.feed(e.InstancePong())
        rec.feed(sample(k, 100 + i))
    assert s.state is State.OPEN
    # Nothing lost while attached: every part and every frame went across.
    assert rec.to_instance == rec.parts_in
    assert rec.to_client == rec.frames_in
    if ending not in _INTERNAL:
        rec.feed(sample(ending))
    ends_closed(rec)


def test_effects_are_callables() -> None:
    assert all(isinstance(effect, Callable) for effect, _ in TRANSITIONS.values())  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the hot path agrees with the table
def _slots(s: BidiSession) -> dict[str, object]:
    return {name: getattr(s, name) for name in BidiSession.__slots__}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("midway", [False, True])
@pytest.mark.parametrize("side", ["client", "instance"])
def test_pass_frame_is_exactly_what_the_table_does(state: State, midway: bool, side: str) -> None:
    fast, slow = at(state), at(state)
    if midway:  # a fragmented message in progress: only the table may continue it
        for s in (fast, slow):
            s.handle(
                e.ClientPart(b"f", True, False) if side == "client" else e.InstanceFrame(b"f", True, False)
            )
    before = fast.state
    if side == "client":
        passed = fast.pass_client_frame()
        out = slow.handle(e.ClientPart(b"x", False, True))
        relayed = [a.SendToInstance(b"x", False, True, False)]
    else:
        passed = fast.pass_instance_frame()
        out = slow.handle(e.InstanceFrame(b"x", False, True))
        relayed = [a.SendToClient(b"x", False, True, False)]
    if passed:
        assert out == relayed
        assert _slots(fast) == _slots(slow)
    else:
        assert out != relayed or midway
        assert fast.state is before
