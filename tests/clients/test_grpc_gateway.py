# ruff: noqa: E501  (client scripts are embedded as strings, one statement per line)
"""gRPC through the gateway's TLS port: standard clients, unmodified, to real instances.

MLServer's generated stubs on ``grpc.aio`` and tritonclient's gRPC client
call the gateway (TLS with its generated CA, ALPN h2) and the relay carries
each call to a ``bidistream serve words`` instance's V2 gRPC port: unary
``ModelInfer``, full-duplex ``ModelStreamInfer``, ``ServerLive``,
``ModelReady``, the standard health service, the endpoint named by the
``x-bidistream-endpoint`` metadata key or by ``model_name``.  Errors are
read as the client reports them (status code and details) while another call
on the same channel carries on: unknown endpoint, no instance, all instances
busy, an instance killed mid-stream, bad credentials, malformed requests.  A
busy instance is a real grpcio server that answers RESOURCE_EXHAUSTED, as a
full one does.  Riva's ``StreamingRecognize`` goes through to the shared
speech server.

Clients run in child processes (MLServer's and tritonclient's stubs cannot
share one process, and the test process imports neither); the gateway runs
in the test's loop, so its queued bytes can be read directly.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bidistream import metrics
from bidistream.errors import EndpointNotFoundError, ServiceUnavailableError
from bidistream.gateway.grpcrelay import GrpcCall
from bidistream.gateway.h2front import H2Protocol
from bidistream.gateway.server import Gateway
from bidistream.routing import RoutableInstance
from bidistream.sigv4 import CredentialStore
from tests.clients.v2_support import V2Ports, run_client, v2_server
from tests.conftest import child_env, free_port, listening_process
from tests.h2client import H2TestClient
from tests.support.waiting import scaled, wait_until

AKID, SECRET, API_KEY = "AKIDGRPC", "grpc-secret-key", "grpc-api-key"


# ------------------------------------------------------------------ a router with several instances
@dataclass
class ListRouter:
    """Endpoints with a fixed list of instances each (the platform's router does the same with its store)."""

    endpoints: dict[str, list[RoutableInstance]]
    started: list[str] = field(default_factory=list)

    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        found = self.endpoints.get(endpoint)
        if found is None:
            raise EndpointNotFoundError(f"Endpoint {endpoint} not found.")
        if not found:
            raise ServiceUnavailableError(f"endpoint {endpoint} has no healthy instance")
        return list(found)

    def session_started(self, instance: RoutableInstance) -> None:
        instance.live_sessions += 1
        self.started.append(instance.instance_id)

    def session_ended(self, instance: RoutableInstance) -> None:
        instance.live_sessions -= 1


def instance(endpoint: str, name: str, http: int, grpc: int) -> RoutableInstance:
    return RoutableInstance(
        endpoint, "AllTraffic", name, f"http://127.0.0.1:{http}", grpc_address=f"127.0.0.1:{grpc}"
    )


BUSY_SERVER = """
import asyncio, sys, grpc
port, log = int(sys.argv[1]), sys.argv[2]

class Busy(grpc.GenericRpcHandler):
    def service(self, details):
        with open(log, "a") as f:
            f.write(details.method + "\\n")
        async def unary(request, context):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "instance full (test)")
        async def stream(requests, context):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "instance full (test)")
        if details.method.endswith("Stream") or details.method.endswith("StreamInfer"):
            return grpc.stream_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)

async def main():
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Busy(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()
asyncio.run(main())
"""


@dataclass
class Busy:
    port: int
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture(scope="module")
def words() -> Iterator[tuple[V2Ports, V2Ports]]:
    with v2_server("words", "--set", "delay=0.01") as a, v2_server("words", "--set", "delay=0.01") as b:
        yield a, b


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    port = free_port()
    log = tmp_path_factory.mktemp("busy") / "calls.txt"
    with listening_process([sys.executable, "-c", BUSY_SERVER, str(port), str(log)], port, child_env()):
        yield Busy(port, log)


def closed_port() -> int:
    return free_port()  # nothing listens there: connecting is refused


async def start_gateway(
    tmp_path: Path, router: ListRouter, credentials: CredentialStore | None = None
) -> Gateway:
    gw = Gateway(router, port=0, data_dir=tmp_path / "gw", credentials=credentials or CredentialStore({}))
    await gw.start()
    return gw


@pytest.fixture
async def stack(
    tmp_path: Path, words: tuple[V2Ports, V2Ports], busy: Busy
) -> AsyncIterator[tuple[Gateway, ListRouter]]:
    a, b = words
    router = ListRouter(
        {
            "words": [instance("words", "words-a", a.http, a.grpc)],
            "other": [instance("other", "other-b", b.http, b.grpc)],
            "busy": [instance("busy", "busy-1", 1, busy.port), instance("busy", "busy-b", b.http, b.grpc)],
            "allbusy": [instance("allbusy", "busy-1", 1, busy.port)],
            "empty": [],
            "gone": [instance("gone", "gone-1", 1, closed_port())],
        }
    )
    gw = await start_gateway(tmp_path, router)
    try:
        yield gw, router
    finally:
        await gw.stop()


def prelude(gw: Gateway) -> str:
    """MLServer's stubs on a TLS channel to the gateway, and helpers, for a client script."""
    return f"""
import asyncio, time, grpc
import mlserver.grpc.dataplane_pb2 as pb
import mlserver.grpc.dataplane_pb2_grpc as dp
from grpc_health.v1 import health_pb2, health_pb2_grpc
CREDS = grpc.ssl_channel_credentials(open({str(gw.ca_path)!r}, "rb").read())
TARGET = "127.0.0.1:{gw.port}"

def channel():
    return grpc.aio.secure_channel(TARGET, CREDS)

def text_request(text, model="words", **kw):
    r = pb.ModelInferRequest(model_name=model, **kw)
    t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
    t.parameters["content_type"].string_param = "str"
    t.contents.bytes_contents.append(text.encode())
    return r

def word(resp):
    return resp.outputs[0].contents.bytes_contents[0].decode()

async def status_of(coro):
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""

async def stream_status(call):
    try:
        return "OK", [word(r) async for r in call]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()

async def one(r):
    yield r

# A stream the gateway ends before reading: the client writes nothing until the status is in.
# grpcio's aio client reports INTERNAL ("Internal error from Core") instead of the server's
# status when a write races a call the server already ended (grpc/grpc#36066; about one call
# in five straight against a grpcio server under a CPU burner here).
async def refused_stream(method, **kw):
    done = asyncio.Event()
    async def nothing_until_done():
        await done.wait()
        return
        yield
    try:
        return await stream_status(method(nothing_until_done(), **kw))
    finally:
        done.set()
"""


async def client(script: str, timeout: float = 60.0) -> str:
    """A client script in its own interpreter, off the loop the gateway runs on."""
    return await asyncio.to_thread(run_client, script, timeout=timeout)


# ------------------------------------------------------------------ the V2 clients
async def test_mlserver_stubs_through_the_gateway(stack: tuple[Gateway, ListRouter]) -> None:
    """Unary, health and a full-duplex stream: the second request is sent only after the first one's words came back."""
    gw, router = stack
    out = await client(
        prelude(gw)
        + """
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        meta = [("x-bidistream-endpoint", "words")]
        live = (await stub.ServerLive(pb.ServerLiveRequest(), metadata=meta)).live
        ready = (await stub.ModelReady(pb.ModelReadyRequest(name="words"))).ready
        unary = word(await stub.ModelInfer(text_request("x y")))
        health = health_pb2_grpc.HealthStub(ch)
        status = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), metadata=meta)
        # By metadata: endpoint "other" (instance b) serves the model "words" too.
        other = word(await stub.ModelInfer(text_request("p q"), metadata=[("x-bidistream-endpoint", "other")]))
        first_done = asyncio.Event()
        async def requests():
            yield text_request("a b", id="req-1")
            await first_done.wait()
            yield text_request("c d e")
        got = []
        async for resp in stub.ModelStreamInfer(requests()):
            got.append((word(resp), resp.id))
            if len(got) == 2:
                first_done.set()
        print(repr((live, ready, unary, health_pb2.HealthCheckResponse.ServingStatus.Name(status.status), other, got)))
asyncio.run(main())
"""
    )
    live, ready, unary, health, other, got = eval(out.strip())
    assert (live, ready, unary, health, other) == (True, True, '["x", "y"]', "SERVING", '["p", "q"]')
    assert [w for w, _ in got] == ["a", "b", "c", "d", "e"] and {rid for _, rid in got} == {"req-1"}
    assert "other-b" in router.started and "words-a" in router.started
    infer = {"endpoint": "words", "method": "inference.GRPCInferenceService/ModelInfer", "grpc_status": "OK"}
    assert metrics.sample_sum(metrics.GRPC_CALLS, **infer) >= 1
    stream = {"endpoint": "words", "method": "inference.GRPCInferenceService/ModelStreamInfer"}
    assert metrics.sample_sum(metrics.GRPC_CALL_SECONDS, "_count", **stream) >= 1
    assert all(i.live_sessions == 0 for insts in router.endpoints.values() for i in insts)


async def test_tritonclient_grpc_through_the_gateway(stack: tuple[Gateway, ListRouter]) -> None:
    gw, _ = stack
    out = await client(
        f"""
import numpy as np
import tritonclient.grpc as tg
c = tg.InferenceServerClient("127.0.0.1:{gw.port}", ssl=True, root_certificates={str(gw.ca_path)!r})
meta = {{"x-bidistream-endpoint": "words"}}
assert c.is_server_live(headers=meta) and c.is_server_ready(headers=meta)
assert c.is_model_ready("words") and c.get_model_metadata("words").name == "words"
prompt = tg.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"x y z"], dtype=object))
print(repr(c.infer("words", [prompt]).as_numpy("output").tolist()))
try:
    c.infer("nope", [prompt])
except tg.InferenceServerException as exc:
    print(repr((exc.status(), exc.message())))
"""
    )
    unary, (status, message) = (eval(line) for line in out.strip().splitlines())
    assert unary == [[b'["x", "y", "z"]']]
    assert status == "StatusCode.NOT_FOUND" and "nope" in message


# ------------------------------------------------------------------ routing errors
async def test_routing_errors_each_in_the_clients_status_other_stream_untouched(
    stack: tuple[Gateway, ListRouter], busy: Busy
) -> None:
    gw, _ = stack
    out = await client(
        prelude(gw)
        + """
def to(name):
    return [("x-bidistream-endpoint", name)]

async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        long_text = " ".join(str(i) for i in range(60))
        survivor = asyncio.create_task(stream_status(stub.ModelStreamInfer(one(text_request(long_text)))))
        health = health_pb2_grpc.HealthStub(ch)
        results = {
            "unknown_by_name": await status_of(stub.ModelInfer(text_request("x", model="nope"))),
            "unknown_by_metadata": await status_of(stub.ServerLive(pb.ServerLiveRequest(), metadata=to("nope"))),
            "no_endpoint": await status_of(health.Check(health_pb2.HealthCheckRequest())),
            "bad_name": await status_of(stub.ServerLive(pb.ServerLiveRequest(), metadata=to("bad name!"))),
            "no_instance": await status_of(stub.ModelInfer(text_request("x"), metadata=to("empty"))),
            "unreachable": await status_of(stub.ModelInfer(text_request("x"), metadata=to("gone"))),
            "all_busy": await status_of(stub.ModelInfer(text_request("x"), metadata=to("allbusy"))),
            "all_busy_stream": await refused_stream(stub.ModelStreamInfer, metadata=to("allbusy")),
        }
        code, words = await survivor
        results["survivor"] = (code, len(words), words[0], words[-1])
        print(repr(results))
asyncio.run(main())
"""
    )
    r = eval(out.strip())
    assert r["unknown_by_name"] == ("NOT_FOUND", "Endpoint nope not found.")
    assert r["unknown_by_metadata"] == ("NOT_FOUND", "Endpoint nope not found.")
    assert r["no_endpoint"][0] == "NOT_FOUND" and "x-bidistream-endpoint" in r["no_endpoint"][1]
    assert r["bad_name"][0] == "INVALID_ARGUMENT" and "EndpointName" in r["bad_name"][1]
    assert r["no_instance"] == ("UNAVAILABLE", "endpoint empty has no healthy instance")
    assert r["unreachable"][0] == "UNAVAILABLE" and "unreachable" in r["unreachable"][1]
    assert r["all_busy"][0] == "RESOURCE_EXHAUSTED" and "at capacity" in r["all_busy"][1]
    assert r["all_busy_stream"][0] == "RESOURCE_EXHAUSTED", r["all_busy_stream"]
    assert r["survivor"] == ("OK", 60, "0", "59"), r
    refused = {"endpoint": "", "method": "other"}
    assert metrics.sample_sum(metrics.GRPC_CALLS, grpc_status="NOT_FOUND", **refused) >= 3
    assert metrics.sample_sum(metrics.GRPC_CALLS, grpc_status="RESOURCE_EXHAUSTED", **refused) >= 2


async def test_busy_instance_sends_the_call_to_the_next_one(
    stack: tuple[Gateway, ListRouter], busy: Busy
) -> None:
    """The first candidate answers RESOURCE_EXHAUSTED before any response: unary and stream land on the next."""
    gw, router = stack
    before = len(busy.calls())
    out = await client(
        prelude(gw)
        + """
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        meta = [("x-bidistream-endpoint", "busy")]
        unary = word(await stub.ModelInfer(text_request("x y"), metadata=meta))
        got = [word(r) async for r in stub.ModelStreamInfer(one(text_request("a b c")), metadata=meta)]
        print(repr((unary, got)))
asyncio.run(main())
"""
    )
    assert eval(out.strip()) == ('["x", "y"]', ["a", "b", "c"])
    assert len(busy.calls()) - before == 2  # each call was refused once, then replayed
    assert router.started.count("busy-b") == 2


# ------------------------------------------------------------------ instance death
async def test_instance_killed_mid_stream_is_unavailable_within_a_second(
    tmp_path: Path, words: tuple[V2Ports, V2Ports]
) -> None:
    a, _ = words
    with v2_server("words", "--set", "delay=0.05") as doomed:
        router = ListRouter(
            {
                "doomed": [instance("doomed", "doomed-1", doomed.http, doomed.grpc)],
                "words": [instance("words", "words-a", a.http, a.grpc)],
            }
        )
        gw = await start_gateway(tmp_path, router)
        first, killed = tmp_path / "first", tmp_path / "killed"
        try:
            script = (
                prelude(gw)
                + f"""
import os
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        survivor = asyncio.create_task(stream_status(stub.ModelStreamInfer(one(text_request(" ".join(["w"] * 40))))))
        call = stub.ModelStreamInfer(one(text_request(" ".join(["v"] * 400))), metadata=[("x-bidistream-endpoint", "doomed")])
        seen = 0
        try:
            async for _ in call:
                seen += 1
                if seen == 1:
                    open({str(first)!r}, "w").close()
        except grpc.aio.AioRpcError as exc:
            at = time.time()
            while not os.path.exists({str(killed)!r}):
                await asyncio.sleep(0.005)
            code, details = exc.code().name, exc.details()
            killed_at = float(open({str(killed)!r}).read())
            code2, words = await survivor
            print(repr((code, details, at - killed_at, seen, code2, len(words))))
asyncio.run(main())
"""
            )
            task = asyncio.create_task(client(script))
            await asyncio.to_thread(wait_until, first.exists, scaled(30))
            doomed.proc.kill()  # by PID: the instance this test started
            killed.write_text(repr(time.time()))
            code, details, after, seen, code2, survivor_words = eval((await task).strip())
        finally:
            await gw.stop()
    assert code == "UNAVAILABLE" and "doomed-1" in details and "closed the connection" in details
    assert after < scaled(1.0), after
    assert 1 <= seen < 400
    assert (code2, survivor_words) == ("OK", 40)


# ------------------------------------------------------------------ credentials
async def test_credentials_checked_like_the_websocket_door(
    tmp_path: Path, words: tuple[V2Ports, V2Ports]
) -> None:
    a, _ = words
    router = ListRouter({"words": [instance("words", "words-a", a.http, a.grpc)]})
    creds = CredentialStore({AKID: SECRET}, api_keys=frozenset({API_KEY}))
    gw = await start_gateway(tmp_path, router, creds)
    try:
        out = await client(
            prelude(gw)
            + f"""
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

def signed(path, secret={SECRET!r}):
    req = AWSRequest("POST", f"https://{{TARGET}}{{path}}", headers={{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}})
    SigV4Auth(Credentials({AKID!r}, secret), "sagemaker", "us-east-1").add_auth(req)
    return [(k.lower(), v) for k, v in req.headers.items()]

INFER = "/inference.GRPCInferenceService/ModelInfer"
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        key = [("authorization", "Bearer {API_KEY}")]
        survivor = asyncio.create_task(stream_status(stub.ModelStreamInfer(one(text_request("s t u v")), metadata=key)))
        r = {{
            "none": await status_of(stub.ModelInfer(text_request("x"))),
            "wrong_key": await status_of(stub.ModelInfer(text_request("x"), metadata=[("authorization", "Bearer nope")])),
            "bad_scheme": await status_of(stub.ModelInfer(text_request("x"), metadata=[("authorization", "Basic eA==")])),
            "key": await status_of(stub.ModelInfer(text_request("x"), metadata=key)),
            "token": await status_of(stub.ModelInfer(text_request("x"), metadata=[("authorization", "Token {API_KEY}")])),
            "sigv4": await status_of(stub.ModelInfer(text_request("x"), metadata=signed(INFER))),
            "sigv4_wrong_secret": await status_of(stub.ModelInfer(text_request("x"), metadata=signed(INFER, "bad"))),
            "sigv4_other_path": await status_of(stub.ModelInfer(text_request("x"), metadata=signed("/inference.GRPCInferenceService/ModelReady"))),
        }}
        r["survivor"] = await survivor
        print(repr(r))
asyncio.run(main())
"""
        )
    finally:
        await gw.stop()
    r = eval(out.strip())
    assert r["none"][0] == "UNAUTHENTICATED" and "requires credentials" in r["none"][1]
    assert r["wrong_key"] == ("UNAUTHENTICATED", "invalid API key")
    assert r["bad_scheme"][0] == "UNAUTHENTICATED" and "Basic" in r["bad_scheme"][1]
    assert r["key"] == r["token"] == r["sigv4"] == ("OK", "")
    assert (
        r["sigv4_wrong_secret"][0] == "UNAUTHENTICATED" and "signature" in r["sigv4_wrong_secret"][1].lower()
    )
    assert r["sigv4_other_path"][0] == "UNAUTHENTICATED"
    assert r["survivor"] == ("OK", ["s", "t", "u", "v"])


# ------------------------------------------------------------------ malformed requests (raw HTTP/2)
def grpc_headers(
    path: str = "/inference.GRPCInferenceService/ServerLive", **over: str
) -> list[tuple[str, str]]:
    base = {
        ":method": "POST",
        ":scheme": "https",
        ":authority": "localhost",
        ":path": path,
        "content-type": "application/grpc",
        "te": "trailers",
        "x-bidistream-endpoint": "words",
    }
    base.update({k.replace("_", "-"): v for k, v in over.items()})
    return [(k, v) for k, v in base.items() if v != "-"]


async def test_malformed_grpc_requests_get_a_clear_status(stack: tuple[Gateway, ListRouter]) -> None:
    gw, _ = stack
    raw = await H2TestClient.connect(gw.port, gw.ca_path)
    try:
        ok = raw.request(grpc_headers())
        raw.send(ok, b"\0\0\0\0\0", end=True)  # an empty ServerLiveRequest
        cases = {
            "no_te": grpc_headers(te="-"),
            "get": grpc_headers(**{":method": "GET"}),
            "bad_path": grpc_headers("/no-method"),
            "unknown_codec": grpc_headers(content_type="application/grpc+nonesuch"),
        }
        sids = {name: raw.request(h) for name, h in cases.items()}
        for sid in sids.values():
            raw.send(sid, b"\0\0\0\0\0", end=True)
        got = {name: await raw.headers(sid) for name, sid in sids.items()}
        await raw.wait_end(sids["unknown_codec"])
        await raw.wait_end(ok)
        ok_headers = await raw.headers(ok)
    finally:
        raw.close()
    for name in ("no_te", "get", "bad_path"):
        h = got[name]
        assert h[":status"] == "200" and h["content-type"] == "application/grpc", (name, h)
        assert h["grpc-status"] == "3", (name, h)  # INVALID_ARGUMENT, as trailers-only
    assert "te: trailers" in got["no_te"]["grpc-message"]
    assert "POST" in got["get"]["grpc-message"]
    assert "/package.Service/Method" in got["bad_path"]["grpc-message"]
    # A codec variant is the instance's to judge (grpcio reads application/grpc+anything as
    # protobuf and answers): relayed, its answer comes back.
    assert (
        got["unknown_codec"][":status"] == "200"
        and got["unknown_codec"]["content-type"] == "application/grpc"
    )
    assert ok_headers[":status"] == "200"


async def test_grpc_over_http11_is_a_clear_error(stack: tuple[Gateway, ListRouter]) -> None:
    gw, _ = stack

    def call() -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(gw.ca_path))
        ctx.set_alpn_protocols(["http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=scaled(10))
        conn.request(
            "POST",
            "/inference.GRPCInferenceService/ServerLive",
            body=b"\0\0\0\0\0",
            headers={"content-type": "application/grpc", "te": "trailers"},
        )
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())["Message"]
        conn.close()
        return out

    status, message = await asyncio.to_thread(call)
    assert status == 400 and "gRPC calls need HTTP/2" in message


# ------------------------------------------------------------------ flow control
def gateway_queued(gw: Gateway) -> int:
    """Bytes the gateway holds for relayed gRPC calls (either direction), its TLS write buffers included."""
    total = 0
    for conn in list(gw.connections):
        if isinstance(conn, H2Protocol):
            if conn.transport is not None:
                total += conn.transport.get_write_buffer_size()
            for st in conn.streams.values():
                if isinstance(st, GrpcCall):
                    total += len(st.sender.pending) + len(st.queue) + len(st.replay or b"")
    return total


async def test_a_client_that_does_not_read_holds_the_instance_back(stack: tuple[Gateway, ListRouter]) -> None:
    """6 MB of responses (the instance makes 1 MB/s); the client reads none for 3 s: the gateway
    queues at most a window of it."""
    gw, _ = stack
    ready = Path(os.environ.get("TMPDIR", "/tmp")) / f"grpc-unread-{os.getpid()}-{gw.port}"
    ready.unlink(missing_ok=True)
    script = (
        prelude(gw)
        + f"""
import os
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        text = " ".join(["w" * 10000] * 600)
        call = stub.ModelStreamInfer(one(text_request(text)), metadata=[("x-bidistream-endpoint", "other")])
        await call.initial_metadata()
        open({str(ready)!r}, "w").close()
        await asyncio.sleep({scaled(3.0)})
        n = 0
        async for _ in call:
            n += 1
        print(n)
asyncio.run(main())
"""
    )
    task = asyncio.create_task(client(script, timeout=120))
    try:
        await asyncio.to_thread(wait_until, ready.exists, scaled(60))
        peak = 0
        for _ in range(20):
            peak = max(peak, gateway_queued(gw))
            await asyncio.sleep(scaled(0.1))
        out = await task
    finally:
        ready.unlink(missing_ok=True)
    print(f"gateway queued at most {peak} B for the unread call")
    assert int(out.strip()) == 600
    # The upstream window (stream_window, 1 MiB) plus one DATA frame: nothing grows past it.
    assert peak <= gw.limits.stream_window + 64 * 1024, peak


def messages(data: bytes) -> int:
    """How many length-prefixed gRPC messages ``data`` holds."""
    n = pos = 0
    while pos + 5 <= len(data):
        pos += 5 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        n += 1
    return n


async def test_raw_client_window_closed_gateway_holds_one_window(
    stack: tuple[Gateway, ListRouter], tmp_path: Path
) -> None:
    """A client that never opens its window: the gateway holds at most the upstream window, the instance waits."""
    gw, _ = stack
    body = tmp_path / "request.bin"
    await client(
        f"""
import mlserver.grpc.dataplane_pb2 as pb
r = pb.ModelInferRequest(model_name="words")
t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
t.parameters["content_type"].string_param = "str"
t.contents.bytes_contents.append(" ".join(["w" * 10000] * 600).encode())
data = r.SerializeToString()
open({str(body)!r}, "wb").write(b"\\0" + len(data).to_bytes(4, "big") + data)
"""
    )
    raw = await H2TestClient.connect(gw.port, gw.ca_path)
    try:
        raw.granting = False
        sid = raw.request(
            grpc_headers("/inference.GRPCInferenceService/ModelStreamInfer", x_bidistream_endpoint="other")
        )
        await raw.send_within_window(sid, body.read_bytes())
        raw.conn.end_stream(sid)
        raw._flush()
        await raw.headers(sid)
        peak = 0
        for _ in range(20):
            peak = max(peak, gateway_queued(gw))
            await asyncio.sleep(scaled(0.1))
        received_while_closed = len(raw.data[sid])
        raw.granting = True
        raw.grant()
        await raw.wait_end(sid)
        total = messages(bytes(raw.data[sid]))
    finally:
        raw.close()
    print(f"gateway queued at most {peak} B while the client's window was closed")
    assert received_while_closed <= 65535
    assert 64 * 1024 < peak <= gw.limits.stream_window + 64 * 1024, peak
    assert total == 600


# ------------------------------------------------------------------ Riva through the gateway
async def test_riva_streaming_recognize_through_the_gateway(tmp_path: Path) -> None:
    from tests.speech_audio import speech_grpc_port, speech_server, synth

    http, grpc_port = speech_server(), speech_grpc_port()
    router = ListRouter({"speech": [instance("speech", "speech-1", http, grpc_port)]})
    gw = await start_gateway(tmp_path, router)
    wav = synth("the quick brown fox jumps over the lazy dog")
    try:
        out = await client(
            f"""
import riva.client
def transcript(auth):
    asr = riva.client.ASRService(auth)
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(language_code="en-US", max_alternatives=1,
                                             enable_automatic_punctuation=False),
        interim_results=False)
    with riva.client.AudioChunkFileIterator({str(wav)!r}, 1600) as chunks:
        return " ".join(r.alternatives[0].transcript for resp in asr.streaming_response_generator(chunks, config)
                        for r in resp.results if r.is_final)
relayed = transcript(riva.client.Auth(uri="127.0.0.1:{gw.port}", use_ssl=True, ssl_cert={str(gw.ca_path)!r},
                                      metadata_args=[["x-bidistream-endpoint", "speech"]]))
direct = transcript(riva.client.Auth(uri="127.0.0.1:{grpc_port}"))
print(repr((relayed, direct)))
""",
            timeout=120,
        )
    finally:
        await gw.stop()
    relayed, direct = eval(out.strip())
    # The relay moves the audio byte for byte: the same transcript as the direct call.
    assert relayed == direct and "lazy" in relayed.lower()


def test_client_scripts_are_standalone() -> None:
    """The scripts above import only the third-party clients (checked here once, cheaply)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("import grpc, riva.client, tritonclient.grpc, botocore")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ the platform's instances
async def test_endpoint_created_with_boto3_is_reachable_over_grpc(tmp_path: Path) -> None:
    """The process runtime gives each instance its own SAGEMAKER_GRPC_PORT; the platform's router relays to it."""
    from tests.clients.platform_stack import create_endpoint, platform_stack, sync

    async with platform_stack(tmp_path) as s:
        await sync(create_endpoint, s.boto(), "words", "bidistream/words", [("AllTraffic", 2, 1.0)])
        routable = s.platform.router.candidates("words")
        assert len(routable) == 2 and all(r.grpc_address for r in routable)
        assert len({r.grpc_address for r in routable}) == 2
        out = await client(
            prelude(s.gateway)
            + """
async def main():
    async with channel() as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        unary = [word(await stub.ModelInfer(text_request(f"x{i} y"))) for i in range(4)]
        got = [word(r) async for r in stub.ModelStreamInfer(one(text_request("a b c")))]
        print(repr((unary, got)))
asyncio.run(main())
"""
        )
    unary, got = eval(out.strip())
    assert unary == [f'["x{i}", "y"]' for i in range(4)] and got == ["a", "b", "c"]
