"""``make bench-v2``: MLServer itself vs bidistream serving the same MLModel folder vs a native model.

In one run, on a word-streaming ``MLModel`` that streams 16 tokens per request
(the seed's text model without its 0.5 s sleeps, which would measure the sleeps):

- ``mlserver``: MLServer 1.7.1 ``mlserver start`` in a venv of its own
  (``.venv-mlserver``, created by this bench), with the seed's streaming settings;
- ``bidistream-mlmodel``: ``bidistream serve`` of the same folder;
- ``bidistream-native``: ``bidistream serve words`` (the same work as a native Model);
- ``grpcio-floor`` (gRPC only, no bar): a grpcio aio server that streams 16 pre-encoded
  responses and does nothing else (``benchmarks/grpc_floor.py``), the part of every gRPC
  figure above that grpcio itself costs.

Each is driven over REST ``generate_stream`` (SSE) and gRPC ``ModelStreamInfer`` at
1, 16 and 64 concurrent clients.  Reported: requests/s, tokens/s, time to first
token p50/p99, server CPU per request (the server process tree's CPU time from
/proc) and the load generator's own CPU per request; a phase whose load
generator used ≥ 90 % of a core is marked ``client_bound`` (the bars then do
not judge its throughput).  The clients are cheap on purpose: raw asyncio
HTTP/1.1 with a pre-encoded body, and grpc.aio with pre-serialised bytes.

Bars (issue 11): server CPU per streamed request ≤ 0.5× MLServer's on both
transports; throughput ≥ 2× MLServer's at 64 clients where the load generator
is not the limit; TTFT p50 no worse than MLServer's; with ``--workers 2`` (``bidistream-mlmodel-2w``)
both workers carry streams (the busiest does ≤ 75 % of the server CPU) at ≤ 1.1× one worker's
server CPU per request.  Figures are medians of
``BENCH_V2_RUNS`` runs of ``BENCH_V2_SECONDS`` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidistream import ports

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MLSERVER_VENV = Path(os.environ.get("BENCH_V2_MLSERVER_VENV", REPO / ".venv-mlserver"))
MLSERVER_VERSION = "1.7.1"

TOKENS = 16
PROMPT = " ".join(f"tok{i}" for i in range(TOKENS))
LEVELS = (1, 16, 64)
SECONDS = float(os.environ.get("BENCH_V2_SECONDS", "2"))
RUNS = int(os.environ.get("BENCH_V2_RUNS", "3"))
CLIENT_BOUND = 0.9  # share of one core the load generator may use before it is the limit
# A grpcio aio server that only streams pre-encoded responses (benchmarks/grpc_floor.py): what
# grpcio itself costs per streamed request, measured beside the others, judged by no bar.
FLOOR = "grpcio-floor"
# ``bidistream serve`` of the MLModel folder with two worker processes on the same ports (what
# MLServer's parallel_workers > 0 cannot stream): judged against one worker's CPU per request.
WORKERS2 = "bidistream-mlmodel-2w"
WORKERS2_BAR = 1.1  # x one worker's server CPU per request
WORKERS2_CARRY = 0.75  # the busiest of two workers did at most this share: both carried streams

MODEL_PY = """
from typing import AsyncIterator
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TokenModel(MLModel):
    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        payload = [_ async for _ in payloads][0]
        text = StringCodec.decode_input(payload.inputs[0])[0]
        for word in text.split(" "):
            yield InferenceResponse(
                model_name=self._settings.name,
                outputs=[StringCodec.encode_output(name="output", payload=[word], use_bytes=True)],
            )
"""


def free_port() -> int:
    return ports.free_port("127.0.0.1")  # below the ephemeral range: no client connection takes it first


def make_folder(root: Path, http_port: int, grpc_port: int) -> Path:
    folder = root / f"repo-{http_port}"
    folder.mkdir()
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "gzip_enabled": False,
        "metrics_endpoint": None,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "tokens",
        "implementation": "token_model.TokenModel",
        "inputs": [{"datatype": "BYTES", "name": "prompt", "shape": [1]}],
        "outputs": [{"datatype": "BYTES", "name": "output", "shape": [1]}],
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    (folder / "token_model.py").write_text(MODEL_PY)
    return folder


def ensure_mlserver() -> Path:
    """MLServer in a venv of its own (its pins clash with ours); created once."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    print(f"[bench-v2] creating {MLSERVER_VENV} with mlserver=={MLSERVER_VERSION}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"mlserver=={MLSERVER_VERSION}"], check=True)
    return exe


