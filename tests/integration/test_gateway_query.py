"""The strict ModelQueryString check and close_reason(), at the gateway with real clients.

What SageMaker refuses (``a=``, ``a.b=1``, ``a~=x``) is refused before any instance is
contacted: a 1008 close on the WS door and InputValidationError for the official client.
A long refusal reason is valid UTF-8 within 123 bytes and quotes the name as the user typed
it, not its percent-encoding.  A healthy session on the same gateway is untouched.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aws_sdk_sagemaker_runtime_http2 import models as m
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bidistream.gateway.limits import GatewayLimits
from bidistream.models.echo import EchoModel
from tests.clients.test_aws_errors import Healthy, open_failing
from tests.support.aws import Stack, gateway_stack, official_client


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw", {"echo": EchoModel()}) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.gateway.ca_path))


@pytest.mark.parametrize("query", ["a=", "a.b=1", "a~=x"])
async def test_ws_door_refuses_what_sagemaker_refuses(stack: Stack, query: str) -> None:
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/echo/ws"
    async with connect(url, ssl=tls(stack)) as healthy:
        await healthy.send("before")
        assert await healthy.recv() == "before"
        async with connect(f"{url}?{query}", ssl=tls(stack)) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1008 and "ModelQueryString" in (ws.close_reason or "")
        await healthy.send("after")
        assert await healthy.recv() == "after"


@pytest.mark.parametrize("query", ["a=", "a.b=1", "a~=x"])
async def test_official_client_gets_input_validation_error(stack: Stack, query: str) -> None:
    healthy = await Healthy(await official_client(stack.gateway)).open()
    error = await open_failing(
        await official_client(stack.gateway), endpoint_name="echo", model_query_string=query
    )
    assert isinstance(error, m.InputValidationError) and "ModelQueryString" in (error.message or "")
    await healthy.check()


async def test_lenient_query_still_takes_deepgram_forms(tmp_path: Path) -> None:
    async with gateway_stack(
        tmp_path / "len", {"echo": EchoModel()}, limits=GatewayLimits(lenient_query=True)
    ) as s:
        url = f"wss://127.0.0.1:{s.gateway.port}/endpoints/echo/ws?keyterm=foo+bar&a="
        async with connect(url, ssl=tls(s)) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"


async def test_a_long_reason_is_utf8_within_123_bytes_and_quotes_what_was_typed(stack: Stack) -> None:
    name = "é" * 70  # not a valid EndpointName; percent-encoded on the wire
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/{name}/ws"
    async with connect(url, ssl=tls(stack)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    close = info.value.rcvd
    assert close is not None and close.code == 1008
    reason = close.reason  # websockets decoded it strictly: invalid UTF-8 would have failed the connection
    assert len(reason.encode()) <= 123 and reason.endswith("…")
    assert "éé" in reason and "%C3" not in reason
