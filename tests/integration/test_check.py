"""``bidistream check`` against good and bad containers, on real sockets.

Good: our own server (``bidistream serve echo`` as a process) and a FastAPI
echo app we did not write with bidistream.  Bad: small aiohttp servers built
here, each breaking exactly one rule, so the report must fail exactly that
check number and exit 1.  The judges are also tested directly, without sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bidistream.container.check import (
    ACCEPT_BAR,
    FrameObservation,
    HttpObservation,
    PathObservation,
    Status,
    judge_accept,
    judge_invocations,
    judge_path_query,
    judge_ping,
    judge_round_trip,
    parse_target,
    percentile,
    validate_path,
    validate_query,
)
from bidistream.errors import InputValidationError
from bidistream.models.words import WordsModel
from tests.conftest import BIN, ROOT, free_port, listening_process, running_server, serve_process
from tests.support.waiting import scaled

FASTAPI_APP = ROOT / "tests" / "fixtures" / "fastapi_echo_app.py"
ALL = list(range(1, 9))


# ------------------------------------------------------------------ helpers
@dataclass
class CheckRun:
    code: int
    report: dict[str, Any]
    stderr: str

    @property
    def failed(self) -> list[int]:
        return [c["number"] for c in self.report["checks"] if c["status"] == "fail"]

    def check(self, number: int) -> dict[str, Any]:
        return next(c for c in self.report["checks"] if c["number"] == number)


async def run_check(url: str, *args: str, timeout: float = 40.0) -> CheckRun:
    """The real command line in a subprocess; the test's loop keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "bidistream"),
        "check",
        url,
        "--json",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    report = json.loads(out) if out.strip() else {"checks": []}
    return CheckRun(proc.returncode, report, err.decode())


