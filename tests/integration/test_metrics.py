"""Metrics after known traffic, scraped over the wire and read with prometheus-client's parser.

Real clients make the traffic (the official bidi client, boto3's runtime
client); the gateway's ``/metrics`` is fetched over TLS and the instance's over
plain HTTP, both parsed by ``prometheus_client.parser``.  Counts are compared
as deltas around the traffic, with endpoint names no other test uses, so the
process-wide registry may hold anything else.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aws_sdk_sagemaker_runtime_http2.models import InvokeEndpointWithBidirectionalStreamInput
from prometheus_client.parser import text_string_to_metric_families

from bidistream import metrics
from bidistream.container.limits import ServerLimits
from bidistream.container.server import ModelServer
from bidistream.gateway.server import Gateway
from bidistream.metrics import InstanceIdentity
from bidistream.models.echo import EchoModel
from bidistream.routing import StaticRouter
from bidistream.sigv4 import CredentialStore
from tests.boto import boto_client
from tests.support.aws import SEED_PHRASES, official_client, payloads, session, text_part
from tests.support.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class Metered:
    gateway: Gateway
    server: ModelServer
    endpoint: str

    async def gateway_metrics(self) -> Samples:
        ctx = ssl.create_default_context(cafile=str(self.gateway.ca_path))
        async with aiohttp.ClientSession() as http, http.get(f"{self.gateway.url}/metrics", ssl=ctx) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            return parse(await resp.text())

    async def instance_metrics(self) -> Samples:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.server.port}/metrics") as resp,
        ):
            assert resp.status == 200
            return parse(await resp.text())


@asynccontextmanager
async def metered(tmp_path: Path, endpoint: str, **limits: int) -> AsyncIterator[Metered]:
    identity = InstanceIdentity(endpoint, "AllTraffic", f"{endpoint}-1")
    server = ModelServer(EchoModel(), port=0, limits=ServerLimits(**limits), identity=identity)  # type: ignore[arg-type]
    await server.start()
    await server.wait_loaded(timeout=30)
    gw = Gateway(
        StaticRouter({endpoint: f"http://127.0.0.1:{server.port}"}),
        port=0,
        data_dir=tmp_path / "gw",
        credentials=CredentialStore({}),
    )
    await gw.start()
    try:
        yield Metered(gw, server, endpoint)
    finally:
        await gw.stop()
        await server.stop(drain_timeout=0)


async def test_known_traffic_gives_exact_counts_consistent_histograms_and_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with metered(tmp_path, "metered") as m:
        monkeypatch.setenv("SSL_CERT_FILE", str(m.gateway.ca_path))
        before_gw, before_inst = await m.gateway_metrics(), await m.instance_metrics()
        client = await official_client(m.gateway)
        sessions = 3
        for _ in range(sessions):
            events = await session(client, "metered", [text_part(p) for p in SEED_PHRASES])
            assert payloads(events) == [(p.encode(), "UTF8", "COMPLETE") for p in SEED_PHRASES]
        rt = boto_client("sagemaker-runtime", m.gateway.url, m.gateway.ca_path)
        answer = await asyncio.to_thread(rt.invoke_endpoint, EndpointName="metered", Body=b"hello")
        assert answer["Body"].read() == b"hello"

        loc = {"endpoint": "metered", "variant": "AllTraffic", "instance": "metered-1"}
        phrase_bytes = sum(len(p.encode()) for p in SEED_PHRASES) * sessions
        frames = len(SEED_PHRASES) * sessions

        async def settled() -> Samples | None:
            got = await m.gateway_metrics()
            gone = value(got, "bidistream_gateway_sessions_active", **loc) == 0
            return got if gone else None

        after = await eventually(settled, timeout=5)
        assert isinstance(after, dict)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before_gw, name, **labels)

        assert delta("bidistream_gateway_sessions_opened_total", **loc) == sessions
        # No meter left behind: each session's meter was closed exactly once.
        assert not [mt for mt in metrics.GATEWAY.live if mt.location[0] == "metered"]
        assert delta("bidistream_gateway_sessions_closed_total", **loc, code="1000", error="") == sessions
        assert delta("bidistream_gateway_frames_total", **loc, direction="in") == frames
        assert delta("bidistream_gateway_frames_total", **loc, direction="out") == frames
        assert delta("bidistream_gateway_bytes_total", **loc, direction="in") == phrase_bytes
        assert delta("bidistream_gateway_bytes_total", **loc, direction="out") == phrase_bytes
        # Every session and the one InvokeEndpoint went where the router sent them.
        assert delta("bidistream_router_decisions_total", **loc, decision="routed") == sessions + 1
        assert delta("bidistream_invocations_total", **loc, operation="InvokeEndpoint", status="200") == 1
        for hist in (
            "bidistream_gateway_session_duration_seconds",
            "bidistream_gateway_time_to_first_output_seconds",
            "bidistream_invocation_duration_seconds",
        ):
            _consistent(after, hist, loc)
        assert delta("bidistream_gateway_session_duration_seconds_count", **loc) == sessions
        assert delta("bidistream_gateway_time_to_first_output_seconds_count", **loc) == sessions
        assert delta("bidistream_gateway_session_duration_seconds_sum", **loc) > 0

        async def instance_settled() -> Samples | None:
            got = await m.instance_metrics()
            return got if value(got, "bidistream_container_sessions_active", **loc) == 0 else None

        inst = await eventually(instance_settled, timeout=5)
        assert isinstance(inst, dict)

        def idelta(name: str, **labels: str) -> float:
            return value(inst, name, **labels) - value(before_inst, name, **labels)

        assert idelta("bidistream_container_sessions_opened_total", **loc) == sessions
        assert idelta("bidistream_container_sessions_closed_total", **loc, code="1000", error="") == sessions
        assert not [mt for mt in metrics.CONTAINER.live if mt.location[0] == "metered"]
        assert idelta("bidistream_container_frames_total", **loc, direction="in") == frames
        assert idelta("bidistream_container_bytes_total", **loc, direction="out") == phrase_bytes
        assert idelta("bidistream_container_invocations_total", **loc, status="200") == 1
        _consistent(inst, "bidistream_container_time_to_first_output_seconds", loc)

    # One line per session end on each side, with the same session id.
    ends = [
        r
        for r in caplog.records
        if r.getMessage() == "session end" and r.__dict__.get("endpoint") == "metered"
    ]
    gw_ids = {r.__dict__["session"] for r in ends if r.name == "bidistream.gateway.bridge"}
    inst_ids = {r.__dict__["session"] for r in ends if r.name == "bidistream.container"}
    assert len(gw_ids) == sessions and gw_ids == inst_ids
    line = next(r for r in ends if r.name == "bidistream.gateway.bridge")
    assert line.__dict__["frames_in"] == len(SEED_PHRASES) and line.__dict__["code"] == 1000
    assert line.__dict__["instance"] == "metered-1" and line.__dict__["variant"] == "AllTraffic"
    invocations = [
        r
        for r in caplog.records
        if r.getMessage() == "invocation" and r.__dict__.get("endpoint") == "metered"
    ]
    assert {r.name for r in invocations} == {"bidistream.gateway.runtime", "bidistream.container"}
    gw_inv = next(r for r in invocations if r.name == "bidistream.gateway.runtime")
    inst_inv = next(r for r in invocations if r.name == "bidistream.container")
    assert gw_inv.__dict__["request"] == inst_inv.__dict__["request"]


def _consistent(samples: Samples, name: str, labels: dict[str, str]) -> None:
    """Buckets never decrease, +Inf equals the count, the sum is not negative."""
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples.items()
        if n == f"{name}_bucket" and set(labels.items()) <= ls
    )
    assert buckets, name
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), (name, buckets)
    assert buckets[-1][0] == float("inf")
    assert buckets[-1][1] == value(samples, f"{name}_count", **labels)
    assert value(samples, f"{name}_sum", **labels) >= 0


async def test_full_instance_refuses_before_the_upgrade_and_busy_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aws_sdk_sagemaker_runtime_http2.models import ServiceUnavailableError

    from tests.clients.test_aws_errors import open_failing

    async with metered(tmp_path, "crowded", max_sessions=1) as m:
        monkeypatch.setenv("SSL_CERT_FILE", str(m.gateway.ca_path))
        before_gw, before_inst = await m.gateway_metrics(), await m.instance_metrics()
        client = await official_client(m.gateway)
        holder = await asyncio.wait_for(
            client.invoke_endpoint_with_bidirectional_stream(
                InvokeEndpointWithBidirectionalStreamInput(endpoint_name="crowded")
            ),
            15,
        )
        await eventually(lambda: m.server.live_sessions == 1, timeout=5)
        err = await open_failing(client, endpoint_name="crowded")
        assert isinstance(err, ServiceUnavailableError)
        assert "endpoint crowded is at capacity: all 1 instance refused the session as full" in str(
            err.message
        )
        gw, inst = await m.gateway_metrics(), await m.instance_metrics()
        loc = {"endpoint": "crowded", "variant": "AllTraffic", "instance": "crowded-1"}
        d = value(gw, "bidistream_router_decisions_total", **loc, decision="retry_full") - value(
            before_gw, "bidistream_router_decisions_total", **loc, decision="retry_full"
        )
        assert d == 1
        busy = value(gw, "bidistream_router_decisions_total", endpoint="crowded", decision="busy") - value(
            before_gw, "bidistream_router_decisions_total", endpoint="crowded", decision="busy"
        )
        assert busy == 1
        refused = value(inst, "bidistream_container_refusals_total", **loc, reason="full") - value(
            before_inst, "bidistream_container_refusals_total", **loc, reason="full"
        )
        assert refused == 1
        # The refusal opened no session on the instance: only the holder counts.
        assert value(inst, "bidistream_container_sessions_active", **loc) == 1
        await asyncio.wait_for(holder.input_stream.close(), 15)


async def test_invoke_on_an_endpoint_with_no_room_is_503_naming_capacity(tmp_path: Path) -> None:
    import botocore.exceptions

    from tests.fixtures.models import SlowLoadModel

    # An instance still loading answers /invocations with 503: for the router it has no room.
    server = ModelServer(
        SlowLoadModel(delay=60), port=0, identity=InstanceIdentity("loading", "AllTraffic", "l-1")
    )
    await server.start()
    gw = Gateway(
        StaticRouter({"loading": f"http://127.0.0.1:{server.port}"}),
        port=0,
        data_dir=tmp_path / "gw",
        credentials=CredentialStore({}),
    )
    await gw.start()
    try:
        rt = boto_client("sagemaker-runtime", gw.url, gw.ca_path)
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await asyncio.to_thread(rt.invoke_endpoint, EndpointName="loading", Body=b"x")
        err = info.value.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert err["Error"]["Code"] == "ServiceUnavailable"
        assert "endpoint loading is at capacity: all 1 instance refused" in err["Error"]["Message"]
        got = parse(await asyncio.to_thread(_fetch, f"{gw.url}/metrics", gw.ca_path))
        # boto3 may retry a 503 once: every request it sent was one busy decision and one 503.
        busy = value(got, "bidistream_router_decisions_total", endpoint="loading", decision="busy")
        assert busy >= 1
        assert value(got, "bidistream_invocations_total", endpoint="loading", status="503") == busy
    finally:
        await gw.stop()
        await server.stop(drain_timeout=0)


def _fetch(url: str, ca: Path) -> str:
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return str(resp.read().decode())


async def test_websocket_front_door_sessions_are_counted_the_same_way(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect

    async with metered(tmp_path, "wsdoor") as m:
        before = await m.gateway_metrics()
        ctx = ssl.create_default_context(cafile=str(m.gateway.ca_path))
        async with connect(f"wss://127.0.0.1:{m.gateway.port}/endpoints/wsdoor/ws", ssl=ctx) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\x02")
            assert await ws.recv() == b"\x00\x01\x02"
            await ws.close()
        assert ws.close_code == 1000
        loc = {"endpoint": "wsdoor", "variant": "AllTraffic", "instance": "wsdoor-1"}

        async def closed() -> Samples | None:
            got = await m.gateway_metrics()
            done = value(got, "bidistream_gateway_sessions_closed_total", **loc, code="1000") - value(
                before, "bidistream_gateway_sessions_closed_total", **loc, code="1000"
            )
            return got if done == 1 else None

        after = await eventually(closed, timeout=5)
        assert isinstance(after, dict)
        for direction, size in (("in", 8), ("out", 8)):
            d = value(after, "bidistream_gateway_bytes_total", **loc, direction=direction) - value(
                before, "bidistream_gateway_bytes_total", **loc, direction=direction
            )
            assert d == size
        assert (
            value(after, "bidistream_gateway_frames_total", **loc, direction="out")
            - value(before, "bidistream_gateway_frames_total", **loc, direction="out")
            == 2
        )
