"""The HTTP/2 door fed bytes in memory: no socket, a hand-built DoorContext.

Issue 10.3: HEADERS and RST_STREAM for one stream in the same read used to
raise out of ``data_received`` (the window increment on a stream h2 had
already closed), killing the connection and every stream on it.  Each event
is now handled against its stream's state, and a stream whose handler fails
is reset alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidistream.gateway import h2front
from bidistream.gateway.bridge import PingTicker
from bidistream.gateway.context import DoorContext
from bidistream.gateway.h2front import BidiStream, H2Protocol
from bidistream.gateway.http import HttpResponse
from bidistream.gateway.limits import GatewayLimits
from bidistream.routing import StaticRouter
from bidistream.sigv4 import CredentialStore

BIDI = "/endpoints/echo/invocations-bidirectional-stream"


class MemoryTransport:
    """Collects what the door writes; enough of asyncio.Transport for H2Protocol."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _ok(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> HttpResponse:
    return HttpResponse(200, [("content-type", "text/plain"), ("content-length", "3")], b"ok\n")


def door() -> tuple[H2Protocol, MemoryTransport, h2.connection.H2Connection]:
    ctx = DoorContext(
        limits=GatewayLimits(),
        # Nothing listens there: bidi sessions are refused, which is all these tests need.
        router=StaticRouter({"echo": "http://127.0.0.1:9"}),
        credentials=CredentialStore({}),
        ticker=PingTicker(60.0, 5),
        connections=set(),
        handle_http=_ok,
        upgrade_ws=lambda transport, req, trailing: None,
    )
    proto = H2Protocol(ctx)
    transport = MemoryTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.receive_data(bytes(transport.out))
    transport.out.clear()
    return proto, transport, client


def headers(path: str, method: str = "POST") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]


def replies(client: h2.connection.H2Connection, transport: MemoryTransport) -> list[Any]:
    events = client.receive_data(bytes(transport.out))
    transport.out.clear()
    return events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_headers_and_rst_in_one_read_touch_only_that_stream() -> None:
    proto, transport, client = door()
    client.send_headers(1, headers("/ping", "GET"), end_stream=True)
    for sid in (3, 5, 7):
        client.send_headers(sid, headers(BIDI))
        client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    proto.data_received(client.data_to_send())  # one read: must not raise
    await settle()
    proto.flush()
    events = replies(client, transport)
    answered = [ev for ev in events if isinstance(ev, h2.events.ResponseReceived)]
    assert [ev.stream_id for ev in answered] == [1]
    assert not transport.closed
    assert set(proto.streams) <= {1}
    # The connection still takes new streams.
    client.send_headers(9, headers("/ping", "GET"), end_stream=True)
    proto.data_received(client.data_to_send())
    await settle()
    proto.flush()
    assert any(
        isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 9 for ev in replies(client, transport)
    )


async def test_headers_and_goaway_in_one_read_end_the_streams_and_close() -> None:
    proto, transport, client = door()
    client.send_headers(1, headers(BIDI))
    client.close_connection()
    proto.data_received(client.data_to_send())
    assert transport.closed
    assert proto.streams == {}


async def test_a_failing_stream_is_reset_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    proto, transport, client = door()

    def broken(self: BidiStream) -> None:
        raise RuntimeError("a bug in one stream's handler")

    monkeypatch.setattr(BidiStream, "start", broken)
    client.send_headers(1, headers(BIDI))
    client.send_headers(3, headers("/ping", "GET"), end_stream=True)
    proto.data_received(client.data_to_send())
    await settle()
    proto.flush()
    events = replies(client, transport)
    resets = [ev for ev in events if isinstance(ev, h2.events.StreamReset)]
    assert [(ev.stream_id, ev.error_code) for ev in resets] == [(1, h2.errors.ErrorCodes.INTERNAL_ERROR)]
    assert any(isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3 for ev in events)
    assert not transport.closed


# ---------------------------------------------------------------------- the DATA fast path
class Recording:
    """A stream handler that records its DATA and gives the window back at each read's end."""

    fast = True
    wide_window = False  # as before: only real bidi streams get the wide window

    def __init__(self, proto: H2Protocol, sid: int) -> None:
        self.proto, self.sid = proto, sid
        self.got = bytearray()
        self.pending = 0
        self.ended = False

    def start(self) -> None: ...

    def on_data(self, data: bytes, fc_len: int) -> None:
        self.got += data
        self.pending += fc_len

    def more_data(self) -> None: ...

    def after_data(self) -> None:
        if self.pending:
            self.proto.conn.acknowledge_received_data(self.pending, self.sid)
            self.pending = 0

    def on_end(self) -> None:
        self.ended = True
        self.fast = False

    def on_reset(self) -> None: ...

    def pump(self) -> None: ...


