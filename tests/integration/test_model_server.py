"""The container contract on real sockets, with the `websockets` package as the client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets
from aiohttp import WSMsgType
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bidistream.frames import Frame
from bidistream.model import Model, Session
from bidistream.models.echo import EchoModel
from bidistream.models.words import WordsModel
from tests.conftest import running_server, serve_process
from tests.fixtures.models import (
    CheckingModel,
    FailingModel,
    PathQueryModel,
    SlowInvokeModel,
    SlowLoadModel,
    SlowReaderModel,
    StreamedInvokeModel,
    StuckModel,
)
from tests.support.waiting import eventually, scaled

BIDI = "invocations-bidirectional-stream"
MiB = 1024 * 1024


def ws_url(port: int, path: str = BIDI) -> str:
    return f"ws://127.0.0.1:{port}/{path}"


async def close_code(ws: websockets.ClientConnection, timeout: float = 5.0) -> tuple[int | None, str]:
    """Read until the server closes; return its close code and reason."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else "")


# --------------------------------------------------------------------- echo / words
async def test_echo_preserves_kind_and_order() -> None:
    async with running_server(EchoModel()) as server, websockets.connect(ws_url(server.port)) as ws:
        await ws.send("héllo text")
        await ws.send(b"\x00\xffbinary")
        await ws.send("second")
        assert await ws.recv() == "héllo text"
        got = await ws.recv()
        assert isinstance(got, bytes) and got == b"\x00\xffbinary"
        assert await ws.recv() == "second"


async def test_output_owed_after_client_close_is_still_delivered() -> None:
    """A client that closes right after sending still gets what the model owes it."""
    async with running_server(WordsModel(delay=0.02)) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server.port), autoclose=False) as ws:
            await ws.send_str("a b c")
            await ws._writer.close(1000, b"")  # half-close: close frame out, keep reading
            got = []
            while (msg := await ws.receive(timeout=scaled(5))).type is WSMsgType.TEXT:
                got.append(msg.data)
            assert got == ["a", "b", "c"]
            assert msg.type is WSMsgType.CLOSE and msg.data == 1000


async def test_echo_one_mib_frame_round_trips() -> None:
    payload = os.urandom(MiB)
    async with (
        running_server(EchoModel()) as server,
        websockets.connect(ws_url(server.port), max_size=2 * MiB) as ws,
    ):
        await ws.send(payload)
        assert await ws.recv() == payload


async def test_words_stream_back_before_input_ends() -> None:
    """Full duplex: the first words arrive while the session still has input to send."""
    async with running_server(WordsModel()) as server, websockets.connect(ws_url(server.port)) as ws:
        await ws.send("the quick brown fox")
        assert [await ws.recv() for _ in range(4)] == ["the", "quick", "brown", "fox"]
        await ws.send("jumps over")
        assert [await ws.recv() for _ in range(2)] == ["jumps", "over"]
        await ws.close()


async def test_words_delay_streams_one_by_one_while_input_keeps_arriving() -> None:
    async with (
        running_server(WordsModel(delay=0.05)) as server,
        websockets.connect(ws_url(server.port)) as ws,
    ):
        started = time.monotonic()
        await ws.send("a b c d e f")
        first = await ws.recv()
        first_at = time.monotonic() - started
        await ws.send("g h")  # sent while words of the first frame are still streaming
        rest = [await ws.recv() for _ in range(7)]
        assert first == "a" and rest == ["b", "c", "d", "e", "f", "g", "h"]
        assert first_at < scaled(0.25)  # one word's delay, not the whole frame's


async def test_words_rejects_binary_with_policy_close() -> None:
    async with running_server(WordsModel()) as server, websockets.connect(ws_url(server.port)) as ws:
        await ws.send(b"\x01\x02")
        code, reason = await close_code(ws)
        assert code == 1008 and "text frames only" in reason


# --------------------------------------------------------------------- paths / query
async def test_custom_invocation_path_and_query_reach_the_model() -> None:
    async with running_server(PathQueryModel()) as server:
        url = ws_url(server.port, "v1/listen") + "?model=nova-3&keyterm=a%20b&x=1&x=2"
        headers = {"X-Amzn-SageMaker-Request-Id": "req-123"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send("hi")
            info = json.loads(await ws.recv())
        assert info["path"] == "v1/listen"
        assert info["raw_query"] == "model=nova-3&keyterm=a%20b&x=1&x=2"  # byte for byte
        assert ["keyterm", "a b"] in info["query"] and ["x", "2"] in info["query"]
        assert info["request_id"] == "req-123"
        async with websockets.connect(ws_url(server.port, "custom/deep.path_1")) as ws:
            await ws.send("hi")
            assert json.loads(await ws.recv())["path"] == "custom/deep.path_1"
        async with websockets.connect(ws_url(server.port)) as ws:
            await ws.send("hi")
            assert json.loads(await ws.recv())["path"] == BIDI


async def test_unknown_path_refuses_upgrade_with_404() -> None:
    async with running_server(EchoModel()) as server:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server.port, "v1/listen")):
                pass
        assert info.value.response.status_code == 404
        assert b"no route" in info.value.response.body


