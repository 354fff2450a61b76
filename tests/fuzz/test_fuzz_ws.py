"""WebSocket fuzz: frame sequences against the gateway's WS door and the model server, and upgrades.

A sequence is some valid messages (single frames, fragmented ones, pings) and
then one ending: a valid close, or one RFC 6455 violation (unmasked frame,
reserved bit, unknown opcode, oversized or fragmented control frame, orphan
or interleaved continuation, invalid UTF-8, a message over the size limit, a
close code nobody may send, a one-byte close payload).  The oracle is the
close code RFC 6455 assigns to the first violation; echoes that arrive before
it are a prefix of what was sent.  A neighbour session echoes through every
example and nothing (instance session, gateway session, connection, fd,
task) outlives its client.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect

from bidistream.container.server import ModelServer
from bidistream.gateway.limits import GatewayLimits
from bidistream.models.echo import EchoModel
from tests.conftest import running_server
from tests.fuzz.harness import FUZZ, LoopThread, open_fds, settle, task_count
from tests.support.aws import Stack, gateway_stack
from tests.support.rawws import RawWs, close_payload, frame
from tests.support.waiting import scaled

MAX = 4096  # message size limit on both targets
TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


@dataclass
class Target:
    name: str
    port: int
    path: str
    tls: ssl.SSLContext | None
    # websockets (the gateway) echoes a client's close code; our model server says 1000.
    echoes_close_code: bool


@dataclass
class Env:
    lt: LoopThread
    stack: Stack
    direct: ModelServer
    targets: dict[str, Target]
    neighbours: dict[str, ClientConnection] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)

    def counters(self) -> dict[str, Any]:
        gw = self.stack.gateway
        return {
            "instance sessions": lambda: self.stack.servers["echo"].live_sessions,
            "direct sessions": lambda: self.direct.live_sessions,
            "gateway sessions": lambda: gw.live_sessions,
            "client connections": lambda: len(gw.connections),
            "fds": open_fds,
            "tasks": task_count,
        }


async def _measure(env: Env) -> dict[str, int]:
    out = {}
    for k, f in env.counters().items():
        v = f()
        out[k] = await v if asyncio.iscoroutine(v) else v
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lt = LoopThread()
    exits = AsyncExitStack()
    data_dir: Path = tmp_path_factory.mktemp("fuzz-ws")
    try:
        stack = lt.run(
            exits.enter_async_context(gateway_stack(data_dir, limits=GatewayLimits(max_event_size=MAX)))
        )
        direct = lt.run(exits.enter_async_context(running_server(EchoModel(), max_message_size=MAX)))
        tls = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
        e = Env(
            lt,
            stack,
            direct,
            {
                "gateway": Target("gateway", stack.gateway.port, "/endpoints/echo/ws", tls, True),
                "server": Target("server", direct.port, "/invocations-bidirectional-stream", None, False),
            },
        )

        async def neighbours() -> None:
            for name, t in e.targets.items():
                scheme = "wss" if t.tls else "ws"
                ws = e.neighbours[name] = await connect(f"{scheme}://127.0.0.1:{t.port}{t.path}", ssl=t.tls)
                await ws.send("warm")  # one round trip: the gateway's instance session is up
                assert await ws.recv() == "warm"

        lt.run(neighbours())
        e.baseline = lt.run(_measure(e))
        yield e

        async def down() -> None:
            for ws in e.neighbours.values():
                await ws.close()
            await exits.aclose()

        lt.run(down())
    finally:
        lt.close()


# ---------------------------------------------------------------- the grammar
text = st.text(max_size=40).map(lambda s: s.encode())
blob = st.binary(max_size=300)
message = st.one_of(
    st.tuples(st.just("text"), text),
    st.tuples(st.just("binary"), blob),
    st.tuples(st.just("fragmented"), st.lists(blob, min_size=2, max_size=4)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
)
VIOLATIONS: dict[str, int] = {
    "unmasked": 1002,
    "rsv": 1002,
    "opcode": 1002,
    "big-ping": 1002,
    "fragmented-ping": 1002,
    "orphan-continuation": 1002,
    "interleaved": 1002,
    "bad-utf8": 1007,
    "oversize": 1009,
    "bad-close-code": 1002,
    "one-byte-close": 1002,
}
ending = st.one_of(
    st.tuples(st.just("close"), st.sampled_from([1000, 1001, 3000, 4999])),
    st.tuples(
        st.sampled_from(sorted(VIOLATIONS)), st.sampled_from([1004, 1005, 1006, 1015, 2000, 5000, 65535])
    ),
)


def _message_bytes(kind: str, data: Any) -> tuple[bytes, tuple[int, bytes] | None]:
    """Wire bytes of one valid unit, and the echo it should produce (None for a ping)."""
    if kind == "text":
        return frame(TEXT, data), (TEXT, data)
    if kind == "binary":
        return frame(BINARY, data), (BINARY, data)
    if kind == "fragmented":
        wire = frame(BINARY, data[0], fin=False)
        wire += b"".join(frame(CONT, d, fin=False) for d in data[1:-1]) + frame(CONT, data[-1])
        return wire, (BINARY, b"".join(data))
    return frame(PING, data), None


def _violation(kind: str, code: int) -> bytes:
    return {
        "unmasked": lambda: frame(TEXT, b"bare", mask=False),
        "rsv": lambda: frame(BINARY, b"r", rsv1=True),
        "opcode": lambda: frame(0x3, b"?"),
        "big-ping": lambda: frame(PING, b"p" * 126),
        "fragmented-ping": lambda: frame(PING, b"p", fin=False),
        "orphan-continuation": lambda: frame(CONT, b"c"),
        "interleaved": lambda: frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"),
        "bad-utf8": lambda: frame(TEXT, b"\xff\xfe"),
        "oversize": lambda: frame(BINARY, b"o" * (MAX + 1)),
        "bad-close-code": lambda: frame(CLOSE, close_payload(code)),
        "one-byte-close": lambda: frame(CLOSE, b"\x03"),
    }[kind]()


async def _frames_example(
    env: Env, target: Target, units: list[tuple[str, Any]], end: tuple[str, int]
) -> None:
    raw, status = await RawWs.connect(target.port, target.path, tls=target.tls)
    try:
        assert status.startswith("HTTP/1.1 101"), status
        wire = b"".join(_message_bytes(k, d)[0] for k, d in units)
        expected = [echo for k, d in units if (echo := _message_bytes(k, d)[1]) is not None]
        kind, arg = end
        if kind == "close":
            raw.writer.write(wire + frame(CLOSE, close_payload(arg)))
            got, code = await raw.messages_until_close()
            assert code == (arg if target.echoes_close_code else 1000), (target.name, code)
        else:
            raw.writer.write(wire + _violation(kind, arg))
            got, code = await raw.messages_until_close()
            assert code == VIOLATIONS[kind], (target.name, kind, code)
        assert got == expected[: len(got)], "echoes out of order or altered"
    finally:
        raw.close()
    await _neighbours_and_leaks(env)


async def _neighbours_and_leaks(env: Env) -> None:
    for ws in env.neighbours.values():
        await ws.send("neighbour")
        assert await asyncio.wait_for(ws.recv(), scaled(10)) == "neighbour"
    await settle(env.counters(), env.baseline)


@FUZZ
@given(
    target=st.sampled_from(["gateway", "server"]),
    units=st.lists(message, max_size=5),
    end=ending,
)
def test_ws_frame_sequences(
    env: Env, target: str, units: list[tuple[str, Any]], end: tuple[str, int]
) -> None:
    env.lt.run(_frames_example(env, env.targets[target], units, end), timeout=scaled(60))


# ---------------------------------------------------------------- upgrades
async def _upgrade_example(env: Env, extra_headers: int, long_line: int) -> None:
    t = env.targets["gateway"]
    extra = [f"X-Fuzz-{i}: v" for i in range(extra_headers)]
    if long_line:
        extra.append("X-Long: " + "a" * long_line)
    head = "\r\n".join(
        [
            f"GET {t.path} HTTP/1.1",
            f"Host: 127.0.0.1:{t.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *extra,
        ]
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port, ssl=t.tls)
    try:
        writer.write(head.encode() + b"\r\n\r\n")
        status = (await asyncio.wait_for(reader.readuntil(b"\r\n"), scaled(10))).decode()
        too_big = extra_headers + 5 > 128 or long_line > 8192
        assert status.startswith("HTTP/1.1 431" if too_big else "HTTP/1.1 101"), (
            extra_headers,
            long_line,
            status,
        )
    finally:
        writer.transport.abort()
    await _neighbours_and_leaks(env)


@FUZZ
@given(
    extra_headers=st.one_of(st.integers(0, 100), st.integers(140, 250)),
    long_line=st.one_of(st.just(0), st.integers(100, 7000), st.integers(9000, 20000)),
)
def test_ws_upgrade_heads(env: Env, extra_headers: int, long_line: int) -> None:
    env.lt.run(_upgrade_example(env, extra_headers, long_line), timeout=scaled(60))