# ------------------------------------------------------------------ CPU accounting
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK  # ppid, utime+stime


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live descendants."""
    return sum(tree_cpu_by_pid(root).values())


def tree_cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of each live descendant (worker processes count apart)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry)], cpu[int(entry)] = _proc_cpu(int(entry))
    out: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        out[pid] = cpu.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return out


# ------------------------------------------------------------------ servers
@dataclass
class Server:
    name: str
    model: str
    argv: list[str]
    http_port: int
    grpc_port: int
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        if self.name == FLOOR:
            try:
                socket.create_connection(("127.0.0.1", self.grpc_port), timeout=1).close()
            except OSError:
                return False
            return True
        try:
            url = f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    log = open(server.cwd / f"{server.name}.log", "wb")
    server.proc = subprocess.Popen(server.argv, cwd=server.cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not server.ready():
            if server.proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (server.cwd / f"{server.name}.log").read_text()[-2000:]
                raise RuntimeError(f"{server.name} did not become ready:\n{tail}")
            time.sleep(0.1)
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
        log.close()


# ------------------------------------------------------------------ load generators
@dataclass
class Phase:
    requests: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    errors: int = 0


def sse_request(model: str, port: int) -> bytes:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "prompt",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [PROMPT],
                    "parameters": {"content_type": "str"},
                }
            ]
        }
    ).encode()
    head = (
        f"POST /v2/models/{model}/generate_stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader, sent: float, phase: Phase) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80])
    events = 0
    first = True
    if b"chunked" in head.lower():
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            chunk = await reader.readexactly(size + 2)
            n = chunk.count(b"data: ")
            if n and first:
                phase.ttft.append(time.perf_counter() - sent)
                first = False
            events += n
    else:
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        events = (await reader.readexactly(length)).count(b"data: ")
        phase.ttft.append(time.perf_counter() - sent)
    phase.tokens += events
    phase.requests += 1


async def sse_client(port: int, request: bytes, deadline: float, phase: Phase) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            writer.write(request)
            await _read_response(reader, sent, phase)
    except (ConnectionError, RuntimeError, asyncio.IncompleteReadError):
        phase.errors += 1
    finally:
        writer.close()


def grpc_request(model: str) -> bytes:
    # ModelInferRequest{model_name, inputs[{name, datatype, shape, parameters{content_type: str}, contents}]},
    # encoded once with tritonclient's stubs in a child (this process imports no stub set).
    script = (
        "import sys\nfrom tritonclient.grpc import service_pb2 as pb\n"
        f"r = pb.ModelInferRequest(model_name={model!r})\n"
        "t = r.inputs.add(name='prompt', datatype='BYTES', shape=[1])\n"
        "t.parameters['content_type'].string_param = 'str'\n"
        f"t.contents.bytes_contents.append({PROMPT.encode()!r})\n"
        "sys.stdout.buffer.write(r.SerializeToString())\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout


async def grpc_client(port: int, request: bytes, deadline: float, phase: Phase) -> None:
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call_factory = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                first = True
                async for _ in call_factory(iter([request])):
                    if first:
                        phase.ttft.append(time.perf_counter() - sent)
                        first = False
                    phase.tokens += 1
                phase.requests += 1
        except grpc.aio.AioRpcError:
            phase.errors += 1


async def drive(transport: str, server: Server, clients: int, request: bytes) -> tuple[Phase, float]:
    phase = Phase()
    deadline = time.perf_counter() + SECONDS
    worker = sse_client if transport == "sse" else grpc_client
    port = server.http_port if transport == "sse" else server.grpc_port
    began = time.perf_counter()
    await asyncio.gather(*(worker(port, request, deadline, phase) for _ in range(clients)))
    return phase, time.perf_counter() - began


def measure(transport: str, server: Server, clients: int, request: bytes) -> dict[str, Any]:
    assert server.proc is not None
    cpu0, client0 = tree_cpu_by_pid(server.proc.pid), time.process_time()
    phase, elapsed = asyncio.run(drive(transport, server, clients, request))
    cpu1 = tree_cpu_by_pid(server.proc.pid)
    per_process = sorted((cpu1[p] - cpu0.get(p, 0.0) for p in cpu1), reverse=True)
    server_cpu = sum(per_process)
    client_cpu = time.process_time() - client0
    n = max(phase.requests, 1)
    ttft = sorted(phase.ttft) or [float("nan")]
    return {
        "req_per_s": phase.requests / elapsed,
        "tokens_per_s": phase.tokens / elapsed,
        "ttft_p50_ms": 1000 * ttft[len(ttft) // 2],
        "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))],
        "server_cpu_ms_per_req": 1000 * server_cpu / n,
        "client_cpu_ms_per_req": 1000 * client_cpu / n,
        "client_core_share": client_cpu / elapsed,
        "tokens_per_req": phase.tokens / n,
        "errors": phase.errors,
        # The busiest server process's share of the server CPU: 1.0 when one process did all
        # the work; about 1/N when N workers carried the streams evenly.
        "busiest_process_share": per_process[0] / server_cpu if server_cpu > 0 else 1.0,
    }


def report(key: str, f: dict[str, Any]) -> None:
    line = (
        f"[bench-v2] {key:32s} {f['req_per_s']:8.1f} req/s {f['tokens_per_s']:9.1f} tok/s "
        f"ttft p50 {f['ttft_p50_ms']:6.2f} ms p99 {f['ttft_p99_ms']:7.2f} ms "
        f"server {f['server_cpu_ms_per_req']:5.2f} ms/req client {f['client_cpu_ms_per_req']:5.2f} ms/req"
    )
    if f["client_bound"]:
        line += " CLIENT-BOUND"
    if f["errors"]:
        line += f" errors={f['errors']}"
    print(line, flush=True)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["client_bound"] = out["client_core_share"] >= CLIENT_BOUND
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu_model": model, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}


def run() -> dict[str, Any]:
    mlserver = ensure_mlserver()
    results: dict[str, Any] = {
        "machine_before": machine(),
        "tokens_per_request": TOKENS,
        "seconds": SECONDS,
        "runs": RUNS,
        "phases": {},
    }
    print(f"[bench-v2] {results['machine_before']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-v2-") as tmp:
        root = Path(tmp)
        env_path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
        os.environ["PYTHONPATH"] = env_path
        for name in ("mlserver", "bidistream-mlmodel", WORKERS2, "bidistream-native", FLOOR):
            # Ports are picked just before each server starts: picked up front, one could be
            # taken meanwhile as the ephemeral port of an earlier phase's client connection.
            http_port, grpc_port = free_port(), free_port()
            folder = make_folder(root, http_port, grpc_port)
            if name == "mlserver":
                argv, model = [str(mlserver), "start", str(folder)], "tokens"
            elif name in ("bidistream-mlmodel", WORKERS2):
                argv = [
                    sys.executable,
                    "-m",
                    "bidistream.cli",
                    "serve",
                    str(folder),
                    "--log-level",
                    "warning",
                    *(["--workers", "2"] if name == WORKERS2 else []),
                ]
                model = "tokens"
            elif name == FLOOR:
                argv, model = [sys.executable, str(HERE / "grpc_floor.py"), str(grpc_port)], "words"
            else:
                argv = [
                    sys.executable,
                    "-m",
                    "bidistream.cli",
                    "serve",
                    "words",
                    "--port",
                    str(http_port),
                    "--grpc-port",
                    str(grpc_port),
                    "--log-level",
                    "warning",
                ]
                model = "words"
            server = Server(name, model, argv, http_port, grpc_port, folder)
            with running(server):
                for transport in ("grpc",) if name == FLOOR else ("sse", "grpc"):
                    request = (
                        sse_request(server.model, server.http_port)
                        if transport == "sse"
                        else grpc_request(server.model)
                    )
                    for clients in LEVELS:
                        runs = [measure(transport, server, clients, request) for _ in range(RUNS)]
                        figures = median_of(runs)
                        key = f"{server.name}/{transport}/{clients}"
                        results["phases"][key] = figures
                        report(key, figures)
    results["machine_after"] = machine()
    results["bars"] = bars(results["phases"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_v2.json").write_text(json.dumps(results, indent=2))
    for bar in results["bars"]:
        print(
            f"[bench-v2] {'PASS' if bar['passed'] else 'FAIL'} {bar['name']}: "
            f"{bar['value']:.3f} (limit {bar['limit']} {bar['unit']})",
            flush=True,
        )
    return {"bars": results["bars"]}


def _bar(name: str, value: float, limit: float, at_most: bool, unit: str = "x") -> dict[str, Any]:
    """One bar as the results file and the summary print it: ``at_most`` says which side passes."""
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "unit": f"{unit} ({'<=' if at_most else '>='})",
        "passed": value <= limit if at_most else value >= limit,
    }


def bars(phases: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for transport in ("sse", "grpc"):
        one, two = phases[f"bidistream-mlmodel/{transport}/64"], phases[f"{WORKERS2}/{transport}/64"]
        ratio = two["server_cpu_ms_per_req"] / one["server_cpu_ms_per_req"]
        out.append(_bar(f"2 workers {transport} server CPU/req vs 1 worker @64", ratio, WORKERS2_BAR, True))
        share = two["busiest_process_share"]
        name = f"2 workers {transport}: busiest worker's share of server CPU @64"
        out.append(_bar(name, share, WORKERS2_CARRY, True, unit="share"))
    for ours in ("bidistream-mlmodel", "bidistream-native"):
        for transport in ("sse", "grpc"):
            peer, mine = phases[f"mlserver/{transport}/64"], phases[f"{ours}/{transport}/64"]
            ratio = mine["server_cpu_ms_per_req"] / peer["server_cpu_ms_per_req"]
            out.append(_bar(f"{ours} {transport} server CPU/req vs MLServer @64", ratio, 0.5, True))
            if not (mine["client_bound"] or peer["client_bound"]):
                ratio = mine["req_per_s"] / peer["req_per_s"]
                out.append(_bar(f"{ours} {transport} throughput vs MLServer @64", ratio, 2.0, False))
            for clients in LEVELS:
                p, m = phases[f"mlserver/{transport}/{clients}"], phases[f"{ours}/{transport}/{clients}"]
                ratio = m["ttft_p50_ms"] / p["ttft_p50_ms"]
                out.append(_bar(f"{ours} {transport} TTFT p50 vs MLServer @{clients}", ratio, 1.0, True))
    return out


if __name__ == "__main__":
    summary = run()
    sys.exit(0 if all(b["passed"] for b in summary["bars"]) else 1)