async def test_check_session_refusal_is_400_with_json_body() -> None:
    async with running_server(CheckingModel()) as server:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(server.port) + "?bad=1"):
                pass
        assert info.value.response.status_code == 400
        assert info.value.response.headers["dg-error"] == "parameter bad is not allowed"
        assert json.loads(info.value.response.body) == {
            "err_code": "Bad Request",
            "err_msg": "parameter bad is not allowed",
        }
        async with websockets.connect(ws_url(server.port) + "?good=1") as ws:
            await ws.send("still fine")
            assert await ws.recv() == "still fine"


# --------------------------------------------------------------------- pings / accept
async def test_ping_is_answered_with_same_payload() -> None:
    async with running_server(EchoModel()) as server, websockets.connect(ws_url(server.port)) as ws:
        waiter = await ws.ping(b"payload-123")
        latency = await asyncio.wait_for(waiter, scaled(2))
        assert latency >= 0


async def test_ping_answered_with_same_payload_on_raw_socket() -> None:
    """Check the pong's payload bytes on the wire, not just the client's bookkeeping."""
    async with running_server(EchoModel()) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url(server.port), autoping=False) as ws:
            await ws.ping(b"exact-bytes")
            msg = await ws.receive(timeout=scaled(2))
            assert msg.type is aiohttp.WSMsgType.PONG
            assert msg.data == b"exact-bytes"


async def test_accept_is_fast_while_other_sessions_are_busy() -> None:
    async with running_server(WordsModel(delay=0.001)) as server:
        busy = [await websockets.connect(ws_url(server.port)) for _ in range(10)]
        received = [0] * len(busy)

        async def drain(i: int, ws: websockets.ClientConnection) -> None:
            async for _ in ws:
                received[i] += 1

        drains = [asyncio.create_task(drain(i, ws)) for i, ws in enumerate(busy)]
        for ws in busy:
            await ws.send(" ".join(["word"] * 2000))
        # Measure only once every busy session is streaming.
        await eventually(lambda: all(n > 0 for n in received))
        times = []
        for _ in range(20):
            began = time.perf_counter()
            ws = await websockets.connect(ws_url(server.port))
            times.append(time.perf_counter() - began)
            await ws.close()
        assert all(n > 0 for n in received), "busy sessions stopped streaming during the accepts"
        for ws in busy:
            await ws.close()
        for task in drains:
            task.cancel()
        # The accept deadline (250 ms) is a named limit, not a speed bar: stretched on a slow machine.
        assert max(times) < scaled(0.250), f"slowest accept {max(times) * 1000:.1f} ms"


# --------------------------------------------------------------------- limits
async def test_oversized_message_closes_1009_and_other_sessions_survive() -> None:
    async with running_server(EchoModel(), max_message_size=64 * 1024) as server:
        async with (
            websockets.connect(ws_url(server.port)) as healthy,
            websockets.connect(ws_url(server.port), max_size=None) as ws,
        ):
            await ws.send(b"x" * (64 * 1024 + 1))
            code, _ = await close_code(ws)
            assert code == 1009
            await healthy.send("ok")
            assert await healthy.recv() == "ok"


async def test_session_limit_refuses_the_upgrade_with_503() -> None:
    # Admission control: a full instance says so before the 101, so the router
    # can try another instance without a session ever being opened here.
    async with running_server(EchoModel(), max_sessions=2) as server:
        a = await websockets.connect(ws_url(server.port))
        b = await websockets.connect(ws_url(server.port))
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(ws_url(server.port))
        assert info.value.response.status_code == 503
        body = json.loads(info.value.response.body or b"{}")
        assert body["error"] == "InstanceFull" and "instance full (2 sessions)" in body["message"]
        await a.send("a")
        assert await a.recv() == "a"
        await a.close()
        await eventually(lambda: server.live_sessions == 1)  # a's slot is free once the server saw it close
        async with websockets.connect(ws_url(server.port)) as d:
            await d.send("d")
            assert await d.recv() == "d"
        await b.close()


async def test_max_session_duration_closes_1008() -> None:
    async with running_server(EchoModel(), max_session_duration=0.5) as server:
        async with websockets.connect(ws_url(server.port)) as ws:
            began = time.monotonic()
            code, reason = await close_code(ws)
            assert code == 1008 and "max session duration" in reason
            assert 0.4 < time.monotonic() - began < scaled(3)


