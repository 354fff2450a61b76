"""A session its client abandons while the gateway is still opening the instance leaves no fd behind.

The gateway cancels the instance connect and shuts its socket; shut is not
closed, and the cancelled frame kept the socket (and its descriptor) alive
until a cyclic garbage collection.  The cyclic GC is off here, so only an
explicit close returns the descriptor.
"""

from __future__ import annotations

import gc
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.frames import Opcode

from tests.clients.test_aws_bidi import Stack, gateway_stack
from tests.h2client import H2TestClient
from tests.integration.test_gateway_h2 import EVENT1
from tests.support.rawws import RawWs, close_payload
from tests.support.waiting import eventually


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def stack(tmp_path: Path, no_cyclic_gc: None) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw") as s:
        yield s


def _left(stack: Stack, fds: int) -> dict[str, int]:
    """What is still above its baseline (empty when everything is back)."""
    now = {
        "fds": open_fds() - fds,
        "instance sessions": stack.servers["echo"].live_sessions,
        "client connections": len(stack.gateway.connections),
    }
    return {k: v for k, v in now.items() if v > 0}


async def test_h2_stream_abandoned_while_the_instance_connects(stack: Stack) -> None:
    fds = open_fds()
    for _ in range(30):
        c = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
        sid = c.open()
        c.send(sid, EVENT1)
        await c.ping()  # the gateway has the stream and is opening the instance
        c.close()  # TCP abort
    await eventually(lambda: not _left(stack, fds))
    assert not _left(stack, fds)


async def test_ws_abandoned_right_after_the_upgrade(stack: Stack) -> None:
    ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
    fds = open_fds()
    for _ in range(30):
        raw, status = await RawWs.connect(stack.gateway.port, "/endpoints/echo/ws", tls=ctx)
        assert status.startswith("HTTP/1.1 101")
        raw.send(Opcode.CLOSE, close_payload(1000))
        raw.close()  # TCP abort
    await eventually(lambda: not _left(stack, fds))
    assert not _left(stack, fds)
