"""The raw-TCP floor every bidistream benchmark is divided by, and the kit to measure it.

A ratio against a floor measured in the same run on the same machine means
something; an absolute number from a shared 2-vCPU VM does not.  The floor is
the cheapest honest echo: asyncio + uvloop, 4-byte length-prefixed messages,
the server parses frames and writes each message back with one
``transport.write`` (what any relay or protocol server must at least do).

Reusable pieces (the gateway bench uses the relay floor):

- :func:`spawn_echo_floor`, :func:`spawn_relay_floor` start the servers as
  processes pinned to a CPU; :class:`Spawned` ends them by PID.
- :class:`Driver` runs latency (one message in flight) and throughput
  (``window`` in flight) loops for any callback-style client; :class:`Meter`
  turns the server's ``/proc/PID/stat`` CPU time into CPU µs per message.
- :func:`measure_tcp` drives a length-prefixed TCP target;
  :func:`measure_echo_floor` and :func:`measure_relay_floor` do the whole
  spawn → measure → stop cycle.

Run a server by hand: ``python -m benchmarks.floor echo PORT`` or
``python -m benchmarks.floor relay PORT UPSTREAM_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bidistream import ports

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
HDR = 4  # length prefix of a floor message
MSG_SIZE = 64
WINDOW = 32  # messages in flight for the throughput loop
WARM_S = 0.3
LAT_S = 1.5
THR_S = 2.0
MAX_LAT_SAMPLES = 50_000
# Every server this module starts exits by itself after this long, even if the
# driver dies without ending it.
SERVER_LIFETIME_S = 110.0
# Server on one CPU, client on another: they stop fighting over a core, which
# is what makes CPU-per-message stable on a 2-vCPU machine.
SERVER_CPU = 1
CLIENT_CPU = 0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

now_ns = time.perf_counter_ns


# ====================================================================== process kit
def raise_nofile(want: int = 10_000) -> None:
    """Thousands of idle connections need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def usable_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def pin(pid: int, cpu: int | None) -> None:
    """Pin a process to one CPU if the machine has it; otherwise leave it alone."""
    if cpu is not None and cpu in usable_cpus() and len(usable_cpus()) > 1:
        os.sched_setaffinity(pid, {cpu})


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after its ')' are fixed.
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> float:
    """Busy CPU seconds of all cores (/proc/stat), to report other load on the machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


def free_port() -> int:
    return ports.free_port("127.0.0.1")  # below the ephemeral range: no client connection takes it first


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout:g} s")


@dataclass
class Spawned:
    """A server process this benchmark started; :meth:`stop` ends exactly that PID."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    cmd: Sequence[str], port: int, cpu: int | None = SERVER_CPU, log_path: Path | None = None
) -> Spawned:
    """Start a server process, pin it, wait for its port.  Output goes to a file, never a pipe
    (an unread pipe that fills up would stall the server mid-measurement)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            list(cmd), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=raise_nofile
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    spawned = Spawned(proc, port, log_path)
    try:
        pin(proc.pid, cpu)
        wait_port(port, proc)
    except BaseException:
        spawned.stop()
        raise
    return spawned


def spawn_echo_floor(cpu: int | None = SERVER_CPU) -> Spawned:
    port = free_port()
    return spawn([sys.executable, "-m", "benchmarks.floor", "echo", str(port)], port, cpu)


def spawn_relay_floor(upstream_port: int, cpu: int | None = SERVER_CPU) -> Spawned:
    """client → relay → echo with no protocol work: the floor for any gateway hop."""
    port = free_port()
    return spawn(
        [sys.executable, "-m", "benchmarks.floor", "relay", str(port), str(upstream_port)], port, cpu
    )


# ====================================================================== statistics
def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return percentile(clean, 0.5) if clean else math.nan


class Meter:
    """Server CPU (by PID), client CPU (this process) and machine load over one window."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = list(server_pids)

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.c0 = self_cpu_seconds()
        self.s0 = sum(proc_cpu_seconds(p) for p in self.server_pids)
        self.b0 = machine_busy_seconds()

    def stop(self, msgs: int) -> dict[str, float]:
        secs = time.perf_counter() - self.t0
        client = self_cpu_seconds() - self.c0
        server = sum(proc_cpu_seconds(p) for p in self.server_pids) - self.s0
        busy = machine_busy_seconds() - self.b0
        n = max(1, msgs)
        return {
            "msgs": msgs,
            "secs": secs,
            "msgs_per_s": msgs / secs if secs else 0.0,
            "server_cpu_us_per_msg": server / n * 1e6,
            "client_cpu_us_per_msg": client / n * 1e6,
            "server_cpu_util": server / secs if secs else 0.0,
            # Load from processes outside this benchmark: tells a noisy run from a quiet one.
            "foreign_cpu_util": max(0.0, busy - client - server) / secs if secs else 0.0,
        }


