"""WebSocket upgrades whose head breaks a limit get an HTTP answer, not a dropped socket (issue 10.10)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw") as s:
        yield s


async def raw_upgrade(stack: Stack, extra: list[str]) -> bytes:
    """Send an upgrade head by hand over TLS and return everything the gateway answers until EOF."""
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    head = [
        "GET /endpoints/echo/ws HTTP/1.1",
        f"Host: 127.0.0.1:{stack.gateway.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    got = bytearray()
    async with asyncio.timeout(scaled(5)):
        while chunk := await reader.read(65536):
            got += chunk
    writer.close()
    return bytes(got)


@pytest.mark.parametrize(
    "extra",
    [[f"X-Filler-{i}: v" for i in range(130)], ["X-Long: " + "a" * 9000]],
    ids=["130-headers", "9KiB-line"],
)
async def test_oversized_upgrade_head_gets_431(stack: Stack, extra: list[str]) -> None:
    url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/echo/ws"
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    async with connect(url, ssl=ctx) as neighbour:
        answer = await raw_upgrade(stack, extra)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        await neighbour.send("still here")
        assert await neighbour.recv() == "still here"
    await eventually(lambda: stack.servers["echo"].live_sessions == 0)
    await eventually(lambda: not stack.gateway.connections)
