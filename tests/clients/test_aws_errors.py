"""Bad input and failures, each as the unmodified official bidi client reports it.

After each failure a healthy session opened before it, on the same client and
the same gateway, still echoes: one session's failure never touches another.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import picows
import pytest
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.models import (
    InputValidationError,
    InvokeEndpointWithBidirectionalStreamInput,
    ModelError,
    ModelStreamError,
    RequestStreamEventPayloadPart,
    ServiceUnavailableError,
)

from bidistream.frames import Frame
from bidistream.gateway.limits import GatewayLimits
from bidistream.model import Model, Session
from bidistream.models.echo import EchoModel
from tests.conftest import free_port
from tests.support.aws import Stack, T, gateway_stack, official_client, session, text_part
from tests.support.waiting import scaled


class RefusingModel(EchoModel):
    name = "refusing"

    def check_session(self, session: Session) -> None:
        from bidistream.errors import InputValidationError as Refused

        raise Refused("language xx is not supported")


class CrashingModel(Model):
    name = "crashing"

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for frame in frames:
            yield frame
            raise RuntimeError("model container crashed")


class _NoPong(picows.WSListener):  # type: ignore[misc]
    """An instance that echoes but never answers pings (a wedged container)."""

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        if frame.msg_type in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_bytes())


class Healthy:
    """A session opened before the failure and checked after it."""

    def __init__(self, client: AsyncSageMakerRuntimeHTTP2Client) -> None:
        self.client = client

    async def open(self) -> Healthy:
        self.stream = await self.client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(endpoint_name="echo")
        )
        await self.stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("before")))
        _, self.receiver = await asyncio.wait_for(self.stream.await_output(), T)
        assert (await asyncio.wait_for(self.receiver.receive(), T)).value.bytes_ == b"before"
        return self

    async def check(self) -> None:
        await self.stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("after")))
        assert (await asyncio.wait_for(self.receiver.receive(), T)).value.bytes_ == b"after"
        await asyncio.wait_for(self.stream.input_stream.close(), T)
        assert await asyncio.wait_for(self.receiver.receive(), T) is None


async def open_failing(client: AsyncSageMakerRuntimeHTTP2Client, **kw: Any) -> BaseException:
    """Start a session and return what await_output() raises."""
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(**kw)
    )
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(stream.await_output(), T)
    return info.value


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    nopong = await picows.ws_create_server(lambda _req: _NoPong(), "127.0.0.1", 0, enable_auto_pong=False)
    nopong_port = nopong.sockets[0].getsockname()[1]
    models = {"echo": EchoModel(), "refusing": RefusingModel(), "crashing": CrashingModel()}
    limits = GatewayLimits(ping_interval=0.2, missed_pongs=2)
    urls = {"wedged": f"http://127.0.0.1:{nopong_port}", "gone": f"http://127.0.0.1:{free_port()}"}
    try:
        async with gateway_stack(tmp_path / "gw", models, urls=urls, limits=limits) as s:
            monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
            yield s
    finally:
        nopong.close()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncSageMakerRuntimeHTTP2Client]:
    yield await official_client(stack.gateway)


@pytest.fixture
async def healthy(client: AsyncSageMakerRuntimeHTTP2Client) -> AsyncIterator[Healthy]:
    h = await Healthy(client).open()
    yield h
    await h.check()


async def test_unknown_endpoint(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    err = await open_failing(client, endpoint_name="nope")
    assert isinstance(err, InputValidationError)
    assert "Endpoint nope not found" in str(err.message)


async def test_invalid_endpoint_name(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    err = await open_failing(client, endpoint_name="bad_name")
    assert isinstance(err, InputValidationError)
    assert "EndpointName 'bad_name' is invalid" in str(err.message)


async def test_invalid_invocation_path(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    for bad in ("/v1/listen", "v1/../listen", "v1 listen"):
        err = await open_failing(client, endpoint_name="echo", model_invocation_path=bad)
        assert isinstance(err, InputValidationError)
        assert "ModelInvocationPath" in str(err.message)


async def test_invalid_query(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    err = await open_failing(client, endpoint_name="echo", model_query_string="model=nova 3")
    assert isinstance(err, InputValidationError)
    assert "ModelQueryString" in str(err.message) and "--lenient-query" in str(err.message)


async def test_container_refuses_upgrade(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    err = await open_failing(client, endpoint_name="refusing")
    assert isinstance(err, ModelError)
    assert err.original_status_code == 400
    assert "language xx is not supported" in str(err.original_message)


async def test_unreachable_instance(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    err = await open_failing(client, endpoint_name="gone")
    assert isinstance(err, ServiceUnavailableError)
    assert "unreachable" in str(err.message)


async def test_container_dies_mid_stream(client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy) -> None:
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(endpoint_name="crashing")
    )
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("one")))
    _, receiver = await asyncio.wait_for(stream.await_output(), T)
    first = await asyncio.wait_for(receiver.receive(), T)
    assert first.value.bytes_ == b"one"  # output before the crash is delivered
    with pytest.raises(ModelStreamError) as info:
        await asyncio.wait_for(receiver.receive(), T)
    assert info.value.error_code == "1011"
    assert "model container crashed" in str(info.value.message)
    await asyncio.wait_for(stream.input_stream.close(), T)


async def test_container_stops_answering_pings(
    client: AsyncSageMakerRuntimeHTTP2Client, healthy: Healthy, stack: Stack
) -> None:
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(endpoint_name="wedged")
    )
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part("ping me")))
    _, receiver = await asyncio.wait_for(stream.await_output(), T)
    assert (await asyncio.wait_for(receiver.receive(), T)).value.bytes_ == b"ping me"
    with pytest.raises(ModelStreamError) as info:
        await asyncio.wait_for(receiver.receive(), scaled(5))
    assert info.value.error_code == "PingTimeout"
    assert "did not answer 2 consecutive pings" in str(info.value.message)
    await asyncio.wait_for(stream.input_stream.close(), T)


async def test_instance_full_is_service_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway_stack(tmp_path / "gw2") as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        s.servers["echo"].limits = type(s.servers["echo"].limits)(max_sessions=1)
        client = await official_client(s.gateway)
        h = await Healthy(client).open()
        err = await open_failing(client, endpoint_name="echo")
        assert isinstance(err, ServiceUnavailableError)
        assert "full" in str(err.message)
        await h.check()


async def test_session_after_errors_still_works(client: AsyncSageMakerRuntimeHTTP2Client) -> None:
    await open_failing(client, endpoint_name="nope")
    events = await session(client, "echo", [text_part("still here")])
    assert events[0].value.bytes_ == b"still here"
