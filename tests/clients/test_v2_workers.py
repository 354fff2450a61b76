"""``parallel_workers: 2`` streaming (MLServer refuses it): streams spread over both workers, each intact."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.v2_support import V2Ports, run_client, v2_server
from tests.support.waiting import wait_until

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "mlserver_workers"
STREAMS = 16
WORDS = [f"w{i}" for i in range(12)]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Ports]:
    folder = tmp_path_factory.mktemp("workers")
    for name in ("settings.json", "model-settings.json", "pid_model.py"):
        shutil.copy(FIXTURE / name, folder / name)
    with v2_server(str(folder)) as ports:
        # The second worker binds a moment after the first answers: wait until both do.
        url = f"{ports.base}/v2/models/pid-model/infer_stream"
        body = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["ping"]}]}
        seen: set[str] = set()

        def both_answer() -> bool:
            with httpx.Client(timeout=10) as client:  # a new connection each time
                resp = client.post(url, json=body)
            # A worker binds before its model has loaded and answers 400 "not ready" until then.
            if resp.status_code == 200:
                seen.add(json.loads(resp.text.strip()[6:])["outputs"][0]["data"][0].split("@")[1])
            return len(seen) == 2

        wait_until(both_answer, timeout=60, interval=0.05)
        yield ports


def _split(items: list[str]) -> tuple[list[str], set[str]]:
    words = [item.split("@")[0] for item in items]
    return words, {item.split("@")[1] for item in items}


def test_sse_streams_spread_over_two_workers(two_workers: V2Ports) -> None:
    url = f"{two_workers.base}/v2/models/pid-model/generate_stream"
    body = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [" ".join(WORDS)]}]}
    results: dict[int, list[str]] = {}

    def one(index: int) -> None:
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=body) as resp:
            results[index] = [
                json.loads(line[6:])["outputs"][0]["data"][0]
                for line in resp.iter_lines()
                if line.startswith("data: ")
            ]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    pids: set[str] = set()
    for index in range(STREAMS):
        words, stream_pids = _split(results[index])
        assert words == WORDS
        assert len(stream_pids) == 1  # a stream never moves between workers
        pids |= stream_pids
    assert len(pids) == 2


def test_grpc_streams_spread_over_two_workers(two_workers: V2Ports) -> None:
    out = run_client(
        f"""
import asyncio, grpc
import mlserver.grpc.dataplane_pb2 as pb, mlserver.grpc.dataplane_pb2_grpc as dp
async def one():
    # A channel of its own (its own TCP connection), as separate clients would have.
    async with grpc.aio.insecure_channel("127.0.0.1:{two_workers.grpc}",
                                         options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        r = pb.ModelInferRequest(model_name="pid-model")
        t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append({" ".join(WORDS)!r}.encode())
        async def reqs():
            yield r
        call = dp.GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs())
        return [x.outputs[0].contents.bytes_contents[0].decode() async for x in call]
async def main():
    print(repr(await asyncio.gather(*(one() for _ in range({STREAMS})))))
asyncio.run(main())
"""
    )
    pids: set[str] = set()
    for items in eval(out.strip()):
        words, stream_pids = _split(items)
        assert words == WORDS and len(stream_pids) == 1
        pids |= stream_pids
    assert len(pids) == 2
