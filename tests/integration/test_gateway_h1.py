"""The HTTP/1.1 door reads nothing while a request runs (issue 9: h11 PAUSED).

A client may pipeline its next requests behind the first.  While the first
is being answered, h11 refuses to parse further (``PAUSED``) and would buffer
every byte the transport still delivers; the door pauses the transport
instead, so what waits stays in the kernel and TCP pushes back.  On the next
cycle reading resumes and the pipelined request is served.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bidistream.gateway.h1front import H1Protocol
from bidistream.model import Model, Request, Response
from tests.integration.test_gateway_backpressure import plateau
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled

PIPELINED = 5 * 1000 * 1000  # the second request's body, under InvokeEndpoint's 6 MB


class Gated(Model):
    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def invoke(self, request: Request) -> Response:
        self.calls += 1
        if self.calls == 1:
            await self.gate.wait()
        return Response(str(len(request.body)).encode(), "text/plain")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw", {"gated": Gated()}) as s:
        yield s


def h1_door(stack: Stack) -> H1Protocol:
    doors = [c for c in stack.gateway.connections if isinstance(c, H1Protocol)]
    assert len(doors) == 1
    return doors[0]


def request(body: bytes) -> bytes:
    return (
        b"POST /endpoints/gated/invocations HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


async def test_pipelined_bytes_wait_in_the_kernel_while_a_request_runs(stack: Stack) -> None:
    model = stack.servers["gated"].model
    assert isinstance(model, Gated)
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port, ssl=ctx)
    try:
        writer.write(request(b"first"))
        await eventually(lambda: model.calls == 1)
        writer.write(request(b"x" * PIPELINED))
        door = h1_door(stack)
        # Whatever the door had read before pausing is all h11 holds: far below the 5 MB sent.
        buffered = await plateau(lambda: len(door.conn.trailing_data[0]), lambda: True)
        assert buffered < 1024 * 1024, buffered
        assert door.reading_paused
        model.gate.set()
        async with asyncio.timeout(scaled(15)):
            await writer.drain()
            first = await reader.readuntil(b"\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(len(b"5")) == b"5"
            second = await reader.readuntil(b"\r\n\r\n")
            assert second.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(len(str(PIPELINED))) == str(PIPELINED).encode()
        assert model.calls == 2
    finally:
        writer.transport.abort()
