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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bidistream.eventstream import encode_payload_part
from bidistream.frames import Frame, FrameKind
from bidistream.gateway.h2front import BidiStream, H2Protocol
from bidistream.gateway.limits import GatewayLimits, KiB, MiB
from bidistream.gateway.server import Gateway
from bidistream.model import Model, Session
from tests.h2client import H2TestClient
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled

T = scaled(15.0)
HIGH_WATER = 256 * KiB
STREAM_WINDOW = 256 * KiB
FRAME = 64 * KiB
N_FRAMES = 384  # 24 MiB: well above what loopback socket buffers can absorb
# One socket read (asyncio and uvloop read up to 256 KiB): frames it already
# brought in are relayed even after reads are paused mid-batch.
READ_CHUNK = 256 * KiB
# What the gateway queues for the client is event-stream messages: each frame's payload plus its
# headers and CRCs.  The bound below is in those encoded bytes.
EVENT_OVERHEAD = len(encode_payload_part(b"\0" * FRAME, text=False)) - FRAME
QUEUED_BOUND = HIGH_WATER + READ_CHUNK + FRAME
# A WebSocket frame to the instance adds at most 14 bytes of header (masked, 64-bit length).
WS_FRAME_HEADER = 14
QUEUED_BOUND_ENCODED = QUEUED_BOUND + (QUEUED_BOUND // FRAME + 2) * EVENT_OVERHEAD


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


def bidi_stream(gw: Gateway) -> BidiStream:
    for conn in gw.connections:
        if isinstance(conn, H2Protocol):
            for st in conn.streams.values():
                if isinstance(st, BidiStream):
                    return st
    raise AssertionError("no bidi stream open on the gateway")


def upstream_read_paused(gw: Gateway) -> bool:
    try:
        relay = bidi_stream(gw).relay
    except AssertionError:  # the stream is not open yet
        return False
    up = relay.link if relay is not None else None
    return up is not None and up.read_paused


async def plateau(read: Any, blocked: Callable[[], bool], settle: float = 0.3) -> int:
    """Wait until the producer is blocked (``blocked()``, the state the test is about),
    then until ``read()`` stops changing; return its value.

    Waiting for ``blocked`` first means a loaded machine, where the producer may
    simply be slow for ``settle`` seconds, cannot pass for a blocked one."""
    await eventually(blocked, timeout=15.0)
    async with asyncio.timeout(T):
        last = read()
        while True:
            await asyncio.sleep(scaled(settle))
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
    client = await H2TestClient.connect(gw.port, gw.ca_path)
    try:
        client.granting = False  # the client's application stops consuming
        sid = client.open("flood")
        client.send(sid, encode_payload_part(b"go", text=True))

        produced = await plateau(lambda: model.produced, lambda: upstream_read_paused(gw))
        st = bidi_stream(gw)
        assert st.relay is not None
        up = st.relay.link
        assert up is not None
        # The instance is blocked in its sends, far from done.
        assert produced < N_FRAMES // 2, produced
        # The gateway stopped reading the instance, with at most high_water
        # (plus the rest of the socket read that crossed it) queued for the client.
        assert up.read_paused
        assert len(st.sender.pending) <= QUEUED_BOUND_ENCODED, len(st.sender.pending)
        # The client got no more than its 64 KiB initial window.
        assert len(client.data[sid]) <= 65535
        assert client.responses[sid][":status"] == "200"

        client.granting = True
        client.grant()
        async with asyncio.timeout(T):
            while len(client.decoded(sid)) < N_FRAMES:  # noqa: ASYNC110 (polling what the client got)
                await asyncio.sleep(0.02)
        client.send(sid, b"", end=True)
        await client.wait_end(sid)

        events = client.decoded(sid)
        assert [e["payload"] for e in events] == [numbered(i) for i in range(N_FRAMES)]
        assert all(e[":event-type"] == "PayloadPart" and e["DataType"] == "BINARY" for e in events)
        assert model.produced == N_FRAMES
    finally:
        client.close()


async def test_slow_instance_closes_client_window_and_loses_nothing(stack: Stack) -> None:
    gw = stack.gateway
    model = stack.servers["sink"].model
    assert isinstance(model, GatedSink)
    client = await H2TestClient.connect(gw.port, gw.ca_path)
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
            stalled_at = await plateau(
                lambda: sent, lambda: client.conn.local_flow_control_window(sid) < FRAME
            )
            assert not producer.done()
            assert stalled_at < N_FRAMES // 2, stalled_at
            # The client's window on the stream is closed and stays closed.
            assert client.conn.local_flow_control_window(sid) < FRAME
            await asyncio.sleep(scaled(0.3))  # a window that stays closed: nothing may move meanwhile
            assert sent == stalled_at
            st = bidi_stream(gw)
            assert st.relay is not None
            up = st.relay.link
            assert up is not None and up.transport is not None
            # The gateway holds back the acknowledgement and its write buffer to
            # the instance stays within high_water plus what one window can bring.
            assert up.write_paused
            assert st.relay.session.unacked <= STREAM_WINDOW
            buffered = up.transport.underlying_transport.get_write_buffer_size()
            bound = HIGH_WATER + STREAM_WINDOW + FRAME
            assert buffered <= bound + (bound // FRAME + 2) * WS_FRAME_HEADER, buffered
            assert model.got == []

            model.gate.set()
            await asyncio.wait_for(producer, T)
        finally:
            producer.cancel()
        client.send(sid, b"", end=True)
        await client.wait_end(sid)

        assert model.got == sent_parts
        events = client.decoded(sid)
        assert [e["payload"] for e in events] == [str(N_FRAMES).encode()]
    finally:
        client.close()


def test_volumes_exceed_gateway_limits() -> None:
    # The scenario only proves something if the data cannot fit in the gateway's buffers.
    assert N_FRAMES * FRAME > 8 * (HIGH_WATER + STREAM_WINDOW)
    assert N_FRAMES * FRAME >= 24 * MiB