# ====================================================================== driver
class Driver:
    """Latency and throughput loops for callback clients.

    The adapter sets :attr:`send` (write one message) and calls :meth:`on_reply`
    from its receive callback; the next message leaves from inside that
    callback, so the client adds no task switch to what is measured.
    """

    def __init__(self) -> None:
        self.send: Callable[[], None] = lambda: None
        self._mode = ""
        self._fut: asyncio.Future[None] | None = None
        self._samples: list[int] = []
        self._t0 = 0
        self._warm_end = 0
        self._end = 0
        self._received = 0
        self._sent = 0
        self._sending = False

    async def latency(self, warm: float = WARM_S, secs: float = LAT_S) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        self._fut = loop.create_future()
        self._samples = []
        self._mode = "lat"
        self._warm_end = now_ns() + int(warm * 1e9)
        self._end = self._warm_end + int(secs * 1e9)
        self._t0 = now_ns()
        self.send()
        await asyncio.wait_for(self._fut, warm + secs + 20)
        s = sorted(self._samples)
        return {
            "rtt_samples": len(s),
            "rtt_p50_us": percentile(s, 0.5) / 1e3,
            "rtt_p99_us": percentile(s, 0.99) / 1e3,
        }

    async def throughput(
        self, meter: Meter, window: int = WINDOW, warm: float = WARM_S, secs: float = THR_S
    ) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        self._fut = loop.create_future()
        self._mode = "thr"
        self._received = self._sent = 0
        self._sending = True
        result: dict[str, float] = {}
        mark = {"r0": 0}

        def start() -> None:
            mark["r0"] = self._received
            meter.start()

        def stop() -> None:
            result.update(meter.stop(self._received - mark["r0"]))
            self._sending = False
            self._maybe_done()

        loop.call_later(warm, start)
        loop.call_later(warm + secs, stop)
        for _ in range(window):
            self._sent += 1
            self.send()
        await asyncio.wait_for(self._fut, warm + secs + 20)
        return result

    def _maybe_done(self) -> None:
        if self._received >= self._sent and self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def on_reply(self) -> None:
        if self._mode == "lat":
            t = now_ns()
            if t >= self._warm_end:
                self._samples.append(t - self._t0)
            if t >= self._end or len(self._samples) >= MAX_LAT_SAMPLES:
                if self._fut is not None and not self._fut.done():
                    self._fut.set_result(None)
                return
            self._t0 = now_ns()
            self.send()
        elif self._mode == "thr":
            self._received += 1
            if self._sending:
                self._sent += 1
                self.send()
            else:
                self._maybe_done()


# ====================================================================== TCP floor
def split_frames(buf: bytearray, emit: Callable[[bytearray], object]) -> None:
    """Call ``emit`` for every complete length-prefixed frame at the head of ``buf``; keep the rest."""
    n = len(buf)
    pos = 0
    while n - pos >= HDR:
        end = pos + HDR + int.from_bytes(buf[pos : pos + HDR], "big")
        if end > n:
            break
        emit(buf[pos:end])
        pos = end
    if pos:
        del buf[:pos]


