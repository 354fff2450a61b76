"""The model server's write coalescing (container/cork.py), against a recording transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.frames import Close, Frame, Opcode

from bidistream.container.cork import CORK_LIMIT, CorkedTransport


class Recording:
    """The few transport calls CorkedTransport makes, written down in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.writes.append(bytes(data))

    def writelines(self, data: Any) -> None:
        self.writes.append(b"".join(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")


def _data(payload: bytes) -> bytes:
    return Frame(Opcode.BINARY, payload).serialize(mask=False)


def _control(opcode: Opcode, payload: bytes = b"") -> bytes:
    return Frame(opcode, payload).serialize(mask=False)


async def _turn() -> None:
    """Let the loop run the callbacks scheduled so far (the cork's flush is one)."""
    await asyncio.sleep(0)


async def test_frames_of_one_turn_leave_in_one_write_in_order() -> None:
    real = Recording()
    cork = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    frames = [_data(bytes([i]) * 64) for i in range(32)]
    for f in frames:
        cork.write(f)
    assert real.writes == []  # held until the task lets the loop run
    await _turn()
    assert real.writes == [b"".join(frames)]
    cork.write(frames[0])
    await _turn()
    assert real.writes[1:] == [frames[0]]  # a lone frame is written as it is


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
async def test_a_control_frame_flushes_what_is_held_first(opcode: Opcode) -> None:
    """aiohttp may close the transport right after its close frame: nothing may stay behind it."""
    real = Recording()
    cork = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    a, b = _data(b"a" * 10), _data(b"b" * 10)
    payload = Close(1000, "").serialize() if opcode is Opcode.CLOSE else b"p"
    ctl = _control(opcode, payload)
    cork.write(a)
    cork.write(b)
    cork.write(ctl)
    assert real.writes == [a + b, ctl]
    await _turn()  # the scheduled flush finds nothing left
    assert real.writes == [a + b, ctl]


async def test_large_writes_and_full_batches_go_out_at_once() -> None:
    """Backpressure: the real transport sees every byte within CORK_LIMIT of it being sent."""
    real = Recording()
    cork = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    small = _data(b"s" * 100)
    big = b"\x02" + b"x" * CORK_LIMIT  # a write as large as the limit (e.g. a large frame's payload)
    cork.write(small)
    cork.write(big)
    assert real.writes == [small, big]
    held = 0
    while held + len(small) < CORK_LIMIT:
        cork.write(small)
        held += len(small)
    assert real.writes == [small, big]
    cork.write(small)  # this one would reach the limit
    assert b"".join(real.writes[2:]) == small * (held // len(small) + 1)
    assert sum(len(w) for w in real.writes[2:]) <= CORK_LIMIT + len(small)


async def test_close_flushes_abort_drops_and_a_closed_peer_gets_nothing() -> None:
    loop = asyncio.get_running_loop()
    real = Recording()
    cork = CorkedTransport(real, loop)  # type: ignore[arg-type]
    cork.write(_data(b"last"))
    cork.close()
    assert real.writes == [_data(b"last")] and real.calls == ["close"]

    real = Recording()
    cork = CorkedTransport(real, loop)  # type: ignore[arg-type]
    cork.write(_data(b"lost"))
    cork.abort()
    await _turn()
    assert real.writes == [] and real.calls == ["abort"]

    real = Recording()
    cork = CorkedTransport(real, loop)  # type: ignore[arg-type]
    cork.write(_data(b"too late"))
    real.closing = True  # the connection was lost before the loop turned
    await _turn()
    assert real.writes == []
    assert cork.is_closing()


async def test_other_transport_calls_pass_through() -> None:
    real = Recording()
    cork = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert cork.get_extra_info("peername") == ("127.0.0.1", 1)
    assert cork.get_extra_info("nothing", 7) == 7
    cork.pause_reading()
    assert real.calls == ["pause_reading"]
    cork.write(_data(b"x"))
    cork.writelines([b"a", b"b"])
    assert real.writes == [_data(b"x"), b"ab"]
