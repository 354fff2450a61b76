"""Issue 10's session defects, each through the front door with a raw client.

The session core makes each one impossible by its table (see
``tests/unit/session/test_machine.py``); these tests show the adapters carry
the core's decisions out on real sockets:

* 10.1 a client that leaves while the gateway opens the instance WebSocket
  (h2 reset right after HEADERS, WS client aborting right after its upgrade)
  leaves no instance session behind;
* 10.2 a backpressured session whose client vanishes closes its instance
  WebSocket within a second;
* 10.3 HEADERS and RST_STREAM (or GOAWAY) in one read do not kill the
  connection or its other streams;
* 10.5 a refused WS session whose client already sent a frame finishes its
  close handshake at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.connection
import h2.errors
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bidistream.eventstream import encode_payload_part
from bidistream.gateway.limits import GatewayLimits, KiB
from bidistream.models.echo import EchoModel
from tests.h2client import H2TestClient
from tests.integration.test_gateway_backpressure import (
    FRAME,
    N_FRAMES,
    Flood,
    bidi_stream,
    plateau,
    upstream_read_paused,
)
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled


@dataclass
class FakeInstance:
    """A TCP server that reads WebSocket upgrades and answers as told (or never).

    ``mode="hold"`` never answers: the gateway is stuck mid-handshake.
    ``mode="busy"`` answers 503 after ``delay`` (a full instance).
    """

    mode: str = "hold"
    delay: float = 0.0
    upgrades: int = 0
    open: int = 0
    eofs: list[float] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.upgrades += 1
            if self.mode == "busy":
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfull")
                await writer.drain()
            while await reader.read(65536):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.eofs.append(time.monotonic())
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> FakeInstance:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.gateway.ca_path))


async def raw_ws_upgrade(
    stack: Stack, path: str, *, wait_101: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-written WebSocket upgrade over TLS; returns once the 101 is read (or at once).

    The front door sends its 101 only once an instance has taken the session, so a client that
    leaves while the instance handshake is still running has not seen it yet (``wait_101=False``).
    """
    ctx = tls(stack)
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    if wait_101:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
        assert head.startswith(b"HTTP/1.1 101"), head
    else:
        await writer.drain()
    return reader, writer


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


@pytest.fixture
async def fake() -> AsyncIterator[FakeInstance]:
    async with FakeInstance() as f:
        yield f


@pytest.fixture
async def stack(tmp_path: Path, fake: FakeInstance) -> AsyncIterator[Stack]:
    urls = {"slow": f"http://127.0.0.1:{fake.port}"}
    async with gateway_stack(tmp_path / "gw", {"echo": EchoModel()}, urls=urls) as s:
        yield s


# ---------------------------------------------------------------------- 10.1
async def test_10_1_h2_reset_mid_handshake_closes_the_instance_connection(
    stack: Stack, fake: FakeInstance
) -> None:
    client = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    try:
        sid = client.open("slow")
        await eventually(lambda: fake.upgrades == 1)
        reset_at = time.monotonic()
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client._flush()
        await eventually(lambda: fake.eofs, timeout=1.0)
        assert fake.open == 0
        assert fake.eofs[0] - reset_at < scaled(1.0)
        # The connection and its neighbours carry on.
        other = client.open("echo")
        client.send(other, encode_payload_part(b"after", text=True), end=True)
        await client.wait_end(other)
        assert [e["payload"] for e in client.decoded(other)] == [b"after"]
    finally:
        client.close()


async def test_10_1_ws_abort_mid_handshake_closes_the_instance_connection(
    stack: Stack, fake: FakeInstance
) -> None:
    _, writer = await raw_ws_upgrade(stack, "/endpoints/slow/ws", wait_101=False)
    await eventually(lambda: fake.upgrades == 1)
    writer.transport.abort()
    await eventually(lambda: fake.eofs, timeout=1.0)
    assert fake.open == 0


async def test_10_1_abrupt_clients_leave_no_instance_session(stack: Stack) -> None:
    echo = stack.servers["echo"]
    client = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    try:
        for i in range(30):
            sid = client.open("echo")
            await asyncio.sleep(0.001 * (i % 4))
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            client._flush()
    finally:
        client.close()
    for i in range(30):
        _, writer = await raw_ws_upgrade(stack, "/endpoints/echo/ws")
        if i % 2:
            writer.write(masked_frame(b"hi"))
        writer.transport.abort()
    await eventually(lambda: echo.live_sessions == 0, timeout=3.0)
    await eventually(lambda: stack.gateway.live_sessions == 0, timeout=3.0)
    async with connect(f"wss://127.0.0.1:{stack.gateway.port}/endpoints/echo/ws", ssl=tls(stack)) as ws:
        await ws.send("still serving")
        assert await ws.recv() == "still serving"


# ---------------------------------------------------------------------- 10.2
@pytest.fixture
async def flood_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    limits = GatewayLimits(high_water=256 * KiB, stream_window=256 * KiB)
    async with gateway_stack(tmp_path / "gw", {"flood": Flood()}, limits=limits) as s:
        yield s


