"""The model server against the raw-TCP floor, measured in one run.

``bidistream serve echo`` runs as its own process (pinned to one CPU, the
client on another) exactly as users start it.  The floor and the echo are
measured alternately, three times each, and the medians compared, so load
from other processes on the shared machine hits both sides alike.

Per side: server CPU µs per 64 B message (``/proc/PID/stat`` over a
throughput window with 32 messages in flight), round-trip p50/p99 with one
message in flight, and messages/s.  For the echo also: accept time over a few
hundred sequential connects, and server RSS per idle session with 2,000
sessions open.

The client is picows (callback API): it is the cheapest WebSocket client
measured here, so the server's cost is what the ratio shows.  The bars come
from the issue and are never loosened: echo CPU per message ≤ 2× the floor,
accept p99 ≤ 5 ms, ≤ 20 KiB per idle session.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import floor

RESULTS = Path(__file__).resolve().parent / "results"
WS_PATH = "invocations-bidirectional-stream"
REPS = 3
ACCEPT_CONNECTS = 300
IDLE_SESSIONS = 2000
SETTLE_S = 1.5
# Sessions the server must admit for the idle test; the default (256) would
# close the rest with 1013, which is right in production and wrong here.
MAX_SESSIONS = IDLE_SESSIONS + 100

BAR_CPU_RATIO = 2.0
BAR_ACCEPT_P99_MS = 5.0
BAR_KIB_PER_IDLE = 20.0
# Other processes using more than this many cores during the run make CPU and
# p99 numbers unreliable; the report says so (the verdict stays as measured).
NOISY_FOREIGN_CORES = 0.5


# ---------------------------------------------------------------------- the echo server
def spawn_echo_server(log_dir: Path) -> floor.Spawned:
    port = floor.free_port()
    cmd = [
        sys.executable,
        "-m",
        "bidistream.cli",
        "serve",
        "echo",
        "--port",
        str(port),
        "--max-sessions",
        str(MAX_SESSIONS),
    ]
    server = floor.spawn(cmd, port, floor.SERVER_CPU, log_dir / "serve-echo.log")
    wait_ready(server)
    return server


def wait_ready(server: floor.Spawned, timeout: float = 30.0) -> None:
    """Listening is not enough: the model loads after the bind, /ping says when."""
    deadline = time.monotonic() + timeout
    url = f"http://{floor.HOST}:{server.port}/ping"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"bidistream serve exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"/ping never answered 200 within {timeout:g} s:\n{server.log_tail()}")


# ---------------------------------------------------------------------- picows client
def _listener(on_reply: Callable[[], None]) -> Any:
    from picows import WSListener, WSMsgType

    class Listener(WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            kind = frame.msg_type
            if kind == WSMsgType.BINARY:
                on_reply()
            elif kind == WSMsgType.CLOSE:
                transport.disconnect()

    return Listener


def _url(port: int) -> str:
    return f"ws://{floor.HOST}:{port}/{WS_PATH}"


async def measure_ws(port: int, pid: int, size: int = floor.MSG_SIZE) -> dict[str, float]:
    from picows import WSMsgType, ws_connect

    drv = floor.Driver()
    cls = _listener(drv.on_reply)
    transport, _ = await ws_connect(cls, _url(port), max_frame_size=2**24)
    payload = b"x" * size
    send = transport.send
    binary = WSMsgType.BINARY
    drv.send = lambda: send(binary, payload)
    try:
        result = await drv.latency()
        result.update(await drv.throughput(floor.Meter([pid])))
    finally:
        transport.send_close()
        transport.disconnect()
    return result


async def _connector(port: int) -> Callable[[], Any]:
    from picows import WSListener, ws_connect

    url = _url(port)

    async def connect() -> Any:
        transport, _ = await ws_connect(WSListener, url)
        return transport

    for _ in range(20):  # warm both sides' code paths
        (await connect()).disconnect()
    return connect


async def measure_accept(port: int, count: int = ACCEPT_CONNECTS) -> dict[str, float]:
    """Sequential connect + upgrade, each session closed before the next: the accept path alone."""
    connect = await _connector(port)
    accept: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        transport = await connect()
        accept.append(time.perf_counter() - t0)
        transport.disconnect()
    return {
        "accept_connects": len(accept),
        "accept_p50_ms": floor.percentile(accept, 0.5) * 1e3,
        "accept_p99_ms": floor.percentile(accept, 0.99) * 1e3,
    }


async def measure_idle(port: int, pid: int, count: int = IDLE_SESSIONS) -> dict[str, float]:
    """Server RSS growth per idle session with ``count`` sessions open at once."""
    connect = await _connector(port)
    await asyncio.sleep(0.5)
    gc.collect()
    rss0 = floor.proc_rss_bytes(pid)
    held: list[Any] = []
    ramp: list[float] = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            held.append(await connect())
            ramp.append(time.perf_counter() - t0)
        await asyncio.sleep(SETTLE_S)
        # A session the server closed (e.g. with 1013) frees its memory: count only live ones.
        alive = sum(1 for t in held if not t.is_disconnected)
        rss1 = floor.proc_rss_bytes(pid)
    finally:
        for transport in held:
            transport.disconnect()
    return {
        "ramp_accept_p50_ms": floor.percentile(ramp, 0.5) * 1e3,
        "ramp_accept_p99_ms": floor.percentile(ramp, 0.99) * 1e3,
        "idle_sessions": len(held),
        "idle_sessions_alive": alive,
        "server_rss_before_mib": rss0 / 2**20,
        "server_rss_after_mib": rss1 / 2**20,
        "kib_per_idle_session": (rss1 - rss0) / max(1, alive) / 1024,
    }


# ---------------------------------------------------------------------- the run
def _med(runs: list[dict[str, float]], key: str) -> float:
    return floor.median([r[key] for r in runs])


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = (
        "server_cpu_us_per_msg",
        "client_cpu_us_per_msg",
        "msgs_per_s",
        "rtt_p50_us",
        "rtt_p99_us",
        "foreign_cpu_util",
    )
    return {k: _med(runs, k) for k in keys}


def _bar(name: str, value: float, limit: float, unit: str) -> dict[str, Any]:
    return {"name": name, "value": round(value, 3), "limit": limit, "unit": unit, "passed": value <= limit}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release(), "cpus": str(os.cpu_count())}
    for dist in ("aiohttp", "picows", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


async def _measure_all(floor_srv: floor.Spawned, echo_srv: floor.Spawned) -> dict[str, Any]:
    floor_runs: list[dict[str, float]] = []
    echo_runs: list[dict[str, float]] = []
    accept_runs: list[dict[str, float]] = []
    for _ in range(REPS):
        floor_runs.append(await floor.measure_tcp(floor_srv.port, [floor_srv.pid]))
        echo_runs.append(await measure_ws(echo_srv.port, echo_srv.pid))
        accept_runs.append(await measure_accept(echo_srv.port))
    # Median of the per-rep p99s, like the CPU numbers: one scheduler hiccup from
    # another process on a 2-vCPU machine should not decide the verdict either way.
    sessions: dict[str, Any] = {
        "accept_connects": sum(int(r["accept_connects"]) for r in accept_runs),
        "accept_p50_ms": _med(accept_runs, "accept_p50_ms"),
        "accept_p99_ms": _med(accept_runs, "accept_p99_ms"),
        "accept_p99_ms_per_rep": [round(r["accept_p99_ms"], 3) for r in accept_runs],
    }
    sessions.update(await measure_idle(echo_srv.port, echo_srv.pid))
    return {"floor_runs": floor_runs, "echo_runs": echo_runs, "sessions": sessions}


def run() -> dict[str, Any]:
    began = time.monotonic()
    floor.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="bidistream-bench-") as tmp:
        floor_srv = floor.spawn_echo_floor()
        echo_srv: floor.Spawned | None = None
        try:
            echo_srv = spawn_echo_server(Path(tmp))
            srv = echo_srv
            raw = floor._run_pinned(lambda: _measure_all(floor_srv, srv))
        except BaseException as exc:
            tail = echo_srv.log_tail() if echo_srv is not None else ""
            if tail:
                exc.add_note(f"bidistream serve log:\n{tail}")
            raise
        finally:
            if echo_srv is not None:
                echo_srv.stop()
            floor_srv.stop()
    fl, ec, sess = _summary(raw["floor_runs"]), _summary(raw["echo_runs"]), raw["sessions"]
    ratios = {
        "server_cpu_per_msg": ec["server_cpu_us_per_msg"] / fl["server_cpu_us_per_msg"],
        "rtt_p50": ec["rtt_p50_us"] / fl["rtt_p50_us"],
        "rtt_p99": ec["rtt_p99_us"] / fl["rtt_p99_us"],
        "msgs_per_s": ec["msgs_per_s"] / fl["msgs_per_s"],
    }
    bars = [
        _bar("echo CPU/msg vs floor", ratios["server_cpu_per_msg"], BAR_CPU_RATIO, "x"),
        _bar("accept p99", sess["accept_p99_ms"], BAR_ACCEPT_P99_MS, "ms"),
        _bar("RSS per idle session", sess["kib_per_idle_session"], BAR_KIB_PER_IDLE, "KiB"),
    ]
    result: dict[str, Any] = {
        "name": "container",
        "floor": fl,
        "echo": {**ec, **sess},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "bars": bars,
        "passed": all(b["passed"] for b in bars),
        "noisy": max(fl["foreign_cpu_util"], ec["foreign_cpu_util"]) > NOISY_FOREIGN_CORES,
        "reps": REPS,
        "msg_size": floor.MSG_SIZE,
        "window": floor.WINDOW,
        "raw": {"floor": raw["floor_runs"], "echo": raw["echo_runs"]},
        "versions": _versions(),
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "container.json").write_text(json.dumps(result, indent=2) + "\n")
    print(report(result), flush=True)
    return result


def report(result: dict[str, Any]) -> str:
    fl, ec, r = result["floor"], result["echo"], result["ratios"]
    lines = [
        f"container bench ({result['reps']} reps, {result['msg_size']} B, window {result['window']}, "
        f"foreign load {ec['foreign_cpu_util']:.2f} cores)",
        f"  {'':<22}{'floor':>12}{'echo WS':>12}{'ratio':>9}",
        f"  {'server CPU µs/msg':<22}{fl['server_cpu_us_per_msg']:>12.2f}{ec['server_cpu_us_per_msg']:>12.2f}"
        f"{r['server_cpu_per_msg']:>8.2f}x",
        f"  {'rtt p50 µs':<22}{fl['rtt_p50_us']:>12.0f}{ec['rtt_p50_us']:>12.0f}{r['rtt_p50']:>8.2f}x",
        f"  {'rtt p99 µs':<22}{fl['rtt_p99_us']:>12.0f}{ec['rtt_p99_us']:>12.0f}{r['rtt_p99']:>8.2f}x",
        f"  {'msgs/s (32 in flight)':<22}{fl['msgs_per_s']:>12.0f}{ec['msgs_per_s']:>12.0f}"
        f"{r['msgs_per_s']:>8.2f}x",
        f"  accept p50/p99 {ec['accept_p50_ms']:.2f}/{ec['accept_p99_ms']:.2f} ms (median of "
        f"{result['reps']} x {ACCEPT_CONNECTS} connects; p99 per rep {ec['accept_p99_ms_per_rep']})",
        f"  {ec['kib_per_idle_session']:.1f} KiB per idle session "
        f"({ec['idle_sessions_alive']} of {ec['idle_sessions']} alive)",
    ]
    if result["noisy"]:
        lines.append(
            f"  NOTE: other processes used > {NOISY_FOREIGN_CORES} cores meanwhile; "
            "CPU and p99 numbers are inflated, rerun on a quiet machine"
        )
    for bar in result["bars"]:
        verdict = "PASS" if bar["passed"] else "FAIL"
        lines.append(f"  {verdict} {bar['name']}: {bar['value']:g} {bar['unit']} (bar ≤ {bar['limit']:g})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if run()["passed"] else 1)
