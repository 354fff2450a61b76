"""The unmodified official bidi client (aws-sdk-sagemaker-runtime-http2 0.12 + AWSCRTHTTPClient).

The seed's client script (four phrases sent to an echo endpoint) re-expressed as
tests, plus what the launch post implies a real user does with it: mixed
UTF8/BINARY parts, a 1 MiB part, many sequential and concurrent sessions.
Every client call is wrapped in a timeout: the client hangs instead of failing
in several situations (wire spec, surprise 12).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)

from bidistream.frames import Frame, FrameKind
from bidistream.model import Model, Session
from tests.support.aws import (
    SEED_PHRASES,
    Stack,
    T,
    bin_part,
    gateway_stack,
    official_client,
    payloads,
    session,
    text_part,
)
from tests.support.waiting import eventually


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw") as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncSageMakerRuntimeHTTP2Client]:
    c = await official_client(stack.gateway)
    yield c
    await asyncio.wait_for(c.close(), T) if hasattr(c, "close") else None


async def test_seed_four_phrases_echo_in_order(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    events = await session(client, "echo", [text_part(p) for p in SEED_PHRASES], gap=0.05)
    assert payloads(events) == [(p.encode(), "UTF8", "COMPLETE") for p in SEED_PHRASES]


async def test_seed_as_written_without_data_type_is_binary(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    # The blog sends RequestPayloadPart(bytes_=...) with no DataType: binary frames.
    events = await session(client, "echo", [RequestPayloadPart(bytes_=p.encode()) for p in SEED_PHRASES])
    assert payloads(events) == [(p.encode(), "BINARY", "COMPLETE") for p in SEED_PHRASES]


async def test_mixed_utf8_and_binary_parts(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    parts = [text_part("héllo"), bin_part(bytes(range(256))), text_part("{}"), bin_part(b"\x00\xff")]
    events = await session(client, "echo", parts)
    assert payloads(events) == [
        ("héllo".encode(), "UTF8", "COMPLETE"),
        (bytes(range(256)), "BINARY", "COMPLETE"),
        (b"{}", "UTF8", "COMPLETE"),
        (b"\x00\xff", "BINARY", "COMPLETE"),
    ]


async def test_partial_parts_travel_as_fragments(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    # PARTIAL + COMPLETE is one WebSocket message in two frames; the container's
    # server reassembles it, so the echo is one complete message.
    events = await session(client, "echo", [text_part("hello ", complete=False), text_part("world")])
    assert b"".join(p for p, _, _ in payloads(events)) == b"hello world"
    assert payloads(events)[-1][2] == "COMPLETE"


async def test_one_mib_part(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    blob = bytes(i % 251 for i in range(1024 * 1024))
    events = await session(client, "echo", [bin_part(blob), text_part("after")])
    assert payloads(events) == [(blob, "BINARY", "COMPLETE"), (b"after", "UTF8", "COMPLETE")]


async def test_hundred_sequential_sessions_on_one_client(
    client: AsyncSageMakerRuntimeHTTP2Client, stack: Stack
) -> None:
    for i in range(100):
        events = await session(client, "echo", [text_part(f"n{i}")])
        assert payloads(events) == [(f"n{i}".encode(), "UTF8", "COMPLETE")]
    # Each session's teardown finishes on the gateway and the instance after the client saw its end.
    await eventually(lambda: stack.servers["echo"].live_sessions == 0 and stack.gateway.live_sessions == 0)


async def test_twenty_concurrent_sessions(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    async def one(i: int) -> list[Any]:
        return await session(client, "echo", [text_part(f"s{i}-{k}") for k in range(5)], gap=0.01)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    for i, events in enumerate(results):
        assert [p for p, _, _ in payloads(events)] == [f"s{i}-{k}".encode() for k in range(5)]


async def test_output_arrives_while_still_sending(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(endpoint_name="echo")
    )
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("first")))
    _, receiver = await asyncio.wait_for(stream.await_output(), T)
    first = await asyncio.wait_for(receiver.receive(), T)
    assert first.value.bytes_ == b"first"  # echoed before the input was closed
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("second")))
    second = await asyncio.wait_for(receiver.receive(), T)
    assert second.value.bytes_ == b"second"
    await asyncio.wait_for(stream.input_stream.close(), T)
    assert await asyncio.wait_for(receiver.receive(), T) is None


async def test_invoked_variant_header_reaches_the_client(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(endpoint_name="echo", target_variant="AllTraffic")
    )
    output, receiver = await asyncio.wait_for(stream.await_output(), T)
    assert output.invoked_production_variant == "AllTraffic"
    await asyncio.wait_for(stream.input_stream.close(), T)
    assert await asyncio.wait_for(receiver.receive(), T) is None


class BurstModel(Model):
    """Answers each input frame with a burst of small numbered frames, all at once."""

    name = "burst"
    COUNT = 300

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for frame in frames:
            for i in range(self.COUNT):
                yield Frame(frame.data + f"-{i}".encode(), FrameKind.TEXT)


async def test_burst_of_small_events_arrives_whole_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events relayed in one loop turn share HTTP/2 DATA frames; the real client
    # must still cut them into the same events, in order.
    async with gateway_stack(tmp_path / "gwb", {"burst": BurstModel()}) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        client = await official_client(s.gateway)
        events = await session(client, "burst", [text_part("a"), text_part("b")])
        expected = [f"{p}-{i}".encode() for p in "ab" for i in range(BurstModel.COUNT)]
        assert [p for p, _, _ in payloads(events)] == expected