def client_bytes(ops: list[tuple[str, int]]) -> bytes:
    """A client's bytes: preface, two streams, then DATA (plain, padded, final), PINGs, updates."""
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(2**30)
    for sid in (1, 3):
        c.send_headers(sid, headers(BIDI))
    out = bytearray(c.data_to_send())
    open_ = {1, 3}
    for i, (op, size) in enumerate(ops):
        sid = 1 if i % 2 else 3
        if sid not in open_:
            continue
        payload = bytes([i % 251]) * size
        if op == "data":
            c.send_data(sid, payload)
        elif op == "padded":
            c.send_data(sid, payload, pad_length=7)
        elif op == "end":
            c.send_data(sid, payload, end_stream=True)
            open_.discard(sid)
        elif op == "ping":
            c.ping(b"12345678")
        elif op == "update":
            c.increment_flow_control_window(1000)
        out += c.data_to_send()
    return bytes(out)


async def run_door(
    data: bytes, cuts: list[int], fast: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, dict]:
    monkeypatch.setattr("bidistream.gateway.h2front.FAST_DATA", fast)
    proto, transport, _ = door()
    transport.out.clear()
    made: dict[int, Recording] = {}

    def open_stream(sid: int, hdrs: dict[str, str], raw: object = None) -> Recording:
        made[sid] = Recording(proto, sid)
        return made[sid]

    monkeypatch.setattr(proto, "_open_stream", open_stream)
    # door() already fed its own client's preface; start this client's bytes on a fresh door.
    proto = H2Protocol(proto.ctx)
    monkeypatch.setattr(proto, "_open_stream", open_stream)
    proto.connection_made(transport)  # type: ignore[arg-type]
    transport.out.clear()
    made.clear()
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        if cut > pos:
            proto.data_received(data[pos:cut])
            pos = cut
    return bytes(transport.out), {sid: (bytes(r.got), r.ended) for sid, r in made.items()}


def wire_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i : i + 3], "big")
        out.append(
            (data[i + 3], data[i + 4], int.from_bytes(data[i + 5 : i + 9], "big"), data[i + 9 : i + 9 + n])
        )
        i += 9 + n
    assert i == len(data)
    return out


_ops = st.lists(
    st.tuples(st.sampled_from(["data"] * 6 + ["padded", "end", "ping", "update"]), st.integers(1, 3000)),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, cuts=st.lists(st.integers(0, 80_000), max_size=8))
async def test_fast_path_and_h2_path_give_the_same_wire_and_data(
    ops: list[tuple[str, int]], cuts: list[int]
) -> None:
    data = client_bytes(ops)
    cuts = [c % (len(data) + 1) for c in cuts]
    with pytest.MonkeyPatch.context() as mp:
        slow = await run_door(data, cuts, False, mp)
    with pytest.MonkeyPatch.context() as mp:
        fast = await run_door(data, cuts, True, mp)
    assert fast[1] == slow[1]
    # The same frames leave (the fast path may send a stream's WINDOW_UPDATE before a
    # PING ACK that h2 would have queued first: both orders are valid HTTP/2).
    assert sorted(wire_frames(fast[0])) == sorted(wire_frames(slow[0]))


def test_the_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[int] = []
    real = h2front._charge

    def counting(conn: h2.connection.H2Connection, sid: int, length: int) -> bool:
        ok = real(conn, sid, length)
        taken.append(ok)
        return ok

    monkeypatch.setattr(h2front, "_charge", counting)
    data = client_bytes([("data", 100)] * 6 + [("padded", 10), ("end", 5)])

    async def main() -> None:
        with pytest.MonkeyPatch.context() as mp:
            await run_door(data, [], True, mp)

    asyncio.run(main())
    assert taken.count(True) == 6


