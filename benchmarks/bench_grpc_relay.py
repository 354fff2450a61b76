"""The gateway's gRPC relay: ModelStreamInfer messages/s and added latency, against the instance direct.

One ``bidistream serve words`` instance (delay 0: one request of one word is
one response) and one ``bidistream gateway`` declaring it with
``--grpc-endpoint``.  A grpc.aio client (its own process, pinned to another
CPU, pre-encoded messages through raw-bytes methods, so protobuf costs the
client nothing) runs the same two loops on one ``ModelStreamInfer`` stream,
straight to the instance's gRPC port (the floor, measured in the same run)
and through the gateway's TLS port:

* latency: one request, wait for its response, again (p50/p99 round trip);
* throughput: ``WINDOW`` requests in flight (messages/s, server CPU per message).

Figures: messages/s both ways and their ratio, per-message added p50/p99
latency, and the gateway process's CPU per relayed message (request and
response), measured by its PID alone.
``python -m benchmarks.bench_grpc_relay`` prints them; results go to
``benchmarks/results/grpc_relay.json``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import floor
from benchmarks.bench_gateway import gateway_command
from benchmarks.machine import banner, describe

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
WINDOW = 32
LAT_MSGS = 2000
THR_S = 3.0
REPS = 2


# ====================================================================== the client (child process)
def _request() -> bytes:
    import mlserver.grpc.dataplane_pb2 as pb

    r = pb.ModelInferRequest(model_name="words")
    t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
    t.parameters["content_type"].string_param = "str"
    t.contents.bytes_contents.append(b"hello")
    return bytes(r.SerializeToString())


async def _measure(target: str, ca_pem: bytes | None, pids: list[int]) -> dict[str, float]:
    import grpc

    if ca_pem:
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem))
    else:
        channel = grpc.aio.insecure_channel(target)
    request = _request()
    async with channel:
        call_of = channel.stream_stream(METHOD)  # bytes in, bytes out: no protobuf on the client

        # ---- latency: one in flight
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def requests() -> Any:
            while (item := await queue.get()) is not None:
                yield item

        call = call_of(requests(), metadata=(("x-bidistream-endpoint", "words"),))
        replies = call.__aiter__()
        samples: list[float] = []
        for i in range(LAT_MSGS + 200):
            began = time.perf_counter_ns()
            queue.put_nowait(request)
            await replies.__anext__()
            if i >= 200:  # warm-up
                samples.append((time.perf_counter_ns() - began) / 1000)
        queue.put_nowait(None)
        async for _ in replies:
            pass

        # ---- throughput: WINDOW in flight
        queue = asyncio.Queue()
        call = call_of(requests(), metadata=(("x-bidistream-endpoint", "words"),))
        replies = call.__aiter__()
        for _ in range(WINDOW):
            queue.put_nowait(request)
        for _ in range(500):  # warm-up
            await replies.__anext__()
            queue.put_nowait(request)
        meter = floor.Meter(pids)
        meter.start()
        n = 0
        deadline = time.perf_counter() + THR_S
        while time.perf_counter() < deadline:
            await replies.__anext__()
            queue.put_nowait(request)
            n += 1
        stats = meter.stop(n)
        queue.put_nowait(None)
        async for _ in replies:
            pass
    return {
        "rtt_p50_us": floor.percentile(samples, 0.5),
        "rtt_p99_us": floor.percentile(samples, 0.99),
        **stats,
    }


def client_main(argv: list[str]) -> None:
    target, ca, pids = argv[0], argv[1] or None, [int(p) for p in argv[2].split(",") if p]
    ca_pem = Path(ca).read_bytes() if ca else None
    print(json.dumps(asyncio.run(_measure(target, ca_pem, pids))))


def _client(target: str, ca: Path | None, pids: list[int]) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "benchmarks.bench_grpc_relay",
            "client",
            target,
            str(ca or ""),
            ",".join(map(str, pids)),
        ],
        cwd=floor.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: floor.pin(0, floor.CLIENT_CPU),
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench client failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ====================================================================== the run
def run() -> dict[str, Any]:
    print(f"bench_grpc_relay on {banner()}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    bin_dir = Path(sys.executable).parent
    reps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        http, grpc_port, gw_port = floor.free_port(), floor.free_port(), floor.free_port()
        words = floor.spawn(
            [
                str(bin_dir / "bidistream"),
                "serve",
                "words",
                "--set",
                "delay=0",
                "--port",
                str(http),
                "--grpc-port",
                str(grpc_port),
                "--log-level",
                "warning",
            ],
            http,
            cpu=floor.CLIENT_CPU,  # as bench_gateway places its instance: the gateway has CPU 1 alone
            log_path=tmp / "words.log",
        )
        try:
            floor.wait_port(grpc_port, words.proc)
            gw = floor.spawn(
                gateway_command(
                    gw_port,
                    tmp / "gw",
                    *("--endpoint", f"words=http://127.0.0.1:{http}"),
                    *("--grpc-endpoint", f"words=127.0.0.1:{grpc_port}"),
                ),
                gw_port,
                cpu=floor.SERVER_CPU,
                log_path=tmp / "gateway.log",
            )
            try:
                ca = tmp / "gw" / "ca.pem"
                for _ in range(REPS):
                    direct = _client(f"127.0.0.1:{grpc_port}", None, [words.pid])
                    # Through the gateway, "server CPU" is the gateway process's alone (by PID).
                    relayed = _client(f"127.0.0.1:{gw_port}", ca, [gw.pid])
                    reps.append(
                        {
                            "direct": direct,
                            "gateway": relayed,
                            "gateway_cpu_us_per_msg": relayed["server_cpu_us_per_msg"],
                        }
                    )
            finally:
                gw.stop()
        finally:
            words.stop()

    def med(side: str, key: str) -> float:
        return floor.median([r[side][key] for r in reps])

    thr_ratio = med("gateway", "msgs_per_s") / med("direct", "msgs_per_s")
    added_p50 = med("gateway", "rtt_p50_us") - med("direct", "rtt_p50_us")
    added_p99 = med("gateway", "rtt_p99_us") - med("direct", "rtt_p99_us")
    gw_cpu = floor.median([r["gateway_cpu_us_per_msg"] for r in reps])
    result: dict[str, Any] = {
        "machine": describe(),
        "direct": {k: med("direct", k) for k in reps[0]["direct"]},
        "gateway": {k: med("gateway", k) for k in reps[0]["gateway"]},
        "ratios": {"stream_msgs_per_s_gateway_over_direct": round(thr_ratio, 2)},
        "figures": {
            "direct_stream_msgs_per_s": {"value": round(med("direct", "msgs_per_s")), "unit": "msg/s"},
            "gateway_stream_msgs_per_s": {"value": round(med("gateway", "msgs_per_s")), "unit": "msg/s"},
            "added_p50_per_message": {"value": round(added_p50, 1), "unit": "µs"},
            "added_p99_per_message": {"value": round(added_p99, 1), "unit": "µs"},
            "gateway_cpu_per_message": {"value": round(gw_cpu, 1), "unit": "µs"},
        },
        "bars": [],
        "reps": reps,
    }
    (RESULTS / "grpc_relay.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
    else:
        out = run()
        shown = {"ratios": out["ratios"], "figures": out["figures"], "machine": out["machine"]}
        print(json.dumps(shown, indent=2))
