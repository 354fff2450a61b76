"""The model server closes with 1002 where RFC 6455 says the peer broke the protocol.

aiohttp on its own reads unmasked client frames and answers close codes 1006,
5000 and 65535 with 1000; a raw client sends exactly those, and an ordinary
`websockets` session on the same server keeps working throughout.
"""

from __future__ import annotations

import pytest
import websockets
from websockets.frames import Opcode

from bidistream.models.echo import EchoModel
from tests.conftest import running_server
from tests.support.rawws import RawWs, close_payload, frame
from tests.support.waiting import eventually

PATH = "/invocations-bidirectional-stream"


async def test_unmasked_client_frame_closes_1002() -> None:
    async with running_server(EchoModel()) as server:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}{PATH}") as neighbour:
            raw, status = await RawWs.connect(server.port, PATH)
            assert status.startswith("HTTP/1.1 101")
            raw.send(Opcode.TEXT, b"masked is fine")
            assert await raw.recv() == (Opcode.TEXT, b"masked is fine")
            raw.send(Opcode.TEXT, b"not masked", mask=False)
            assert await raw.close_code() == 1002
            await raw.eof()
            raw.close()
            await neighbour.send("still here")
            assert await neighbour.recv() == "still here"
        await eventually(lambda: server.live_sessions == 0)


async def test_unmasked_frame_in_the_upgrade_write_closes_1002() -> None:
    async with running_server(EchoModel()) as server:
        raw, status = await RawWs.connect(server.port, PATH, first=frame(Opcode.BINARY, b"x", mask=False))
        assert status.startswith("HTTP/1.1 101")
        assert await raw.close_code() == 1002
        raw.close()
        await eventually(lambda: server.live_sessions == 0)


@pytest.mark.parametrize("code", [1006, 5000, 65535, 1005, 1015, 999, 2000])
async def test_unsendable_close_code_answered_1002(code: int) -> None:
    async with running_server(EchoModel()) as server:
        raw, _ = await RawWs.connect(server.port, PATH)
        raw.send(Opcode.CLOSE, close_payload(code))
        assert await raw.close_code() == 1002
        raw.close()
        await eventually(lambda: server.live_sessions == 0)


@pytest.mark.parametrize("code", [1000, 1001, 1013, 3000, 4999])
async def test_sendable_close_code_answered_normally(code: int) -> None:
    async with running_server(EchoModel()) as server:
        raw, _ = await RawWs.connect(server.port, PATH)
        raw.send(Opcode.CLOSE, close_payload(code))
        assert await raw.close_code() == 1000
        raw.close()
        await eventually(lambda: server.live_sessions == 0)