async def test_idle_timeout_closes_1011_but_activity_keeps_alive() -> None:
    async with running_server(EchoModel(), idle_timeout=scaled(0.6)) as server:
        async with (
            websockets.connect(ws_url(server.port)) as busy,
            websockets.connect(ws_url(server.port)) as idle,
        ):
            for _ in range(6):
                await busy.send("tick")
                assert await busy.recv() == "tick"
                await asyncio.sleep(scaled(0.2))  # activity well inside the idle limit
            code, reason = await close_code(idle)
            assert code == 1011 and "idle" in reason
            await busy.send("still here")
            assert await busy.recv() == "still here"


async def test_model_exception_closes_1011_and_other_session_untouched() -> None:
    async with running_server(FailingModel()) as server:
        async with (
            websockets.connect(ws_url(server.port)) as good,
            websockets.connect(ws_url(server.port)) as bad,
        ):
            await good.send("before")
            assert await good.recv() == "before"
            await bad.send("boom")
            code, reason = await close_code(bad)
            assert code == 1011
            assert "boom requested by the client" in reason and "Traceback" not in reason
            await good.send("after")
            assert await good.recv() == "after"


async def test_backpressure_pauses_reads_when_model_does_not_read() -> None:
    """A model that never reads must stop the client's sends, not buffer without bound."""
    async with running_server(StuckModel()) as server:
        async with websockets.connect(ws_url(server.port), write_limit=64 * 1024) as ws:
            chunk = b"\x00" * (256 * 1024)
            sent = 0

            async def push() -> None:
                nonlocal sent
                while True:
                    await ws.send(chunk)
                    sent += 1

            pusher = asyncio.create_task(push())
            await asyncio.sleep(2.0)
            pusher.cancel()
            ws.transport.abort()  # a graceful close would queue behind the unread data
            pushed_mib = sent * len(chunk) / MiB
            # aiohttp's 64 KiB buffer + kernel socket buffers stay well under 64 MiB;
            # without backpressure 2 s of loopback moves gigabytes.
            assert pushed_mib < 64, f"client pushed {pushed_mib:.0f} MiB into a model that never reads"


async def test_slow_reader_gets_every_frame_in_order() -> None:
    model = SlowReaderModel(delay=0.01)
    async with running_server(model) as server, websockets.connect(ws_url(server.port)) as ws:
        for i in range(60):
            await ws.send(b"x" * (i + 1))
        got = [await ws.recv() for _ in range(60)]
        assert got == [str(i + 1) for i in range(60)]


