"""The MLServer streaming seed notebook, unmodified but for its ports, against ``bidistream serve``.

The notebook's ``%%writefile`` cells make the folder (``text_model.TextModel``,
``settings.json`` with MLServer's streaming settings, ``model-settings.json``,
``generate-request.json``); ``bidistream serve <folder>`` loads it with
MLServer's own types; the notebook's httpx-sse client and its gRPC client
(MLServer's stubs and converters) each read the six words back.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.v2_support import V2Ports, run_client, v2_server
from tests.fixtures.mlserver_seed import client_cells, write_seed

WORDS = ["What", " is", " the", " capital", " of", " France?"]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[V2Ports, Path]]:
    folder = tmp_path_factory.mktemp("seed")
    write_seed(folder)
    with v2_server(str(folder)) as ports:
        yield ports, folder


def _printed(stdout: str) -> list[str]:
    # The notebook prints StringCodec.decode_output(...) per response: a one-item list.
    return [eval(line)[0] for line in stdout.splitlines() if line.startswith("[")]


def test_notebook_rest_sse_client(seed: tuple[V2Ports, Path]) -> None:
    ports, folder = seed
    rest, _ = client_cells(ports.http, ports.grpc)
    assert _printed(run_client(rest, cwd=folder)) == WORDS


def test_notebook_grpc_client(seed: tuple[V2Ports, Path]) -> None:
    ports, folder = seed
    _, grpc_script = client_cells(ports.http, ports.grpc)
    assert _printed(run_client(grpc_script, cwd=folder)) == WORDS


def test_sse_wire_is_exactly_mlserver_framing(seed: tuple[V2Ports, Path]) -> None:
    ports, folder = seed
    request = json.loads((folder / "generate-request.json").read_text())
    url = f"{ports.base}/v2/models/text-model/generate_stream"
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", url, json=request) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            raw = b"".join(resp.iter_raw())
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    bodies = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(e.startswith(b"data: {") for e in events[:-1])
    assert [b["outputs"][0]["data"][0] for b in bodies] == WORDS
    assert len({b["id"] for b in bodies}) == 1  # every response carries the request's id
    assert bodies[0]["outputs"][0]["parameters"] == {"content_type": "str"}
    assert bodies[0]["parameters"]["headers"]["Ce-Specversion"] == "0.3"  # MLServer's CloudEvents


def test_metadata_readiness_and_unknown_model(seed: tuple[V2Ports, Path]) -> None:
    ports, _ = seed
    with httpx.Client(base_url=ports.base, timeout=10) as client:
        meta = client.get("/v2/models/text-model").json()
        assert meta["name"] == "text-model" and meta["platform"] == "mlserver"
        assert meta["versions"] == ["text-model/v1.2.3"]
        assert client.get("/v2/models/text-model/ready").status_code == 200
        missing = client.get("/v2/models/nope/ready")
        assert (missing.status_code, missing.json()) == (404, {"error": "Model nope not found"})
        assert client.post("/v2/models/nope/generate_stream", json={"inputs": []}).status_code == 404


def test_streams_run_concurrently_and_survive_a_vanished_client(seed: tuple[V2Ports, Path]) -> None:
    """Three SSE streams at once: one client hangs up after one word, the other two get all six."""
    ports, folder = seed
    request = json.loads((folder / "generate-request.json").read_text())
    url = f"{ports.base}/v2/models/text-model/generate_stream"
    results: dict[int, list[str]] = {}

    def consume(index: int, stop_after: int | None) -> None:
        words: list[str] = []
        with httpx.Client(timeout=30) as client, client.stream("POST", url, json=request) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    words.append(json.loads(line[6:])["outputs"][0]["data"][0])
                    if stop_after is not None and len(words) >= stop_after:
                        break
        results[index] = words

    threads = [threading.Thread(target=consume, args=(i, 1 if i == 0 else None)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results[0] == WORDS[:1]
    assert results[1] == WORDS and results[2] == WORDS