@contextmanager
def fastapi_process(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd = [sys.executable, str(FASTAPI_APP), *args]
    full_env = {**os.environ, **(env or {})}
    if not (env or {}).get("SAGEMAKER_BIND_TO_PORT"):
        cmd += ["--port", str(port)]
    else:
        port = int(full_env["SAGEMAKER_BIND_TO_PORT"])
    with listening_process(cmd, port, full_env) as proc:
        yield proc, port


@asynccontextmanager
async def bad_container(
    *, answer_pings: bool = True, accept_delay: float = 0.0, ping_delay: float = 0.0
) -> AsyncIterator[int]:
    """An echo container (aiohttp, not our server) that breaks the rule it is told to."""

    async def ping(request: web.Request) -> web.Response:
        if ping_delay:
            await asyncio.sleep(ping_delay)
        return web.Response(status=200)

    async def invocations(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def bidi(request: web.Request) -> web.WebSocketResponse:
        if accept_delay:
            await asyncio.sleep(accept_delay)  # "loading the model inside the handshake"
        ws = web.WebSocketResponse(autoping=answer_pings)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            # PING with autoping off lands here and is ignored: no pong.
        return ws

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/invocations-bidirectional-stream", bidi)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ good containers
def test_check_passes_against_our_server() -> None:
    with serve_process("echo") as (_proc, port):
        run = asyncio.run(run_check(f"http://127.0.0.1:{port}", "--wait", "15"))
    assert run.code == 0, run.report
    assert [c["status"] for c in run.report["checks"]] == ["pass"] * 8
    assert run.check(3)["values"]["p99_ms"] <= ACCEPT_BAR * 1000
    assert run.check(7)["values"]["unknown_path_refused"] is True


def test_check_text_output_one_line_per_check() -> None:
    with serve_process("echo") as (_proc, port):
        proc = subprocess.run(
            [str(BIN / "bidistream"), "check", f"ws://127.0.0.1:{port}", "--wait", "15"],
            capture_output=True,
            text=True,
            timeout=scaled(40),
        )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout
    assert len(lines) == 10  # header, eight checks, verdict
    assert [line.split()[:2] for line in lines[1:9]] == [[str(n), "PASS"] for n in ALL]
    assert lines[-1].startswith("PASS: 8 passed, 0 failed, 0 skipped")


def test_check_passes_against_fastapi_app_with_custom_path() -> None:
    with fastapi_process("--path", "v1/listen") as (_proc, port):
        run = asyncio.run(
            run_check(
                f"http://127.0.0.1:{port}", "--path", "v1/listen", "--query", "model=nova-3&language=en"
            )
        )
    assert run.code == 0, run.report
    assert run.failed == []
    assert run.check(7)["values"]["url_path"] == "/v1/listen?model=nova-3&language=en"


def test_fastapi_app_honours_sagemaker_bind_to_port() -> None:
    port = free_port()
    with fastapi_process(env={"SAGEMAKER_BIND_TO_PORT": str(port)}) as (_proc, bound):
        run = asyncio.run(run_check(f"http://127.0.0.1:{bound}"))
    assert bound == port
    assert run.code == 0, run.report


def test_check_sees_query_reflected_by_a_diagnostic_model() -> None:
    with serve_process("tests.fixtures.models:PathQueryModel") as (_proc, port):
        run = asyncio.run(
            run_check(
                f"http://127.0.0.1:{port}",
                "--no-echo",
                "--path",
                "v1/listen",
                "--query",
                "model=nova-3",
                "--wait",
                "15",
            )
        )
    assert run.code == 0, run.report
    assert [c["status"] for c in run.report["checks"]][4:6] == ["skip", "skip"]
    assert run.check(7)["values"]["query_reflected"] is True


def test_check_fails_path_the_container_does_not_serve() -> None:
    with serve_process("echo") as (_proc, port):
        run = asyncio.run(run_check(f"http://127.0.0.1:{port}", "--path", "v1/listen", "--wait", "15"))
    assert run.code == 1
    assert run.failed == [7]
    assert "404" in run.check(7)["summary"]


# ------------------------------------------------------------------ bad containers
async def test_check_catches_a_container_that_ignores_ws_pings() -> None:
    async with bad_container(answer_pings=False) as port:
        run = await run_check(f"http://127.0.0.1:{port}", "--timeout", "1.5")
    assert run.code == 1
    assert run.failed == [4]
    assert "no pong" in run.check(4)["summary"]


async def test_check_catches_a_container_that_accepts_slowly() -> None:
    async with bad_container(accept_delay=0.3) as port:
        run = await run_check(f"http://127.0.0.1:{port}")
    assert run.code == 1
    assert run.failed == [3]
    assert run.check(3)["values"]["p99_ms"] > 250


async def test_check_catches_a_slow_ping_endpoint() -> None:
    async with bad_container(ping_delay=2.5) as port:
        run = await run_check(f"http://127.0.0.1:{port}")
    assert run.code == 1
    assert run.failed == [1]


def test_check_says_once_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = asyncio.run(run_check(url, "--timeout", "1"))
    assert run.code == 1
    assert run.failed == [1]  # the other seven are not run: they could only repeat "cannot connect"
    assert run.report["unreachable"].startswith(f"nothing listens at {url}")
    text = subprocess.run(
        [str(BIN / "bidistream"), "check", url, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert text.returncode == 1
    assert text.stdout.strip().splitlines() == [
        f"bidistream check {url}: FAIL: {run.report['unreachable']}"
    ], text.stdout


async def test_non_echo_model_failure_shows_what_came_back_and_hints_no_echo() -> None:
    async with running_server(WordsModel()) as server:
        run = await run_check(f"http://127.0.0.1:{server.port}")
    text = next(c for c in run.report["checks"] if c["name"] == "text")
    assert text["status"] == "fail"
    assert "got 10 B 'bidistream'" in text["summary"] and "--no-echo" in text["summary"]


@pytest.mark.parametrize(
    "args",
    [
        ["http://127.0.0.1:1", "--query", "keyterm=foo+bar"],
        ["http://127.0.0.1:1", "--query", "a="],
        ["http://127.0.0.1:1", "--path", "v1//listen"],
        ["ftp://127.0.0.1:1"],
    ],
)
async def test_check_rejects_bad_usage_with_exit_2(args: list[str]) -> None:
    run = await run_check(*args)
    assert run.code == 2
    assert "bidistream check:" in run.stderr


# ------------------------------------------------------------------ judges, no sockets
def test_percentile_is_nearest_rank() -> None:
    samples = [i / 1000 for i in range(1, 21)]
    assert percentile(samples, 0.50) == 0.010
    assert percentile(samples, 0.99) == 0.020


def test_accept_bar_is_inclusive_and_never_loosened() -> None:
    fast = [0.001] * 19
    assert judge_accept([*fast, ACCEPT_BAR], [], 20).status is Status.PASS
    assert judge_accept([*fast, ACCEPT_BAR + 0.001], [], 20).status is Status.FAIL
    assert judge_accept(fast, [], 20).status is Status.FAIL  # one connect missing
    assert judge_accept([*fast, 0.001], ["refused"], 20).status is Status.FAIL


def test_ping_and_invocations_verdicts() -> None:
    assert judge_ping(HttpObservation(200, 0.01)).status is Status.PASS
    assert judge_ping(HttpObservation(503, 0.01)).status is Status.FAIL
    assert judge_ping(HttpObservation(200, 2.01)).status is Status.FAIL
    assert judge_ping(HttpObservation(error="timed out")).status is Status.FAIL
    assert judge_invocations(HttpObservation(400, 0.01)).status is Status.PASS  # model rejected our body
    assert judge_invocations(HttpObservation(404, 0.01)).status is Status.FAIL
    assert judge_invocations(HttpObservation(405, 0.01)).status is Status.FAIL


def test_round_trip_requires_same_kind_and_bytes() -> None:
    assert judge_round_trip(6, FrameObservation(b"\xff", False, b"\xff", False, 0.001)).status is Status.PASS
    assert judge_round_trip(6, FrameObservation(b"\xff", False, b"\xff", True, 0.001)).status is Status.FAIL
    assert judge_round_trip(5, FrameObservation(b"a", True, b"b", True, 0.001)).status is Status.FAIL
    assert judge_round_trip(5, None).status is Status.SKIP


def test_path_query_echo_needs_the_probe_back_unless_reflected() -> None:
    ok = PathObservation("/p?q=1", True, reply=b"probe")
    assert judge_path_query(ok, echo=True, query="q=1", probe=b"probe").status is Status.PASS
    other = PathObservation("/p?q=1", True, reply=b"something else")
    assert judge_path_query(other, echo=True, query="q=1", probe=b"probe").status is Status.FAIL
    assert judge_path_query(other, echo=False, query="q=1", probe=b"probe").status is Status.PASS
    mirror = PathObservation("/p?q=1", True, reply=b'{"raw_query": "q=1"}')
    result = judge_path_query(mirror, echo=True, query="q=1", probe=b"probe")
    assert result.status is Status.PASS and result.values["query_reflected"] is True
    refused = PathObservation("/p?q=1", False, refusal="upgrade refused with HTTP 404")
    assert judge_path_query(refused, echo=False, query="q=1", probe=b"probe").status is Status.FAIL


def test_targets_paths_and_queries_follow_sagemaker_patterns() -> None:
    assert parse_target("127.0.0.1:8080") == ("http://127.0.0.1:8080", "ws://127.0.0.1:8080")
    assert parse_target("wss://h.example/prefix/") == ("https://h.example/prefix", "wss://h.example/prefix")
    assert validate_path("/v1/listen") == "v1/listen"
    assert validate_query("model=nova-3&x=%20y") == "model=nova-3&x=%20y"
    for bad in ("a=b+c", "a=", "lang[0]=en", "=x"):
        with pytest.raises(InputValidationError):
            validate_query(bad)
    with pytest.raises(InputValidationError):
        validate_path("v1 listen")
