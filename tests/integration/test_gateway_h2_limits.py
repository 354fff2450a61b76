"""Connection-level limits of the HTTP/2 door, on real sockets with a raw client (issue 10.7–10.9).

Each attack ends the offending connection (or stream) with the RFC 9113 code
it deserves, and a session on a neighbouring connection or stream keeps working.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hyperframe.frame import DataFrame, PingFrame, SettingsFrame

from bidistream.gateway.limits import GatewayLimits, KiB
from tests.h2client import H2TestClient
from tests.integration.test_gateway_h2 import healthy_finish, healthy_open
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
FRAME_SIZE_ERROR = 0x6
PROTOCOL_ERROR = 0x1

LIMITS = GatewayLimits(
    control_frames_per_second=50,
    control_frame_burst=100,
    frame_timeout=0.5,
    close_grace=0.5,
    max_connection_bodies=256 * KiB,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw", limits=LIMITS) as s:
        yield s


@pytest.fixture
async def raw(stack: Stack) -> AsyncIterator[H2TestClient]:
    c = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    yield c
    c.close()


@pytest.fixture
async def neighbour(stack: Stack) -> AsyncIterator[H2TestClient]:
    c = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    yield c
    c.close()


async def test_ping_flood_gets_goaway_enhance_your_calm(raw: H2TestClient, neighbour: H2TestClient) -> None:
    healthy = await healthy_open(neighbour)
    raw.raw(PingFrame(0, b"flooding").serialize() * 300)
    goaway = await raw.wait_goaway()
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert b"control frames a second" in (goaway.additional_data or b"")
    await asyncio.wait_for(raw.eof.wait(), scaled(5))
    await healthy_finish(neighbour, healthy)


async def test_settings_flood_gets_goaway(raw: H2TestClient, neighbour: H2TestClient) -> None:
    healthy = await healthy_open(neighbour)
    raw.raw(SettingsFrame(0).serialize() * 300)
    assert (await raw.wait_goaway()).error_code == ENHANCE_YOUR_CALM
    await healthy_finish(neighbour, healthy)


async def test_empty_data_flood_gets_goaway(raw: H2TestClient, neighbour: H2TestClient) -> None:
    healthy = await healthy_open(neighbour)
    sid = raw.open()
    raw.raw(DataFrame(sid, b"").serialize() * 300)
    assert (await raw.wait_goaway()).error_code == ENHANCE_YOUR_CALM
    await healthy_finish(neighbour, healthy)


async def test_pings_within_the_rate_are_answered(raw: H2TestClient) -> None:
    healthy = await healthy_open(raw)
    for _ in range(20):
        await raw.ping()
    assert raw.goaway is None
    await healthy_finish(raw, healthy)


async def test_oversize_declared_length_refused_on_its_header(
    raw: H2TestClient, neighbour: H2TestClient
) -> None:
    healthy = await healthy_open(neighbour)
    sid = raw.open()
    # A DATA header declaring 16 MiB - 1 and not one byte of payload.
    raw.raw((2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big"))
    goaway = await raw.wait_goaway()
    assert goaway.error_code == FRAME_SIZE_ERROR
    assert b"above SETTINGS_MAX_FRAME_SIZE 16384" in (goaway.additional_data or b"")
    await asyncio.wait_for(raw.eof.wait(), scaled(5))
    await healthy_finish(neighbour, healthy)


async def test_stall_mid_frame_times_out(raw: H2TestClient, neighbour: H2TestClient) -> None:
    healthy = await healthy_open(neighbour)
    sid = raw.open()
    frame = DataFrame(sid, b"x" * 100).serialize()
    raw.raw(frame[:30])
    goaway = await raw.wait_goaway()
    assert goaway.error_code == PROTOCOL_ERROR
    assert b"frame not complete within 0.5 s" in (goaway.additional_data or b"")
    await asyncio.wait_for(raw.eof.wait(), scaled(5))
    await healthy_finish(neighbour, healthy)


async def test_stall_mid_preface_times_out(stack: Stack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    writer.write(PREFACE[:10])
    got = bytearray()
    async with asyncio.timeout(scaled(5)):
        while chunk := await reader.read(65536):
            got += chunk
    # SETTINGS first, then GOAWAY (type 7) with PROTOCOL_ERROR, then EOF.
    assert b"connection preface not complete" in got
    writer.close()


async def test_idle_connection_without_preface_times_out(stack: Stack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    async with asyncio.timeout(scaled(5)):
        while await reader.read(65536):
            pass
    writer.close()
    await eventually(lambda: not stack.gateway.connections)


BASE = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/ping")]


@pytest.mark.parametrize(
    "headers",
    [
        [*BASE, (":path", "/ping")],
        [h for h in BASE if h[0] != ":path"],
        [h for h in BASE if h[0] != ":method"],
        [*BASE, ("X-Upper", "1")],
        [*BASE, ("connection", "keep-alive")],
        [*BASE, ("te", "gzip")],
        [*BASE, (":protocol", "websocket")],
    ],
    ids=["dup-path", "no-path", "no-method", "uppercase", "connection", "te-gzip", "protocol"],
)
async def test_malformed_request_is_a_stream_error(raw: H2TestClient, headers: list[tuple[str, str]]) -> None:
    healthy = await healthy_open(raw)
    sid = raw.request(headers, end=True)
    await raw.wait_end(sid)
    assert raw.resets.get(sid) == PROTOCOL_ERROR, raw.responses.get(sid)
    assert raw.goaway is None
    good = raw.request(BASE, end=True)
    assert (await raw.headers(good))[":status"] == "200"
    await healthy_finish(raw, healthy)


async def test_concurrent_streams_are_bounded(raw: H2TestClient) -> None:
    await raw.ping()
    assert raw.conn.remote_settings.max_concurrent_streams == LIMITS.max_streams <= 128


def _invoke(raw: H2TestClient, size: int) -> int:
    return raw.request(
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/endpoints/echo/invocations"),
            ("content-type", "application/octet-stream"),
            ("content-length", str(size)),
        ]
    )


async def test_invoke_bodies_beyond_the_connection_budget_wait_their_turn(raw: H2TestClient) -> None:
    size = 200 * KiB  # two of them exceed the 256 KiB budget
    body_a, body_b = b"a" * size, b"b" * size
    a = _invoke(raw, size)
    await raw.send_within_window(a, body_a[: 100 * KiB])  # admitted: acknowledged as it comes
    b = _invoke(raw, size)
    first_window = raw.conn.local_flow_control_window(b)
    for at in range(0, first_window, 16384):
        raw.send(b, body_b[at : min(at + 16384, first_window)])
    await raw.ping()
    await raw.ping()  # any WINDOW_UPDATE for b would have been written before this ACK
    assert raw.conn.local_flow_control_window(b) == 0, "b's body was acknowledged while over budget"
    await raw.send_within_window(a, body_a[100 * KiB :])
    raw.send(a, b"", end=True)
    await raw.wait_end(a)
    assert raw.responses[a][":status"] == "200" and bytes(raw.data[a]) == body_a
    await raw.send_within_window(b, body_b[first_window:])  # admitted once a was consumed
    raw.send(b, b"", end=True)
    await raw.wait_end(b)
    assert raw.responses[b][":status"] == "200" and bytes(raw.data[b]) == body_b
