"""The V2 face of an in-process model server: every Model maps, metrics count, gRPC health follows load.

gRPC clients run in child processes (MLServer's and Triton's stubs cannot
share one descriptor pool); the server and the Prometheus registry are here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator

import httpx
from prometheus_client import REGISTRY

from bidistream.container.limits import ServerLimits
from bidistream.container.server import ModelServer
from bidistream.frames import Frame
from bidistream.model import Model, Session
from bidistream.models.echo import EchoModel
from tests.clients.v2_support import run_client
from tests.conftest import child_env
from tests.support.waiting import eventually, scaled


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FailingAfterOne(Model):
    """Streams one frame, then fails: the error must end the stream the way MLServer's clients see it."""

    name = "flaky"

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for frame in frames:
            yield frame
            raise RuntimeError("model broke after one frame")


async def start(model: Model, **kw: int) -> ModelServer:
    server = ModelServer(model, port=0, grpc_port=0, limits=ServerLimits(), **kw)
    await server.start()
    await server.wait_loaded(timeout=scaled(30))
    return server


async def test_echo_model_on_rest_sse_and_grpc_with_metrics() -> None:
    server = await start(EchoModel())
    base = f"http://127.0.0.1:{server.port}"
    before = sample("bidistream_v2_requests_total", model="echo", transport="rest", call="infer_stream")
    try:
        async with httpx.AsyncClient(base_url=base, timeout=scaled(10)) as client:
            body = {
                "inputs": [
                    {"name": "t", "shape": [2], "datatype": "BYTES", "data": ["héllo", "wörld"]},
                    {
                        "name": "b",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"content_type": "base64"},
                        "data": ["/wA="],
                    },
                ]
            }
            resp = await client.post("/v2/models/echo/infer_stream", json=body)
            events = [json.loads(e[6:]) for e in resp.text.split("\n\n") if e]
            outs = [e["outputs"][0] for e in events]
            assert [(o["data"], o["parameters"]["content_type"]) for o in outs] == [
                (["héllo"], "str"),
                (["wörld"], "str"),
                (["/wA="], "base64"),  # the binary frame came back as itself
            ]
            unary = (await client.post("/v2/models/echo/infer", json=body)).json()
            assert unary["outputs"][0]["shape"] == [3, 1]
            assert (await client.get("/v2/health/live")).status_code == 200
        await eventually(
            lambda: (
                sample("bidistream_v2_requests_total", model="echo", transport="rest", call="infer_stream")
                == before + 1
            )
        )
        assert (
            sample("bidistream_v2_responses_total", model="echo", transport="rest", call="infer_stream") >= 3
        )
        out = await asyncio.to_thread(
            run_client,
            f"""
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
import mlserver.grpc.dataplane_pb2 as pb, mlserver.grpc.dataplane_pb2_grpc as dp
ch = grpc.insecure_channel("127.0.0.1:{server.grpc_port}")
status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status
req = pb.ModelInferRequest(model_name="echo", raw_input_contents=[b"\\x03\\x00\\x00\\x00abc"])
req.inputs.add(name="x", datatype="BYTES", shape=[1])
resp = dp.GRPCInferenceServiceStub(ch).ModelInfer(req)
print(repr((status, list(resp.raw_output_contents))))
""",
        )
        status, raw = eval(out.strip())
        assert status == 1  # SERVING
        assert raw == [b"\x03\x00\x00\x00abc"]  # raw in, raw out (MLServer's rule)
        assert sample("bidistream_v2_requests_total", model="echo", transport="grpc", call="infer") >= 1
    finally:
        await server.stop(drain_timeout=0)


async def test_model_failure_mid_stream_cuts_sse_and_aborts_grpc() -> None:
    server = await start(FailingAfterOne())
    base = f"http://127.0.0.1:{server.port}"
    body = {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=scaled(10)) as client:
            lines: list[str] = []
            try:
                async with client.stream("POST", "/v2/models/flaky/generate_stream", json=body) as resp:
                    assert resp.status_code == 200
                    async for line in resp.aiter_lines():
                        lines.append(line)
                cut = False
            except httpx.RemoteProtocolError:
                cut = True  # the body was cut: no client mistakes it for a complete stream
            assert cut
            data = [json.loads(x[6:]) for x in lines if x.startswith("data: ")]
            assert data[0]["outputs"][0]["data"] == ["a"]
            assert data[-1] == {"error": "RuntimeError: model broke after one frame"}
            # The server is fine afterwards.
            assert (await client.get("/v2/models/flaky/ready")).status_code == 200
        assert (
            sample(
                "bidistream_v2_errors_total",
                model="flaky",
                transport="rest",
                call="infer_stream",
                error="ModelStreamError",
            )
            >= 1
        )
        out = await asyncio.to_thread(
            run_client,
            f"""
import grpc
import mlserver.grpc.dataplane_pb2 as pb, mlserver.grpc.dataplane_pb2_grpc as dp
ch = grpc.insecure_channel("127.0.0.1:{server.grpc_port}")
req = pb.ModelInferRequest(model_name="flaky")
req.inputs.add(name="t", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"b"])
got = []
try:
    for r in dp.GRPCInferenceServiceStub(ch).ModelStreamInfer(iter([req])):
        got.append(r.outputs[0].contents.bytes_contents[0])
except grpc.RpcError as exc:
    print(repr((got, exc.code().name, exc.details())))
""",
        )
        assert eval(out.strip()) == ([b"a"], "INTERNAL", "RuntimeError: model broke after one frame")
    finally:
        await server.stop(drain_timeout=0)


