"""The endpoint manager with real instance processes (no gateway): lifecycle, health, restart, drain."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

from bidistream.platform.manager import InstanceState
from bidistream.platform.runtimes.process import ProcessInstance
from tests.support.waiting import eventually, scaled

from .platform_helpers import call, create_endpoint, echo_once, started, wait_status


async def test_create_describe_invoke_delete(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(platform, "echo")
        assert call(platform, "DescribeEndpoint", EndpointName="echo")["EndpointStatus"] == "Creating"
        desc = await wait_status(platform, "echo", "InService")
        assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 1
        target = platform.router.candidates("echo")[0]
        assert await echo_once(target.base_url, "hello") == "hello"
        logs = list((tmp_path / "logs" / "echo").glob("*.log"))
        assert logs and "bidistream starts instance" in logs[0].read_text()
        call(platform, "DeleteEndpoint", EndpointName="echo")
        await eventually(lambda: platform.store.get_endpoint("echo") is None, timeout=15)
        async with aiohttp.ClientSession() as http:
            try:
                await http.get(f"{target.base_url}/ping", timeout=aiohttp.ClientTimeout(total=scaled(1)))
                raise AssertionError("instance still answers after delete")
            except aiohttp.ClientError:
                pass
    finally:
        await platform.stop()


async def test_instance_that_dies_fails_the_endpoint_with_its_last_log_lines(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(
            platform, "dies", image="cmd:python -c \"print('boom: no weights here'); raise SystemExit(3)\""
        )
        desc = await wait_status(platform, "dies", "Failed")
        assert "exited with code 3" in desc["FailureReason"]
        assert "boom: no weights here" in desc["FailureReason"]
        create_endpoint(platform, "oci", image="registry.example/team/streamer:1.0")
        desc = await wait_status(platform, "oci", "Failed")
        assert "Docker engine" in desc["FailureReason"]
    finally:
        await platform.stop()


async def test_crashed_instance_is_restarted_and_serves_again(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(platform, "crashy")
        await wait_status(platform, "crashy", "InService")
        (instance,) = platform.manager.instances("crashy")
        handle = instance.handle
        assert isinstance(handle, ProcessInstance)
        old_url = handle.base_url
        handle.kill()
        await eventually(
            lambda: instance.restarts == 1 and instance.state is InstanceState.HEALTHY, timeout=20
        )
        target = platform.router.candidates("crashy")[0]
        assert target.base_url != old_url
        assert await echo_once(target.base_url, "again") == "again"
    finally:
        await platform.stop()


async def test_scale_in_drains_the_live_session_first(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(platform, "scale", variants=[("AllTraffic", 2, 1.0)])
        await wait_status(platform, "scale", "InService")
        instances = platform.manager.instances("scale")
        assert len(instances) == 2
        async with aiohttp.ClientSession() as http:
            sockets = []
            for inst in instances:
                assert inst.routable is not None
                ws = await http.ws_connect(
                    inst.routable.base_url.replace("http", "ws") + "/invocations-bidirectional-stream"
                )
                platform.router.session_started(inst.routable)
                sockets.append((inst, inst.routable, ws))
            call(
                platform,
                "UpdateEndpointWeightsAndCapacities",
                EndpointName="scale",
                DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}],
            )
            desc = await wait_status(platform, "scale", "InService")
            assert desc["ProductionVariants"][0]["DesiredInstanceCount"] == 1
            retired = [s for s in sockets if s[0].state is InstanceState.DRAINING]
            assert len(retired) == 1
            inst, target, ws = retired[0]
            assert all(
                t.variant == "AllTraffic" and t is not target for t in platform.router.candidates("scale")
            )
            # The live view shows it draining with its session (the coalesced count was
            # published after the cut-over)…
            await eventually(
                lambda: (
                    [
                        (r.state, r.live_sessions)
                        for r in platform.store.list_instances("scale")
                        if r.instance_id == inst.instance_id
                    ]
                    == [("draining", 1)]
                ),
                timeout=10,
            )
            # …the live session on the removed instance still works…
            await ws.send_str("still here")
            assert (await asyncio.wait_for(ws.receive(), scaled(5))).data == "still here"
            assert inst.handle is not None and not inst.handle.exited()
            await ws.close()
            platform.router.session_ended(target)
            # …and only once it ended is the instance stopped.
            assert inst.handle is not None
            code = await asyncio.wait_for(inst.handle.wait_exit(), scaled(15))
            assert code is not None
            assert inst.state is InstanceState.STOPPED
            for _, _, other in sockets:
                await other.close()
    finally:
        await platform.stop()


async def test_restart_brings_endpoints_back_without_losing_or_duplicating(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(platform, "keep")
        create_endpoint(platform, "keep2", variants=[("A", 1, 1.0), ("B", 1, 1.0)])
        await wait_status(platform, "keep", "InService")
        await wait_status(platform, "keep2", "InService")
        before = {op: call(platform, op) for op in ("ListModels", "ListEndpointConfigs", "ListEndpoints")}
        pids = {
            i.handle.pid for i in platform.manager.instances("keep2") if isinstance(i.handle, ProcessInstance)
        }
    finally:
        await platform.stop()
    for pid in pids:  # the old instances are gone
        try:
            os.kill(pid, 0)
            raise AssertionError(f"instance {pid} survived the gateway stop")
        except ProcessLookupError:
            pass
    platform = await started(tmp_path)
    try:
        assert call(platform, "DescribeEndpoint", EndpointName="keep")["EndpointStatus"] in (
            "SystemUpdating",
            "InService",
        )
        await wait_status(platform, "keep", "InService")
        desc = await wait_status(platform, "keep2", "InService")
        assert [v["CurrentInstanceCount"] for v in desc["ProductionVariants"]] == [1, 1]
        after = {op: call(platform, op) for op in before}
        assert after == before
        assert await echo_once(platform.router.candidates("keep2", "B")[0].base_url, "back") == "back"
    finally:
        await platform.stop()


def test_python_executable_is_the_venv() -> None:
    assert Path(sys.executable).exists()


async def test_update_endpoint_swaps_the_model_and_a_failed_update_keeps_it(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    try:
        create_endpoint(platform, "swap")
        await wait_status(platform, "swap", "InService")
        (old,) = platform.manager.instances("swap")
        call(platform, "CreateModel", ModelName="words-model", PrimaryContainer={"Image": "bidistream/words"})
        variant = {"VariantName": "AllTraffic", "ModelName": "words-model", "InitialInstanceCount": 1}
        call(
            platform, "CreateEndpointConfig", EndpointConfigName="words-config", ProductionVariants=[variant]
        )
        call(platform, "UpdateEndpoint", EndpointName="swap", EndpointConfigName="words-config")
        assert call(platform, "DescribeEndpoint", EndpointName="swap")["EndpointStatus"] == "Updating"
        desc = await wait_status(platform, "swap", "InService")
        assert desc["EndpointConfigName"] == "words-config"
        assert desc["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == "bidistream/words"
        assert old.handle is not None
        await asyncio.wait_for(old.handle.wait_exit(), scaled(15))  # no live session: retired at once
        (new,) = platform.manager.instances("swap")
        assert new is not old and platform.router.candidates("swap")[0] is new.routable
        # An update whose instances cannot start leaves the endpoint on what it ran.
        call(
            platform,
            "CreateModel",
            ModelName="broken",
            PrimaryContainer={"Image": "cmd:python -c 'raise SystemExit(7)'"},
        )
        broken = {"VariantName": "AllTraffic", "ModelName": "broken", "InitialInstanceCount": 1}
        call(
            platform, "CreateEndpointConfig", EndpointConfigName="broken-config", ProductionVariants=[broken]
        )
        call(platform, "UpdateEndpoint", EndpointName="swap", EndpointConfigName="broken-config")
        desc = await wait_status(platform, "swap", "InService", timeout=20)
        assert "Update failed" in desc["FailureReason"] and "exited with code 7" in desc["FailureReason"]
        assert desc["EndpointConfigName"] == "words-config"
        assert desc["ProductionVariants"][0]["DeployedImages"][0]["SpecifiedImage"] == "bidistream/words"
        assert platform.manager.instances("swap") == [new] and new.state is InstanceState.HEALTHY
    finally:
        await platform.stop()
