"""HTTP/2 door fuzz: random sequences of streams and connection endings from a raw h2 client over TLS.

Every example runs on a fresh connection: a few streams (valid sessions,
garbage bodies, resets, HEADERS+RST_STREAM in one write, malformed header
blocks, InvokeEndpoint bodies), then one ending (a clean GOAWAY, a GOAWAY
with a session in flight, a PING/SETTINGS/empty-DATA flood, an oversize
frame header, a truncated frame, an abort).  Each stream must end the way
the protocol says, each attack with its GOAWAY code; a session on a
neighbouring connection echoes through every example; and after each
example no instance session, gateway session, connection, fd or task is
left over.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import DataFrame, PingFrame, SettingsFrame
from hypothesis import given
from hypothesis import strategies as st

from bidistream.gateway.limits import GatewayLimits
from tests.fuzz.harness import FUZZ, LoopThread, open_fds, settle, task_count
from tests.h2client import H2TestClient
from tests.integration.test_gateway_h2 import EVENT1, FINAL
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import scaled

LIMITS = GatewayLimits(
    max_event_size=4096,
    control_frames_per_second=100,
    control_frame_burst=200,
    frame_timeout=1.0,
    close_grace=0.5,
)
HELLO = b'{"prompt":"Hello"}'
BIDI = [
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", "localhost"),
    (":path", "/endpoints/echo/invocations-bidirectional-stream"),
    ("content-type", "application/vnd.amazon.eventstream"),
]
GET = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/ping")]
MALFORMED: dict[str, list[tuple[str, str]]] = {
    "dup-path": [*GET, (":path", "/x")],
    "no-path": GET[:3],
    "no-method": GET[1:],
    "uppercase": [*GET, ("X-Big", "1")],
    "connection": [*GET, ("connection", "close")],
    "te": [*GET, ("te", "gzip")],
    "protocol": [*GET, (":protocol", "websocket")],
}
PROTOCOL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM, CANCEL = 0x1, 0x6, 0xB, 0x8


@dataclass
class Env:
    lt: LoopThread
    stack: Stack
    neighbour: H2TestClient
    sid: int
    echoes: int
    baseline: dict[str, int]

    def counters(self) -> dict[str, Any]:
        gw, server = self.stack.gateway, self.stack.servers["echo"]
        return {
            "instance sessions": lambda: server.live_sessions,
            "gateway sessions": lambda: gw.live_sessions,
            "client connections": lambda: len(gw.connections),
            "fds": open_fds,
            "tasks": task_count,
        }


async def _invoke(c: H2TestClient, body: bytes) -> None:
    sid = c.request(
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost"),
            (":path", "/endpoints/echo/invocations"),
            ("content-type", "application/octet-stream"),
            ("content-length", str(len(body))),
        ]
    )
    await c.send_within_window(sid, body)
    c.send(sid, b"", end=True)
    await c.wait_end(sid)
    assert c.responses[sid][":status"] == "200" and bytes(c.data[sid]) == body


async def _baseline(env_stack: Stack) -> tuple[H2TestClient, int]:
    n = await H2TestClient.connect(env_stack.gateway.port, env_stack.gateway.ca_path)
    sid = n.open()
    n.send(sid, EVENT1)
    assert (await n.headers(sid))[":status"] == "200"
    await n.events(sid, 1)
    await _invoke(n, b"warm the gateway's pool to the instance")  # one pooled connection from now on
    return n, sid


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    lt = LoopThread()
    exits = AsyncExitStack()
    data_dir: Path = tmp_path_factory.mktemp("fuzz-h2")
    try:
        stack = lt.run(exits.enter_async_context(gateway_stack(data_dir, limits=LIMITS)))
        neighbour, sid = lt.run(_baseline(stack))
        e = Env(lt, stack, neighbour, sid, 1, {})

        async def measure() -> dict[str, int]:
            out = {}
            for k, f in e.counters().items():
                v = f()
                out[k] = await v if asyncio.iscoroutine(v) else v
            return out

        e.baseline = lt.run(measure())
        yield e

        async def down() -> None:
            neighbour.close()
            await exits.aclose()

        lt.run(down())
    finally:
        lt.close()


stream_action = st.one_of(
    st.tuples(st.just("ok"), st.integers(1, 3)),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=80)),
    st.tuples(st.just("reset"), st.integers(0, 2)),
    st.tuples(st.just("headers+rst"), st.just(0)),
    st.tuples(st.just("malformed"), st.sampled_from(sorted(MALFORMED))),
    st.tuples(st.just("invoke"), st.integers(0, 200_000)),
)
endings = st.sampled_from(
    [
        "close",
        "goaway-midflight",
        "ping-flood",
        "settings-flood",
        "empty-data-flood",
        "oversize",
        "truncated",
        "abort",
    ]
)


async def _stream(c: H2TestClient, kind: str, arg: Any) -> None:
    if kind == "ok":
        sid = c.open()
        for _ in range(arg):
            c.send(sid, EVENT1)
        c.send(sid, FINAL, end=True)
        await c.wait_end(sid)
        assert c.responses.get(sid, {}).get(":status") == "200", (c.responses.get(sid), c.resets.get(sid))
        assert [e["payload"] for e in c.decoded(sid)] == [HELLO] * arg
    elif kind == "garbage":
        sid = c.open()
        c.send(sid, arg, end=True)
        await c.wait_end(sid)
        status = c.responses.get(sid, {}).get(":status")
        if status == "200":
            last = c.decoded(sid)[-1]
            assert last[":message-type"] == "exception" and last[":exception-type"] == "ModelStreamError"
        else:
            assert status in ("400", "413"), (status, c.resets.get(sid))
            assert json.loads(bytes(c.data[sid]))["ErrorCode"] in {"InvalidFrame", "MessageTooLarge"}
    elif kind == "reset":
        sid = c.open()
        for _ in range(arg):
            c.send(sid, EVENT1)
        if arg:
            await c.events(sid, arg)
        c.conn.reset_stream(sid, CANCEL)
        c._flush()
    elif kind == "headers+rst":
        # RFC 9113 allows cancelling a request at once; both frames in one write (issue 10.3).
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, BIDI)
        c.conn.reset_stream(sid, CANCEL)
        c._flush()
        await c.ping()
        assert c.goaway is None and not c.eof.is_set(), "HEADERS+RST_STREAM took the connection down"
    elif kind == "malformed":
        sid = c.request(MALFORMED[arg], end=True)
        await c.wait_end(sid)
        assert c.resets.get(sid) == PROTOCOL_ERROR, (arg, c.responses.get(sid))
    elif kind == "invoke":
        await _invoke(c, bytes(i % 251 for i in range(arg)))


async def _ending(c: H2TestClient, kind: str) -> None:
    if kind == "close":
        c.conn.close_connection()
        c._flush()
    elif kind == "goaway-midflight":
        sid = c.open()
        c.send(sid, EVENT1)
        await c.events(sid, 1)
        c.conn.close_connection()
        c._flush()
    elif kind in ("ping-flood", "settings-flood", "empty-data-flood"):
        if kind == "ping-flood":
            frame = PingFrame(0, b"fuzzping").serialize()
        elif kind == "settings-flood":
            frame = SettingsFrame(0).serialize()
        else:
            sid = c.open()
            frame = DataFrame(sid, b"").serialize()
        c.raw(frame * 400)
        assert (await c.wait_goaway()).error_code == ENHANCE_YOUR_CALM
    elif kind == "oversize":
        c.raw((2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big"))
        assert (await c.wait_goaway()).error_code == FRAME_SIZE_ERROR
    elif kind == "truncated":
        sid = c.open()
        c.raw(DataFrame(sid, b"x" * 100).serialize()[:20])
    elif kind == "abort":
        sid = c.open()
        c.send(sid, EVENT1)


async def _example(env: Env, actions: list[tuple[str, Any]], ending: str) -> None:
    gw = env.stack.gateway
    c = await H2TestClient.connect(gw.port, gw.ca_path)
    try:
        for kind, arg in actions:
            await _stream(c, kind, arg)
        await _ending(c, ending)
    finally:
        c.close()
    # The neighbour's session echoes through it all.
    env.neighbour.send(env.sid, EVENT1)
    env.echoes += 1
    await env.neighbour.events(env.sid, env.echoes)
    await settle(env.counters(), env.baseline)


@FUZZ
@given(actions=st.lists(stream_action, min_size=0, max_size=5), ending=endings)
def test_h2_sequences(env: Env, actions: list[tuple[str, Any]], ending: str) -> None:
    env.lt.run(_example(env, actions, ending), timeout=scaled(60))