async def test_not_ready_is_400_like_mlserver() -> None:
    class Slow(Model):
        name = "slow"

        async def load(self) -> None:
            await asyncio.Event().wait()

    server = ModelServer(Slow(), port=0, limits=ServerLimits())
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=scaled(10)) as client:
            assert (await client.get("/v2/health/ready")).status_code == 400
            assert (await client.get("/v2/models/slow/ready")).status_code == 400
            body = {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
            refused = await client.post("/v2/models/slow/infer", json=body)
            assert refused.status_code == 400 and "not ready" in refused.json()["error"]
    finally:
        await server.stop(drain_timeout=0)


class Firehose(Model):
    """Streams ``count`` 64 KiB frames as fast as it is allowed to, counting what it produced."""

    name = "firehose"
    frame = b"x" * 65536

    def __init__(self, count: int = 600) -> None:
        self.count = count
        self.produced = 0

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        async for _ in frames:
            for _ in range(self.count):
                self.produced += 1
                yield Frame.binary(self.frame)


async def test_sse_client_that_does_not_read_pauses_the_model() -> None:
    """Awaited SSE writes: a client that stops reading stalls the model well short of its output."""
    model = Firehose()
    server = await start(model)
    body = json.dumps({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["go"]}]}).encode()
    request = (
        f"POST /v2/models/firehose/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        writer.write(request)
        await eventually(lambda: model.produced > 0)
        last = {"value": -1, "same": 0}

        def stalled() -> bool:
            same = model.produced == last["value"]
            last["same"] = last["same"] + 1 if same else 0
            last["value"] = model.produced
            return last["same"] >= 20  # unchanged for 20 polls in a row

        await eventually(stalled, timeout=20, interval=0.05)
        assert model.produced < model.count // 2, model.produced  # paused, not buffered
        # Reading resumes the model, and every event arrives.
        received, tail = 0, b""
        while True:
            chunk = await asyncio.wait_for(reader.read(1 << 20), timeout=scaled(20))
            if not chunk:
                break
            window = tail + chunk  # a marker may straddle two reads
            received += window.count(b"data: ")
            tail = window[-5:]
            if window.endswith(b"\r\n0\r\n\r\n"):
                break
        assert received == model.count
    finally:
        writer.close()
        await server.stop(drain_timeout=0)


GRPC_PAUSED_CLIENT = """
import sys
import grpc
import mlserver.grpc.dataplane_pb2 as pb, mlserver.grpc.dataplane_pb2_grpc as dp
ch = grpc.insecure_channel("127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)])
req = pb.ModelInferRequest(model_name="firehose", raw_input_contents=[b"\\x02\\x00\\x00\\x00go"])
req.inputs.add(name="t", datatype="BYTES", shape=[1])
responses = dp.GRPCInferenceServiceStub(ch).ModelStreamInfer(iter([req]), compression=grpc.Compression.Gzip)
first = next(responses)
assert first.raw_output_contents[0] == len(b"x" * 65536).to_bytes(4, "little") + b"x" * 65536
print("first", flush=True)
sys.stdin.readline()  # the test says when to read on
print("total", 1 + sum(1 for _ in responses), flush=True)
"""


async def test_grpc_stream_client_that_does_not_read_pauses_the_model() -> None:
    """HTTP/2 flow control on the pre-encoded stream: a client that stops reading stalls the model.

    The call is gzip-compressed and raw (raw contents in, raw contents out), the stream
    forms the native fast path encodes itself; every response arrives once the client reads.
    """
    model = Firehose()
    server = await start(model)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "ignore",
        "-c",
        GRPC_PAUSED_CLIENT.format(port=server.grpc_port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        first = await asyncio.wait_for(child.stdout.readline(), timeout=scaled(30))
        assert first.strip() == b"first"
        last = {"value": -1, "same": 0}

        def stalled() -> bool:
            same = model.produced == last["value"]
            last["same"] = last["same"] + 1 if same else 0
            last["value"] = model.produced
            return last["same"] >= 20  # unchanged for 20 polls in a row

        await eventually(stalled, timeout=20, interval=0.05)
        assert model.produced < model.count // 2, model.produced  # paused, not buffered
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        line = await asyncio.wait_for(child.stdout.readline(), timeout=scaled(30))
        assert line.split() == [b"total", str(model.count).encode()]
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
        await server.stop(drain_timeout=0)
