"""The WebSocket front door with an ordinary WebSocket client (the `websockets` library)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bidistream.models.echo import EchoModel
from tests.clients.test_aws_bidi import Stack, gateway_stack
from tests.clients.test_aws_errors import CrashingModel


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw", {"echo": EchoModel(), "crashing": CrashingModel()}) as s:
        yield s


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.gateway.ca_path))


async def test_ws_echo_text_and_binary(stack: Stack) -> None:
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/echo/ws"
    async with connect(url, ssl=tls(stack)) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
        await ws.close()
    assert ws.close_code == 1000


async def test_ws_unknown_endpoint_closes_1008(stack: Stack) -> None:
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/nope/ws"
    async with connect(url, ssl=tls(stack)) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008
    assert "Endpoint nope not found" in (ws.close_reason or "")


async def test_ws_bad_path_and_query(stack: Stack) -> None:
    for tail in ("/ws/v1/../x", "/ws?model=a b"):
        url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/echo{tail.replace(' ', '%20%')}"
        async with connect(url, ssl=tls(stack)) as ws:
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 1008


async def test_ws_model_crash_relays_close_code(stack: Stack) -> None:
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/crashing/ws"
    async with connect(url, ssl=tls(stack)) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1011
    assert "crashed" in (ws.close_reason or "")