# --------------------------------------------------------------------- HTTP side
async def test_ping_and_invocations() -> None:
    async with running_server(WordsModel()) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{base}/ping") as resp:
            assert resp.status == 200 and await resp.read() == b""
        async with http.post(
            f"{base}/invocations", data="hello streaming world", headers={"Content-Type": "text/plain"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            assert await resp.json() == ["hello", "streaming", "world"]
        async with http.post(f"{base}/nope") as resp:
            assert resp.status == 404 and "no route" in (await resp.json())["message"]
        async with http.get(f"{base}/invocations") as resp:
            assert resp.status == 405


async def test_invocations_content_type_passes_through_echo() -> None:
    async with running_server(EchoModel()) as server, aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{server.port}/invocations",
            data=b"\x01\x02",
            headers={"Content-Type": "application/x-custom"},
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/x-custom"
            assert await resp.read() == b"\x01\x02"


async def test_invocation_model_error_is_clear_5xx_without_traceback() -> None:
    async with running_server(FailingModel()) as server, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{server.port}/invocations", data=b"x") as resp:
            assert resp.status == 500
            body = await resp.json()
            assert "invoke exploded on purpose" in body["message"]
            assert "Traceback" not in json.dumps(body)


async def test_invocation_time_limit_gives_504() -> None:
    async with (
        running_server(SlowInvokeModel(), invoke_timeout=0.3) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(f"http://127.0.0.1:{server.port}/invocations", data=b"x") as resp:
            assert resp.status == 504
            assert (await resp.json())["error"] == "ModelInvocationTimeExceeded"


async def test_invocation_body_limit_gives_413() -> None:
    async with running_server(EchoModel(), max_invoke_body=1000) as server, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{server.port}/invocations", data=b"x" * 5000) as resp:
            assert resp.status == 413


async def test_streamed_invocation_is_chunked() -> None:
    async with running_server(StreamedInvokeModel()) as server, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{server.port}/invocations", data=b"one two three") as resp:
            assert resp.status == 200
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            chunks = [chunk async for chunk in resp.content.iter_any()]
            assert b"".join(chunks) == b"one\ntwo\nthree\n"


async def test_ping_is_503_while_loading_then_200() -> None:
    from bidistream.container.server import ModelServer

    server = ModelServer(SlowLoadModel(delay=1.0), port=0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.port}"
            began = time.monotonic()
            async with http.get(f"{base}/ping") as resp:
                assert resp.status == 503
            assert time.monotonic() - began < scaled(2)
            with pytest.raises(InvalidStatus) as info:
                async with websockets.connect(ws_url(server.port)):
                    pass
            assert info.value.response.status_code == 503
            await server.wait_loaded(timeout=scaled(10))
            async with http.get(f"{base}/ping") as resp:
                assert resp.status == 200
    finally:
        await server.stop(drain_timeout=0)


# --------------------------------------------------------------------- process / SIGTERM
async def test_port_from_sagemaker_bind_to_port_env() -> None:
    from tests.conftest import free_port

    port = free_port()
    with serve_process("echo", env={"SAGEMAKER_BIND_TO_PORT": str(port)}, port=port):
        async with websockets.connect(ws_url(port)) as ws:
            await ws.send("env port")
            assert await ws.recv() == "env port"


async def test_sigterm_drains_live_sessions_then_stops() -> None:
    with serve_process("words", "--set", "delay=0.05", "--drain-timeout", "10") as (proc, port):
        ws = await websockets.connect(ws_url(port))
        await ws.send(" ".join(f"w{i}" for i in range(20)))
        assert await ws.recv() == "w0"
        proc.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                async with websockets.connect(ws_url(port), open_timeout=scaled(1)):
                    return False
            except (OSError, InvalidStatus):
                return True

        # No new sessions while draining (once the process has handled the signal)...
        await eventually(refused)
        # ...but the live one gets all its words, then ends normally when the client is done.
        rest = [await ws.recv() for _ in range(19)]
        assert rest == [f"w{i}" for i in range(1, 20)]
        await ws.close()
        assert await asyncio.to_thread(proc.wait, scaled(10)) == 0


async def test_sigterm_closes_sessions_1001_after_drain_limit() -> None:
    with serve_process("echo", "--drain-timeout", "0.5") as (proc, port):
        ws = await websockets.connect(ws_url(port))
        await ws.send("hold")
        assert await ws.recv() == "hold"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, reason = await close_code(ws)
        assert code == 1001 and "shutting down" in reason
        assert time.monotonic() - began < scaled(5)
        assert await asyncio.to_thread(proc.wait, scaled(10)) == 0


async def test_serve_user_model_class_by_import_path() -> None:
    with serve_process("tests.fixtures.models:PathQueryModel") as (_proc, port):
        async with websockets.connect(ws_url(port, "v1/listen") + "?a=1") as ws:
            await ws.send("x")
            assert json.loads(await ws.recv())["raw_query"] == "a=1"


# --------------------------------------------------------------------- output coalescing (cork.py)
class _FloodModel(Model):
    """Sends small frames as fast as the socket takes them, input or not, and counts them."""

    name = "flood"

    def __init__(self) -> None:
        self.sent = 0

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        payload = b"f" * 64
        while True:
            self.sent += 1
            yield Frame(payload)


class _BurstThenFailModel(Model):
    """Answers its first input with ``count`` small frames, then fails the session (1011)."""

    name = "burst-then-fail"

    def __init__(self, count: int) -> None:
        self.count = count

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for _ in frames:
            for i in range(self.count):
                yield Frame.text(str(i))
            raise RuntimeError("after the burst")
        yield Frame.text("unreachable")


async def test_output_to_a_client_that_never_reads_stops_the_model() -> None:
    """Small frames are held for one loop turn at most: the writer's drain still stops the model."""
    model = _FloodModel()
    async with running_server(model) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /{BIDI} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
        assert head.startswith(b"HTTP/1.1 101")
        # From here on nothing is read (the stream's own buffer fills and pauses the socket).
        await eventually(lambda: model.sent > 1000)

        async def settled() -> bool:
            before = model.sent
            await asyncio.sleep(0.3)  # a window to watch, not a wait for state: the check repeats
            return model.sent == before

        await eventually(settled)
        # Socket buffers on both sides plus aiohttp's and the cork's limits: a few MiB at most,
        # where a model that is never stopped sends gigabytes in the same time.
        assert model.sent * 66 < 16 * MiB, f"{model.sent} frames sent to a client that never reads"
        writer.transport.abort()


async def test_frames_sent_before_an_error_arrive_before_its_close() -> None:
    async with (
        running_server(_BurstThenFailModel(200)) as server,
        websockets.connect(ws_url(server.port)) as ws,
    ):
        await ws.send("go")
        got = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(await ws.recv())
        assert got == [str(i) for i in range(200)]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
