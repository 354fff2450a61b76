"""Standard V2 clients, unmodified, against a native bidistream model (``words``) on every V2 wire.

MLServer's generated stubs on the V2 gRPC port (full duplex ``ModelStreamInfer``),
tritonclient's gRPC client on the Triton-wire port (and unary calls on the V2
port, which both wires share), tritonclient's HTTP client, the standard
``grpc.health.v1`` client, and bad input on each with the status the client
reports while another stream carries on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from bidistream.container.limits import ServerLimits
from tests.clients.v2_support import V2Ports, run_client, v2_server

MAX_MESSAGE = 64 * 1024


@pytest.fixture(scope="module")
def words() -> Iterator[V2Ports]:
    with v2_server("words", "--set", "delay=0.02", "--max-message-size", str(MAX_MESSAGE)) as ports:
        yield ports


MLSERVER_PRELUDE = """
import asyncio, grpc
import mlserver.grpc.dataplane_pb2 as pb
import mlserver.grpc.dataplane_pb2_grpc as dp

def text_request(text, model="words", **kw):
    r = pb.ModelInferRequest(model_name=model, **kw)
    t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
    t.parameters["content_type"].string_param = "str"
    t.contents.bytes_contents.append(text.encode())
    return r
"""


def test_mlserver_stubs_full_duplex_stream(words: V2Ports) -> None:
    """The second request is sent only after the first one's words came back: responses flow mid-input."""
    out = run_client(
        MLSERVER_PRELUDE
        + f"""
async def main():
    async with grpc.aio.insecure_channel("127.0.0.1:{words.grpc}") as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        first_done = asyncio.Event()
        async def requests():
            yield text_request("a b", id="req-1")
            await first_done.wait()
            yield text_request("c d e")
        got = []
        async for resp in stub.ModelStreamInfer(requests()):
            got.append((resp.outputs[0].contents.bytes_contents[0].decode(), resp.id,
                        resp.outputs[0].parameters["content_type"].string_param))
            if len(got) == 2:
                first_done.set()
        print(got)
asyncio.run(main())
"""
    )
    got = eval(out.strip())
    assert [w for w, _, _ in got] == ["a", "b", "c", "d", "e"]
    assert {rid for _, rid, _ in got} == {"req-1"}
    assert {ct for _, _, ct in got} == {"str"}


def test_mlserver_stubs_unary_metadata_health(words: V2Ports) -> None:
    out = run_client(
        MLSERVER_PRELUDE
        + f"""
from grpc_health.v1 import health_pb2, health_pb2_grpc
async def main():
    async with grpc.aio.insecure_channel("127.0.0.1:{words.grpc}") as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        live = (await stub.ServerLive(pb.ServerLiveRequest())).live
        ready = (await stub.ModelReady(pb.ModelReadyRequest(name="words"))).ready
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="words"))
        server = await stub.ServerMetadata(pb.ServerMetadataRequest())
        resp = await stub.ModelInfer(text_request("x y"))
        health = health_pb2_grpc.HealthStub(ch)
        status = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        print(repr((live, ready, meta.name, server.name, resp.outputs[0].contents.bytes_contents[0],
                    health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))))
asyncio.run(main())
"""
    )
    assert eval(out.strip()) == (True, True, "words", "bidistream", b'["x", "y"]', "SERVING")


def test_mlserver_stubs_bad_input_statuses_and_other_stream_untouched(words: V2Ports) -> None:
    """Each bad call fails with MLServer's status while a long stream on the same channel completes."""
    out = run_client(
        MLSERVER_PRELUDE
        + f"""
async def status_of(coro):
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""

async def stream_status(requests, stub):
    try:
        async for _ in stub.ModelStreamInfer(requests):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""

async def one(r):
    yield r

async def main():
    async with grpc.aio.insecure_channel("127.0.0.1:{words.grpc}") as ch:
        stub = dp.GRPCInferenceServiceStub(ch)
        long_text = " ".join(str(i) for i in range(60))
        async def long_stream():
            call = stub.ModelStreamInfer(one(text_request(long_text)))
            return [r.outputs[0].contents.bytes_contents[0] async for r in call]
        survivor = asyncio.create_task(long_stream())
        wrong_type = text_request("x"); wrong_type.inputs[0].datatype = "TEXT"
        bad_shape = text_request("x"); bad_shape.inputs[0].shape[:] = [3]
        big = text_request("x" * ({MAX_MESSAGE} * 2))
        results = {{
            "unknown": await stream_status(one(text_request("x", model="nope")), stub),
            "wrong_type": await status_of(stub.ModelInfer(wrong_type)),
            "bad_shape": await stream_status(one(bad_shape), stub),
            "oversize": await status_of(stub.ModelInfer(big)),
            "binary_to_text_model": await stream_status(one(pb.ModelInferRequest(model_name="words", inputs=[
                pb.ModelInferRequest.InferInputTensor(name="p", datatype="BYTES", shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[b"\\xff"]))])), stub),
        }}
        # A client that vanishes mid-stream: cancel after the first response.
        call = stub.ModelStreamInfer(one(text_request(long_text)))
        async for _ in call:
            call.cancel()
            break
        words = await survivor
        results["survivor"] = (len(words), words[0].decode(), words[-1].decode())
        print(repr(results))
asyncio.run(main())
""",
        timeout=90,
    )
    results = eval(out.strip())
    assert results["unknown"] == ("NOT_FOUND", "Model nope not found")
    assert results["wrong_type"][0] == "FAILED_PRECONDITION"
    assert results["bad_shape"][0] == "INVALID_ARGUMENT" and "shape [3]" in results["bad_shape"][1]
    assert results["oversize"][0] == "RESOURCE_EXHAUSTED"
    assert results["binary_to_text_model"] == ("INVALID_ARGUMENT", "the words model takes text frames only")
    assert results["survivor"] == (60, "0", "59")


