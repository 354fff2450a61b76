"""Failure and change with the official bidi client through the real gateway:
a crashed instance, a gateway restart, a scale-in with a live session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aws_sdk_sagemaker_runtime_http2.models import ModelStreamError

from bidistream.platform.manager import InstanceState
from bidistream.platform.runtimes.process import ProcessInstance
from tests.clients.platform_stack import (
    SEED_PHRASES,
    create_endpoint,
    open_session,
    phrases_session,
    platform_stack,
    sync,
)
from tests.support.waiting import eventually, scaled, waiter_config


async def test_killed_instance_gives_model_stream_error_then_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with platform_stack(tmp_path / "data") as stack:
        monkeypatch.setenv("SSL_CERT_FILE", str(stack.gateway.ca_path))
        sm = stack.boto()
        await sync(create_endpoint, sm, "fragile", "bidistream/echo")
        client = await stack.bidi()
        sess = await open_session(client, "fragile")
        await sess.send("before the crash")
        await sess.wait_for(1)
        (instance,) = stack.platform.manager.instances("fragile")
        assert isinstance(instance.handle, ProcessInstance)
        instance.handle.kill()  # SIGKILL mid-session
        async with asyncio.timeout(scaled(15)):
            await sess.reader
        assert isinstance(sess.error, ModelStreamError), sess.error
        assert sess.texts() == ["before the crash"]
        await eventually(
            lambda: instance.restarts == 1 and instance.state is InstanceState.HEALTHY, timeout=20
        )
        for _ in range(3):
            after = await phrases_session(client, "fragile")
            assert after.error is None and after.texts() == SEED_PHRASES
        desc = await sync(sm.describe_endpoint, EndpointName="fragile")
        assert desc["EndpointStatus"] == "InService"


async def test_gateway_restart_brings_endpoints_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    async with platform_stack(data) as stack:
        sm = stack.boto()
        await sync(create_endpoint, sm, "persist", "bidistream/echo", variants=[("A", 2, 1.0)])
        await sync(create_endpoint, sm, "words-ep", "bidistream/words")
        before = [
            await sync(sm.list_models),
            await sync(sm.list_endpoint_configs),
            await sync(sm.list_endpoints),
        ]
    async with platform_stack(data) as stack:
        monkeypatch.setenv("SSL_CERT_FILE", str(stack.gateway.ca_path))
        sm = stack.boto()
        waiter = sm.get_waiter("endpoint_in_service")
        await sync(waiter.wait, EndpointName="persist", WaiterConfig=waiter_config(60))
        await sync(waiter.wait, EndpointName="words-ep", WaiterConfig=waiter_config(60))
        after = [
            await sync(sm.list_models),
            await sync(sm.list_endpoint_configs),
            await sync(sm.list_endpoints),
        ]
        for b, a in zip(before, after, strict=True):
            b.pop("ResponseMetadata")
            a.pop("ResponseMetadata")
        assert after == before
        assert len(after[0]["Models"]) == 2 and len(after[2]["Endpoints"]) == 2
        desc = await sync(sm.describe_endpoint, EndpointName="persist")
        assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
        client = await stack.bidi()
        sess = await phrases_session(client, "persist")
        assert sess.error is None and sess.texts() == SEED_PHRASES


async def test_scale_in_lets_the_live_session_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with platform_stack(tmp_path / "data") as stack:
        monkeypatch.setenv("SSL_CERT_FILE", str(stack.gateway.ca_path))
        sm = stack.boto()
        await sync(create_endpoint, sm, "shrink", "bidistream/echo", variants=[("AllTraffic", 2, 1.0)])
        client = await stack.bidi()
        # Fewest-live-sessions routing puts one session on each instance.
        sessions = [await open_session(client, "shrink") for _ in range(2)]
        for n, sess in enumerate(sessions):
            await sess.send(f"hello {n}")
            await sess.wait_for(1)
        instances = stack.platform.manager.instances("shrink")
        assert sorted(i.routable.live_sessions for i in instances if i.routable) == [1, 1]
        await sync(
            sm.update_endpoint_weights_and_capacities,
            EndpointName="shrink",
            DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}],
        )
        await sync(
            sm.get_waiter("endpoint_in_service").wait, EndpointName="shrink", WaiterConfig={"Delay": 1}
        )
        desc = await sync(sm.describe_endpoint, EndpointName="shrink")
        assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 1
        (retired,) = [i for i in instances if i.state is InstanceState.DRAINING]

        def seen_draining_with_its_session() -> bool:
            # What `bidistream endpoints` prints: the live-session count is the coalesced
            # part, so this holds only after the publisher ran with the drain under way.
            rows = {r.instance_id: r for r in stack.platform.store.list_instances("shrink")}
            row = rows.get(retired.instance_id)
            return row is not None and row.state == "draining" and row.live_sessions == 1

        await eventually(seen_draining_with_its_session, timeout=10)
        assert retired.handle is not None and not retired.handle.exited()  # still draining
        for n, sess in enumerate(sessions):
            await sess.send(f"still here {n}")
            await sess.wait_for(2)
            await sess.close()
            assert sess.error is None and sess.texts() == [f"hello {n}", f"still here {n}"]
        assert retired.handle is not None
        await asyncio.wait_for(retired.handle.wait_exit(), scaled(15))
        assert retired.state is InstanceState.STOPPED
        after = await phrases_session(client, "shrink")
        assert after.error is None and after.texts() == SEED_PHRASES