class _FloorEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they do quack like one.
        self.transport = cast(asyncio.Transport, transport)
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        split_frames(self.buf, self.transport.write)


class _FloorRelay(asyncio.Protocol):
    """One upstream TCP connection per client connection; frames forwarded both ways."""

    upstream_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they do quack like one.
        self.transport = cast(asyncio.Transport, transport)
        self.buf = bytearray()
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self._opener = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        down = self.transport

        class Up(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.buf = bytearray()

            def data_received(self, data: bytes) -> None:
                self.buf += data
                split_frames(self.buf, down.write)

        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(Up, HOST, self.upstream_port)
        self.up = up
        for frame in self.pending:
            up.write(frame)
        self.pending = []

    def _forward(self, frame: bytearray) -> None:
        if self.up is None:
            self.pending.append(bytes(frame))
        else:
            self.up.write(frame)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        split_frames(self.buf, self._forward)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


class _TcpClient(asyncio.Protocol):
    def __init__(self, on_reply: Callable[[], None]) -> None:
        self.on_reply = on_reply
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        on_reply = self.on_reply
        split_frames(self.buf, lambda _frame: on_reply())


async def measure_tcp(
    port: int, server_pids: Sequence[int], size: int = MSG_SIZE, throughput: bool = True
) -> dict[str, float]:
    """Latency (one message in flight) and, unless told not to, throughput of a TCP echo target."""
    loop = asyncio.get_running_loop()
    drv = Driver()
    transport, _ = await loop.create_connection(lambda: _TcpClient(drv.on_reply), HOST, port)
    frame = size.to_bytes(HDR, "big") + b"x" * size
    write = transport.write
    drv.send = lambda: write(frame)
    try:
        result = await drv.latency()
        if throughput:
            result.update(await drv.throughput(Meter(server_pids)))
    finally:
        transport.close()
    return result


def _run_pinned(coro_factory: Callable[[], Any], cpu: int | None = CLIENT_CPU) -> Any:
    """Run the client on uvloop pinned to ``cpu``; the caller's affinity is restored after."""
    import uvloop

    before = os.sched_getaffinity(0)
    pin(0, cpu)
    try:
        return uvloop.run(coro_factory())
    finally:
        os.sched_setaffinity(0, before)


def measure_echo_floor() -> dict[str, float]:
    """Spawn the floor echo, measure it, end it."""
    server = spawn_echo_floor()
    try:
        return _run_pinned(lambda: measure_tcp(server.port, [server.pid]))
    finally:
        server.stop()


def measure_relay_floor() -> dict[str, float]:
    """client → relay → echo.  ``server_cpu_us_per_msg`` is the relay's alone; the echo's
    cost is in ``echo_cpu_us_per_msg`` so a gateway can be compared hop for hop."""
    echo = spawn_echo_floor()
    relay = spawn_relay_floor(echo.port)
    try:
        relay_only = _run_pinned(lambda: measure_tcp(relay.port, [relay.pid]))
        both = _run_pinned(lambda: measure_tcp(relay.port, [relay.pid, echo.pid]))
        relay_only["echo_cpu_us_per_msg"] = (
            both["server_cpu_us_per_msg"] - relay_only["server_cpu_us_per_msg"]
        )
        return relay_only
    finally:
        relay.stop()
        echo.stop()


# ====================================================================== server entry
def _watchdog(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, (3,))
    timer.daemon = True
    timer.start()


async def _serve(factory: Callable[[], asyncio.Protocol], port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, HOST, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str]) -> int:
    import uvloop

    raise_nofile()
    _watchdog(SERVER_LIFETIME_S)
    if len(argv) == 2 and argv[0] == "echo":
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve(_FloorEcho, int(argv[1])))
        return 0
    if len(argv) == 3 and argv[0] == "relay":
        _FloorRelay.upstream_port = int(argv[2])
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve(_FloorRelay, int(argv[1])))
        return 0
    print("usage: python -m benchmarks.floor echo PORT | relay PORT UPSTREAM_PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
