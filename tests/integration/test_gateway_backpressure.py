"""Backpressure end to end, both directions, on real sockets.

A slow reader on either side must pause reads on the other side, with the
gateway's own buffers bounded by its named limits, and once the reader catches
up every frame arrives, in order, exactly once.

* slow client: an HTTP/2 client that stops granting flow-control window (it
  keeps reading the socket but sends no WINDOW_UPDATE) while the model has tens
  of MiB to say.  The gateway queues at most ``high_water`` for it, pauses the
  instance WebSocket, and the model's awaited sends stop completing.
* slow instance: a model that does not read its input while the client has tens
  of MiB to send.  The gateway's writes to the instance back up, it stops
  acknowledging the client's DATA, and the client's window stays at zero.

The loopback kernel buffers hold a few MiB in each direction, so the volumes
are chosen well above them; "bounded" is then checked both on the gateway's
buffers and as a plateau of the producer's progress.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h2.connection
import h2.events
import pytest

from bidistream.eventstream import EventStreamDecoder, decode_message, encode_payload_part
from bidistream.frames import Frame, FrameKind
from bidistream.gateway.h2front import BidiStream, H2Protocol
from bidistream.gateway.limits import GatewayLimits, KiB, MiB
from bidistream.gateway.server import Gateway
from bidistream.model import Model, Session
from tests.clients.test_aws_bidi import Stack, gateway_stack

T = 15.0
HIGH_WATER = 256 * KiB
STREAM_WINDOW = 256 * KiB
FRAME = 64 * KiB
N_FRAMES = 384  # 24 MiB: well above what loopback socket buffers can absorb
# One socket read (asyncio and uvloop read up to 256 KiB): frames it already
# brought in are relayed even after reads are paused mid-batch.
READ_CHUNK = 256 * KiB


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes([i % 251]) * (FRAME - 4)


class Flood(Model):
    """After the first input frame, says ``N_FRAMES`` numbered frames as fast as it may."""

    name = "flood"

    def __init__(self) -> None:
        self.produced = 0

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for _ in frames:
            break
        for i in range(N_FRAMES):
            # The server pulls the next frame only once the previous send has drained.
            yield Frame(numbered(i), FrameKind.BINARY)
            self.produced += 1
        async for _ in frames:
            pass


class GatedSink(Model):
    """Reads nothing until ``gate`` opens, then records every frame and reports a count."""

    name = "sink"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.got: list[bytes] = []

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        await self.gate.wait()
        async for frame in frames:
            self.got.append(frame.data)
        yield Frame(str(len(self.got)).encode(), FrameKind.TEXT)


class FlowH2:
    """An HTTP/2 client whose flow-control grants the test switches off and on.

    It always reads its socket (so TCP never stalls); only WINDOW_UPDATEs stop,
    which is what a client does when its application stops consuming.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection()
        self.granting = True
        self.data = bytearray()
        self.unacked: dict[int, int] = {}
        self.status: str | None = None
        self.ended = asyncio.Event()
        self.window_opened = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, gw: Gateway) -> FlowH2:
        ctx = ssl.create_default_context(cafile=str(gw.ca_path))
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=ctx)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        self._flush()
        return self

    def _flush(self) -> None:
        if data := self.conn.data_to_send():
            self.writer.write(data)

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    self.status = dict(ev.headers)[b":status"].decode()
                elif isinstance(ev, h2.events.DataReceived):
                    self.data += ev.data
                    self.unacked[ev.stream_id] = self.unacked.get(ev.stream_id, 0) + ev.flow_controlled_length
                    if self.granting:
                        self.grant()
                elif isinstance(ev, h2.events.WindowUpdated):
                    self.window_opened.set()
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    self.ended.set()
            self._flush()

    def grant(self) -> None:
        for sid, n in self.unacked.items():
            if n:
                self.conn.acknowledge_received_data(n, sid)
        self.unacked.clear()
        self._flush()

    def open(self, endpoint: str) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "localhost"),
                (":path", f"/endpoints/{endpoint}/invocations-bidirectional-stream?"),
                ("content-type", "application/vnd.amazon.eventstream"),
            ],
        )
        self._flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end)
        self._flush()

    async def send_within_window(self, sid: int, data: bytes) -> None:
        """Send ``data`` as the server's window allows (waiting on WINDOW_UPDATE)."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_opened.clear()
                await self.window_opened.wait()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            self._flush()
            view = view[window:]
            await self.writer.drain()

    def events(self) -> list[dict[str, Any]]:
        return [
            {**(m := decode_message(raw)).headers, "payload": m.payload}
            for raw in EventStreamDecoder().feed(bytes(self.data))
        ]

    def close(self) -> None:
        self.task.cancel()
        self.writer.transport.abort()


def bidi_stream(gw: Gateway) -> BidiStream:
    for conn in gw.connections:
        if isinstance(conn, H2Protocol):
            for st in conn.streams.values():
                if isinstance(st, BidiStream):
                    return st
    raise AssertionError("no bidi stream open on the gateway")


async def plateau(read: Any, settle: float = 0.3) -> int:
    """Wait until ``read()`` stops changing (the producer is blocked); return its value."""
    async with asyncio.timeout(T):
        last = read()
        while True:
            await asyncio.sleep(settle)
            now = read()
            if now == last:
                return int(now)
            last = now


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    limits = GatewayLimits(high_water=HIGH_WATER, stream_window=STREAM_WINDOW)
    async with gateway_stack(tmp_path / "gw", {"flood": Flood(), "sink": GatedSink()}, limits=limits) as s:
        yield s


async def test_slow_client_pauses_instance_reads_and_loses_nothing(stack: Stack) -> None:
    gw = stack.gateway
    model = stack.servers["flood"].model
    assert isinstance(model, Flood)
    client = await FlowH2.connect(gw)
    try:
        client.granting = False  # the client's application stops consuming
        sid = client.open("flood")
        client.send(sid, encode_payload_part(b"go", text=True))

        produced = await plateau(lambda: model.produced)
        st = bidi_stream(gw)
        up = st.up
        assert up is not None
        # The instance is blocked in its sends, far from done.
        assert produced < N_FRAMES // 2, produced
        # The gateway stopped reading the instance, with at most high_water
        # (plus the rest of the socket read that crossed it) queued for the client.
        assert up.read_paused
        assert len(st.sender.pending) <= HIGH_WATER + READ_CHUNK + FRAME, len(st.sender.pending)
        # The client got no more than its 64 KiB initial window.
        assert len(client.data) <= 65535
        assert client.status == "200"

        client.granting = True
        client.grant()
        async with asyncio.timeout(T):
            while len(client.events()) < N_FRAMES:  # noqa: ASYNC110 (polling what the client got)
                await asyncio.sleep(0.02)
        client.send(sid, b"", end=True)
        await asyncio.wait_for(client.ended.wait(), T)

        events = client.events()
        assert [e["payload"] for e in events] == [numbered(i) for i in range(N_FRAMES)]
        assert all(e[":event-type"] == "PayloadPart" and e["DataType"] == "BINARY" for e in events)
        assert model.produced == N_FRAMES
    finally:
        client.close()


async def test_slow_instance_closes_client_window_and_loses_nothing(stack: Stack) -> None:
    gw = stack.gateway
    model = stack.servers["sink"].model
    assert isinstance(model, GatedSink)
    client = await FlowH2.connect(gw)
    sent_parts = [numbered(i) for i in range(N_FRAMES)]
    try:
        sid = client.open("sink")
        sent = 0

        async def produce() -> None:
            nonlocal sent
            for part in sent_parts:
                await client.send_within_window(sid, encode_payload_part(part, text=False))
                sent += 1

        producer = asyncio.create_task(produce())
        try:
            stalled_at = await plateau(lambda: sent)
            assert not producer.done()
            assert stalled_at < N_FRAMES // 2, stalled_at
            # The client's window on the stream is closed and stays closed.
            assert client.conn.local_flow_control_window(sid) < FRAME
            await asyncio.sleep(0.3)
            assert sent == stalled_at
            st = bidi_stream(gw)
            up = st.up
            assert up is not None and up.transport is not None
            # The gateway holds back the acknowledgement and its write buffer to
            # the instance stays within high_water plus what one window can bring.
            assert up.write_paused
            assert st.unacked <= STREAM_WINDOW
            buffered = up.transport.underlying_transport.get_write_buffer_size()
            assert buffered <= HIGH_WATER + STREAM_WINDOW + FRAME, buffered
            assert model.got == []

            model.gate.set()
            await asyncio.wait_for(producer, T)
        finally:
            producer.cancel()
        client.send(sid, b"", end=True)
        await asyncio.wait_for(client.ended.wait(), T)

        assert model.got == sent_parts
        events = client.events()
        assert [e["payload"] for e in events] == [str(N_FRAMES).encode()]
    finally:
        client.close()


def test_volumes_exceed_gateway_limits() -> None:
    # The scenario only proves something if the data cannot fit in the gateway's buffers.
    assert N_FRAMES * FRAME > 8 * (HIGH_WATER + STREAM_WINDOW)
    assert N_FRAMES * FRAME >= 24 * MiB