async def test_10_2_vanished_backpressured_h2_client_closes_its_instance_within_1s(
    flood_stack: Stack,
) -> None:
    gw = flood_stack.gateway
    server = flood_stack.servers["flood"]
    model = server.model
    assert isinstance(model, Flood)
    client = await H2TestClient.connect(gw.port, gw.ca_path)
    try:
        client.granting = False
        sid = client.open("flood")
        client.send(sid, encode_payload_part(b"go", text=True))
        await plateau(lambda: model.produced, lambda: upstream_read_paused(gw))
        st = bidi_stream(gw)
        assert st.relay is not None and st.relay.link is not None
        assert st.relay.link.read_paused  # the path is full both ways
        assert model.produced < N_FRAMES
        gone_at = time.monotonic()
        client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        client._flush()
        await eventually(lambda: server.live_sessions == 0, timeout=1.0)
        assert time.monotonic() - gone_at < scaled(1.0)
    finally:
        client.close()


async def test_10_2_vanished_backpressured_ws_client_closes_its_instance_within_1s(
    flood_stack: Stack,
) -> None:
    server = flood_stack.servers["flood"]
    model = server.model
    assert isinstance(model, Flood)
    reader, writer = await raw_ws_upgrade(flood_stack, "/endpoints/flood/ws")
    writer.write(masked_frame(b"go"))
    # The client reads nothing: the gateway's socket to it fills, then the instance's.
    await plateau(lambda: model.produced, lambda: model.produced * FRAME > 256 * KiB)
    assert model.produced < N_FRAMES
    assert model.produced * FRAME > 256 * KiB
    gone_at = time.monotonic()
    writer.transport.abort()
    await eventually(lambda: server.live_sessions == 0, timeout=1.0)
    assert time.monotonic() - gone_at < scaled(1.0)
    del reader


# ---------------------------------------------------------------------- 10.3
async def test_10_3_headers_and_rst_in_one_read_leave_the_connection_alive(stack: Stack) -> None:
    client = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    try:
        neighbour = client.open("echo")
        client.send(neighbour, encode_payload_part(b"one", text=True))
        await client.events(neighbour, 1)
        for _ in range(20):
            # HEADERS then RST_STREAM for a new stream, written together.
            sid = client.conn.get_next_available_stream_id()
            client.data[sid] = bytearray()
            client.ended[sid] = asyncio.Event()
            client.headers_seen[sid] = asyncio.Event()
            client.conn.send_headers(
                sid,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", "/endpoints/echo/invocations-bidirectional-stream?"),
                ],
            )
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            client._flush()
        client.send(neighbour, encode_payload_part(b"two", text=True), end=True)
        await client.wait_end(neighbour)
        assert [e["payload"] for e in client.decoded(neighbour)] == [b"one", b"two"]
        assert client.decoded(neighbour)[-1][":event-type"] == "PayloadPart"
        late = client.open("echo")
        client.send(late, encode_payload_part(b"three", text=True), end=True)
        await client.wait_end(late)
        assert [e["payload"] for e in client.decoded(late)] == [b"three"]
    finally:
        client.close()
    await eventually(lambda: stack.servers["echo"].live_sessions == 0, timeout=3.0)


async def test_10_3_headers_and_goaway_in_one_read_end_cleanly(stack: Stack) -> None:
    ctx = tls(stack)
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/endpoints/echo/invocations-bidirectional-stream?"),
        ],
    )
    conn.close_connection()
    writer.write(conn.data_to_send())
    # The gateway ends the connection in an orderly way (no abort, no stray stream).
    async with asyncio.timeout(scaled(5)):
        while await reader.read(65536):
            pass
    writer.close()
    await eventually(lambda: stack.servers["echo"].live_sessions == 0, timeout=3.0)
    # Other connections were never affected.
    other = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    try:
        sid = other.open("echo")
        other.send(sid, encode_payload_part(b"fine", text=True), end=True)
        await other.wait_end(sid)
        assert [e["payload"] for e in other.decoded(sid)] == [b"fine"]
    finally:
        other.close()


# ---------------------------------------------------------------------- 10.5
async def test_10_5_refused_ws_session_after_an_early_frame_finishes_its_close(
    stack: Stack, fake: FakeInstance
) -> None:
    fake.mode, fake.delay = "busy", 0.2
    began = time.monotonic()
    async with connect(
        f"wss://127.0.0.1:{stack.gateway.port}/endpoints/slow/ws", ssl=tls(stack), close_timeout=20
    ) as ws:
        # The 101 now waits for the instance's answer, so the refusal may already be on its way:
        # a send racing it either is held (reads paused) or meets the close; both must end fast.
        with contextlib.suppress(ConnectionClosed):
            await ws.send("early")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        await asyncio.wait_for(ws.wait_closed(), scaled(3))
    assert ws.close_code == 1013
    assert "full" in (ws.close_reason or "")
    assert time.monotonic() - began < scaled(3)