def test_tritonclient_grpc_stream_on_triton_port_and_unary_on_v2_port(words: V2Ports) -> None:
    out = run_client(
        f"""
import queue
import numpy as np
import tritonclient.grpc as tg
results = queue.Queue()
client = tg.InferenceServerClient("127.0.0.1:{words.triton}")
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("words")
assert client.get_model_metadata("words").name == "words"
client.start_stream(callback=lambda result, error: results.put((result, error)))
prompt = tg.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"x y z"], dtype=object))
client.async_stream_infer("words", [prompt], request_id="r1", parameters={{"content_type": "str"}})
got = []
while True:
    result, error = results.get(timeout=10)
    assert error is None, error
    params = result.get_response().parameters
    got.append((result.as_numpy("output").tolist(), params["triton_final_response"].bool_param))
    if got[-1][1]:
        break
client.async_stream_infer("nope", [prompt])
result, error = results.get(timeout=10)
client.async_stream_infer("words", [prompt], parameters={{"content_type": "str"}})
after = results.get(timeout=10)
client.stop_stream()
unary = tg.InferenceServerClient("127.0.0.1:{words.grpc}").infer("words", [prompt]).as_numpy("output")
print(repr((got, str(error), after[1] is None, unary.tolist())))
"""
    )
    got, error, after_ok, unary = eval(out.strip())
    assert got == [([[b"x"]], False), ([[b"y"]], False), ([[b"z"]], True)]
    assert "Model nope not found" in error and after_ok  # per-response error; the stream stays open
    # tritonclient sends BYTES without content_type: a binary frame, which WordsModel.invoke reads as UTF-8.
    assert unary == [[b'["x", "y", "z"]']]


def test_tritonclient_http(words: V2Ports) -> None:
    out = run_client(
        f"""
import numpy as np
import tritonclient.http as th
client = th.InferenceServerClient("127.0.0.1:{words.http}")
prompt = th.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"hello big world"], dtype=object), binary_data=False)
result = client.infer("words", [prompt], outputs=[th.InferRequestedOutput("output", binary_data=False)])
print(repr((client.is_server_live(), client.is_model_ready("words"),
            client.get_model_metadata("words")["name"], result.as_numpy("output").tolist())))
"""
    )
    # JSON carries text, so tritonclient hands back str elements (no binary-data extension here).
    assert eval(out.strip()) == (True, True, "words", [['["hello", "big", "world"]']])


def test_rest_bad_input_in_mlserver_shapes(words: V2Ports) -> None:
    url = f"{words.base}/v2/models/words/infer"
    good = {"inputs": [{"name": "p", "shape": [1], "datatype": "BYTES", "data": ["a b"]}]}
    with httpx.Client(timeout=10) as client:
        malformed = client.post(url, content=b"{nope", headers={"content-type": "application/json"})
        assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
        wrong = client.post(url, json={"inputs": [{**good["inputs"][0], "datatype": "TEXT"}]})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == [
            "body",
            "inputs",
            0,
            "datatype",
        ]
        shape = client.post(url, json={"inputs": [{**good["inputs"][0], "shape": [2]}]})
        assert shape.status_code == 400 and "shape [2]" in shape.json()["error"]
        assert client.post(f"{words.base}/v2/models/nope/infer", json=good).json() == {
            "error": "Model nope not found"
        }
        too_big = client.post(url, content=b"x" * (ServerLimits().max_invoke_body + 1))
        assert too_big.status_code == 413
        ok = client.post(url, json=good)
        assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == ['["a", "b"]']
        versioned = client.post(f"{words.base}/v2/models/words/versions/1/generate", json=good)
        assert versioned.status_code == 200


def test_sse_stream_with_concurrent_bad_requests(words: V2Ports) -> None:
    """An SSE stream keeps flowing while bad requests fail beside it."""
    url = f"{words.base}/v2/models/words/generate_stream"
    text = " ".join(str(i) for i in range(40))
    body = {"inputs": [{"name": "p", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    received: list[str] = []

    def stream() -> None:
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:])["outputs"][0]["data"][0])

    thread = threading.Thread(target=stream)
    thread.start()
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            assert client.post(url, content=b"[[[").status_code == 400
            assert client.post(f"{words.base}/v2/models/nope/generate_stream", json=body).status_code == 404
    thread.join(timeout=60)
    assert received == text.split()