class _SendProto:
    """What ``_Sender`` uses of its H2Protocol: the h2 connection and the flush bookkeeping."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.conn = conn
        self._dirty: list[Any] = []
        self._flush_pending = False

    def schedule_flush(self) -> None:
        self._flush_pending = True


def _client_op(client: h2.connection.H2Connection, op: str, n: int) -> None:
    if op == "stream_window":
        client.increment_flow_control_window(n, stream_id=1)
    elif op == "conn_window":
        client.increment_flow_control_window(n)
    elif op == "frame_size":
        client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384 + n})
    elif op == "half_close":
        client.end_stream(1)
    elif op == "reset":
        client.reset_stream(1)


def _send_run(ops: list[tuple[str, int]], fast: bool) -> list[tuple[bytes, int, int, int, bool]]:
    """Replay ``ops`` against a server stream; after each, the wire and every window h2 keeps."""
    h2front.FAST_DATA = fast
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server.initiate_connection()
    client.initiate_connection()
    client.receive_data(server.data_to_send())
    client.send_headers(1, headers(BIDI))
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    client.receive_data(server.data_to_send())
    sender = h2front._Sender(_SendProto(server), 1)  # type: ignore[arg-type]
    seen: list[tuple[bytes, int, int, int, bool]] = []
    for i, (op, n) in enumerate(ops):
        if op == "write":
            sender.pending += bytes([i % 251]) * n
            sender.pump()
        else:
            # The client's own move may be invalid in its state (a window on a reset
            # stream): h2 refuses it on the client side and nothing is sent.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                _client_op(client, op, n)
            for ev in server.receive_data(client.data_to_send()):
                if isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                    sender.pump()
        wire = server.data_to_send()
        if wire:
            client.receive_data(wire)
        stream = server.streams.get(1)
        seen.append(
            (
                wire,
                server.outbound_flow_control_window,
                -1 if stream is None else stream.outbound_flow_control_window,
                len(sender.pending),
                sender.ended,
            )
        )
    return seen


_send_ops = st.lists(
    st.tuples(
        st.sampled_from(
            [*["write"] * 6, "stream_window", "conn_window", "frame_size", "half_close", "reset"]
        ),
        st.integers(1, 40_000),
    ),
    max_size=30,
)


@settings(max_examples=80, deadline=None)
@given(ops=_send_ops)
def test_send_fast_path_and_h2_send_data_give_the_same_wire_and_windows(ops: list[tuple[str, int]]) -> None:
    try:
        slow = _send_run(ops, fast=False)
        fast = _send_run(ops, fast=True)
    finally:
        h2front.FAST_DATA = True
    assert fast == slow


def test_send_fast_path_is_taken_and_charges_both_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(h2.connection.H2Connection, "send_data", lambda *a, **k: calls.append("h2"))
    seen = _send_run([("write", 100), ("write", 70_000)], fast=True)
    assert calls == []  # no h2 send_data: every byte went by the fast path
    assert seen[0][1] == 65535 - 100 and seen[0][2] == 65535 - 100
    assert seen[1][1] == 0 and seen[1][3] == 100 + 70_000 - 65535  # the rest waits for a window


# ---------------------------------------------------------------------- the reply path
class CountingTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


async def test_the_last_frame_of_an_instance_read_leaves_at_once_and_carries_the_earlier_ones() -> None:
    """Replies of one instance read share one write, made in the call itself: no loop turn later."""
    proto, _, client = door()
    transport = CountingTransport()
    proto.transport = transport  # type: ignore[assignment]
    client.send_headers(1, headers(BIDI))
    proto.data_received(client.data_to_send())
    st = proto.streams[1]
    assert isinstance(st, BidiStream)
    st.accept("AllTraffic")
    proto.flush()
    client.receive_data(bytes(transport.out))
    transport.out.clear()
    before = transport.writes
    st.send(b"one", False, True, False)
    st.send(b"two", True, True, False)
    assert transport.writes == before  # not the read's last frame: it waits for the others
    st.send_last(b"three", False)
    assert transport.writes == before + 1
    events = client.receive_data(bytes(transport.out))
    data = [ev.data for ev in events if isinstance(ev, h2.events.DataReceived)]
    wire = b"".join(data)
    assert [p in wire for p in (b"one", b"two", b"three")] == [True, True, True]
    assert wire.index(b"one") < wire.index(b"two") < wire.index(b"three")
    await settle()  # the flush scheduled by the first send finds nothing left
    assert transport.writes == before + 1
    # Inside the door's own read the flush at its end sends it, not send_last.
    proto.reading = True
    st.send_last(b"four", False)
    assert transport.writes == before + 1
    proto.reading = False
    await settle()
    assert transport.writes == before + 2
