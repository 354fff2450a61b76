"""The WebSocket front door with an ordinary WebSocket client (the `websockets` library)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from bidistream.errors import InputValidationError
from bidistream.model import Session
from bidistream.models.echo import EchoModel
from tests.clients.test_aws_errors import CrashingModel
from tests.support.aws import Stack, gateway_stack


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


class KeyedListen(EchoModel):
    """A Deepgram-style model: ``v1/listen``, the key checked by the model itself."""

    name = "keyed"
    invocation_paths = ("v1/listen",)
    subprotocols = ("token",)
    KEY = "dg-secret-key"

    def check_session(self, session: Session) -> None:
        auth = session.headers.get("Authorization", "")
        offered = [p.strip() for p in session.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if auth != f"Token {self.KEY}" and offered[:2] != ["token", self.KEY]:
            raise InputValidationError("invalid credentials: no valid Deepgram key")


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gwk", {"keyed": KeyedListen(), "echo": EchoModel()}) as s:
        yield s


async def test_ws_forwards_authorization_and_subprotocols_to_the_instance(keyed: Stack) -> None:
    base = f"wss://127.0.0.1:{keyed.gateway.port}/endpoints/keyed/ws/v1/listen?model=nova-3"
    # Key as an Authorization header (Deepgram's server-side SDKs).
    async with connect(
        base, ssl=tls(keyed), additional_headers={"Authorization": "Token dg-secret-key"}
    ) as ws:
        await ws.send("by header")
        assert await ws.recv() == "by header"
    # Key as subprotocols `token, <key>` (browsers, which cannot set headers).
    async with connect(
        base, ssl=tls(keyed), subprotocols=[Subprotocol("token"), Subprotocol(KeyedListen.KEY)]
    ) as ws:
        assert ws.subprotocol == "token"
        await ws.send("by subprotocol")
        assert await ws.recv() == "by subprotocol"


async def test_ws_wrong_key_is_refused_and_healthy_session_untouched(keyed: Stack) -> None:
    healthy_url = f"wss://127.0.0.1:{keyed.gateway.port}/endpoints/echo/ws"
    async with connect(healthy_url, ssl=tls(keyed)) as healthy:
        await healthy.send("before")
        assert await healthy.recv() == "before"
        url = f"wss://127.0.0.1:{keyed.gateway.port}/endpoints/keyed/ws/v1/listen"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, ssl=tls(keyed), additional_headers={"Authorization": "Token wrong"}):
                pass
        # The model refused the upgrade (400): the front door answers the client's upgrade the same
        # way, status and body, instead of accepting and closing (issue 12).
        assert info.value.response.status_code == 400
        assert b"invalid credentials" in info.value.response.body
        await healthy.send("after")
        assert await healthy.recv() == "after"
