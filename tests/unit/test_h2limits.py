"""The HTTP/2 front door's connection-level accounting, without sockets."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from bidistream.gateway.h2limits import (
    PREFACE_LEN,
    BodyBudget,
    ErrorCode,
    FrameGuard,
    request_header_problem,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
assert len(PREFACE) == PREFACE_LEN


def guard(now: float = 0.0, **over: float) -> FrameGuard:
    kw: dict[str, float] = {
        "max_frame_size": 16384,
        "control_frames_per_second": 10,
        "control_frame_burst": 20,
        "window_updates_per_second": 100,
        "window_update_burst": 100,
        "frame_timeout": 5.0,
    }
    kw.update(over)
    return FrameGuard(now=now, **kw)  # type: ignore[arg-type]


def ping() -> bytes:
    return PingFrame(0, b"12345678").serialize()


def data(sid: int, payload: bytes, end: bool = False) -> bytes:
    f = DataFrame(sid, payload)
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def test_valid_traffic_passes() -> None:
    g = guard()
    wire = PREFACE + SettingsFrame(0).serialize() + data(1, b"x" * 16384) + data(1, b"", end=True)
    assert g.feed(wire, 0.0) is None
    assert not g.incomplete and g.deadline() is None


def test_ping_flood_gets_enhance_your_calm() -> None:
    g = guard()
    assert g.feed(PREFACE + ping() * 20, 0.0) is None  # the burst
    v = g.feed(ping(), 0.0)
    assert v is not None and v.code is ErrorCode.ENHANCE_YOUR_CALM
    assert "10 control frames a second" in v.message


def test_rate_refills_with_time() -> None:
    g = guard()
    assert g.feed(PREFACE + ping() * 20, 0.0) is None
    for second in range(1, 50):  # 10 a second is the sustained rate: never past it
        assert g.feed(ping() * 10, float(second)) is None


@pytest.mark.parametrize(
    "frame",
    [
        SettingsFrame(0).serialize(),
        RstStreamFrame(1).serialize(),
        PriorityFrame(1).serialize(),
        data(1, b""),
    ],
    ids=["settings", "rst_stream", "priority", "empty-data"],
)
def test_every_control_frame_counts(frame: bytes) -> None:
    g = guard()
    v = g.feed(PREFACE + frame * 21, 0.0)
    assert v is not None and v.code is ErrorCode.ENHANCE_YOUR_CALM


def test_empty_data_ending_a_stream_is_not_control() -> None:
    g = guard()
    assert g.feed(PREFACE + data(1, b"", end=True) * 50, 0.0) is None


def test_window_updates_have_their_own_bound() -> None:
    g = guard()
    wu = WindowUpdateFrame(0, window_increment=1).serialize()
    assert g.feed(PREFACE + wu * 100, 0.0) is None
    v = g.feed(wu, 0.0)
    assert v is not None and v.code is ErrorCode.ENHANCE_YOUR_CALM and "WINDOW_UPDATE" in v.message


def test_oversize_declared_length_rejected_when_the_header_arrives() -> None:
    g = guard()
    header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    assert g.feed(PREFACE + header[:5], 0.0) is None  # header split across reads
    v = g.feed(header[5:], 0.0)  # no payload byte yet
    assert v is not None and v.code is ErrorCode.FRAME_SIZE_ERROR
    assert "16777215" in v.message and "16384" in v.message


def test_max_sized_frame_is_fine() -> None:
    g = guard()
    assert g.feed(PREFACE + data(1, b"y" * 16384), 0.0) is None


def test_stalled_preface_times_out() -> None:
    g = guard(now=100.0)
    assert g.deadline() == 105.0
    assert g.feed(PREFACE[:10], 101.0) is None
    assert g.check(104.9) is None
    v = g.check(105.0)
    assert v is not None and v.code is ErrorCode.PROTOCOL_ERROR and "preface" in v.message


def test_stalled_frame_times_out_from_its_first_byte() -> None:
    g = guard()
    frame = data(1, b"z" * 1000)
    assert g.feed(PREFACE + frame[:500], 10.0) is None
    assert g.deadline() == 15.0
    assert g.feed(frame[500:600], 14.0) is None  # trickling does not extend the deadline
    v = g.check(15.0)
    assert v is not None and "frame not complete within 5 s" in v.message
    assert g.feed(frame[600:], 14.5) is None
    assert g.deadline() is None and g.check(100.0) is None


def _frames() -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(
        st.builds(lambda n: data(1, b"d" * n), st.integers(1, 16384)),
        st.just(ping()),
        st.just(WindowUpdateFrame(1, window_increment=10).serialize()),
        st.builds(
            lambda n: HeadersFrame(1 + 2 * n, b"\x82", flags=["END_HEADERS"]).serialize(), st.integers(0, 9)
        ),
    )
    return st.lists(one, min_size=1, max_size=15)


@given(_frames(), st.lists(st.integers(1, 4000), min_size=1, max_size=30))
def test_any_split_of_valid_frames_is_fine(frames: list[bytes], cuts: list[int]) -> None:
    g = guard(control_frame_burst=100)
    wire = PREFACE + b"".join(frames)
    pos = 0
    for n in cuts * 100:
        if pos >= len(wire):
            break
        assert g.feed(memoryview(wire)[pos : pos + n], 0.0) is None
        pos += n
    assert g.feed(wire[pos:], 0.0) is None
    assert not g.incomplete


@given(st.integers(16385, 2**24 - 1), st.integers(0, 9), st.integers(1, 8))
def test_any_oversize_header_any_split(length: int, ftype: int, cut: int) -> None:
    g = guard()
    header = length.to_bytes(3, "big") + bytes([ftype, 0]) + (1).to_bytes(4, "big")
    assert g.feed(PREFACE + header[:cut], 0.0) is None
    v = g.feed(header[cut:], 0.0)
    assert v is not None and v.code is ErrorCode.FRAME_SIZE_ERROR


# ---------------------------------------------------------------- BodyBudget
def test_bodies_admitted_while_they_fit() -> None:
    b = BodyBudget(10)
    assert b.open(1, 6)
    assert b.hold(1, 100) == 100
    assert not b.open(3, 6)  # 12 > 10: waits
    assert b.hold(3, 50) == 0 and b.hold(3, 25) == 0
    assert b.release(1) == [(3, 75)]  # admitted, its debt paid
    assert b.hold(3, 5) == 5


def test_one_body_always_proceeds_even_above_the_limit() -> None:
    b = BodyBudget(10)
    assert b.open(1, 50)
    assert b.hold(1, 40) == 40


def test_admission_is_first_come_first_served() -> None:
    b = BodyBudget(10)
    assert b.open(1, 10)
    assert not b.open(3, 8)
    assert not b.open(5, 1)  # would fit beside 3, but 3 was first
    assert b.hold(5, 7) == 0
    assert b.release(1) == [(5, 7)]  # 3 owed nothing; 5 fits beside it now
    assert set(b.admitted) == {3, 5}


def test_released_waiter_pays_nothing() -> None:
    b = BodyBudget(10)
    b.open(1, 10)
    b.open(3, 10)
    b.hold(3, 9)
    assert b.release(3) == []  # reset while waiting
    assert b.release(1) == []
    assert b.reserved == 0 and not b.admitted and not b.waiting


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 12)), min_size=1, max_size=60))
def test_budget_never_deadlocks(ops: list[tuple[int, int]]) -> None:
    """Whatever opens and releases, an admitted body exists while any waits."""
    b = BodyBudget(10)
    live: list[int] = []
    sid = 1
    for op, size in ops:
        if op < 3 or not live:
            b.open(sid, size)
            live.append(sid)
            sid += 2
        else:
            b.release(live.pop(0 if op == 3 else -1))
        assert not b.waiting or b.admitted
        assert b.reserved == sum(b.admitted.values())
        assert len(b.admitted) <= 1 or b.reserved <= b.limit


# ---------------------------------------------------------------- headers
BASE = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/ping")]


def test_good_request_headers() -> None:
    assert request_header_problem([*BASE, (b"content-type", b"x")]) is None


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([*BASE, (b":path", b"/b")], "duplicate"),
        ([h for h in BASE if h[0] != b":path"], ":path"),
        ([h for h in BASE if h[0] != b":method"], ":method"),
        ([*BASE, (b"Upper", b"x")], "uppercase"),
        ([*BASE, (b"connection", b"close")], "Connection-specific"),
        ([*BASE, (b"te", b"gzip")], "TE"),
        ([*BASE, (b":protocol", b"websocket")], ":protocol"),
        ([(b"x-a", b"1"), *BASE], "pseudo"),
    ],
    ids=["dup-path", "no-path", "no-method", "uppercase", "connection", "te", "protocol", "order"],
)
def test_malformed_request_headers(headers: list[tuple[bytes, bytes]], says: str) -> None:
    problem = request_header_problem(headers)
    assert problem is not None and says.lower() in problem.lower()
