"""The ray runtime: an endpoint of 2 instances as Ray actors on a local cluster this test starts.

The cluster is ``ray start --head --block`` bound to 127.0.0.1 in its own
process group; the test stops that group (only what it started) at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidistream.gateway.server import Gateway
from bidistream.platform.app import build_platform
from bidistream.platform.runtimes.ray import RayInstance, resources_for
from bidistream.sigv4 import CredentialStore
from tests.clients.platform_stack import FAST, SEED_PHRASES, Stack, create_endpoint, phrases_session, sync
from tests.support.waiting import eventually, scaled, waiter_config

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    ray_bin = Path(sys.executable).parent / "ray"
    assert ray_bin.exists(), "Ray is not installed: pip install -e '.[ray]'"
    port = _free_port()
    temp_dir = Path(f"/tmp/bidiray-{os.getpid()}-{port}")  # short: Ray's socket paths are length-limited
    # Ray 2.60 turns token auth on for local clusters with one token file per user
    # (~/.ray/auth_token): another cluster starting on this machine rewrites it and this one's
    # driver is refused (InvalidAuthToken). A loopback test cluster keeps auth off, for the head,
    # this process and the gateways it starts alike.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    log = (tmp_path_factory.mktemp("ray") / "head.log").open("wb")
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=4",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + scaled(45)
        while True:
            assert proc.poll() is None, f"ray start exited with {proc.returncode}; see {log.name}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=scaled(0.5)):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"Ray head did not come up in {scaled(45):g} s"
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=scaled(8))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_resource_table_is_keyed_by_instance_type_and_overridable() -> None:
    assert resources_for("ml.m5.large") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert resources_for("ml.g5.xlarge") == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert resources_for("ml.p4d.24xlarge")["num_gpus"] == 4.0
    assert resources_for("ml.g5.xlarge", {"ml.g5.xlarge": {"num_gpus": 0.5}}) == {
        "num_cpus": 1.0,
        "num_gpus": 0.5,
    }


async def test_two_instances_on_a_local_ray_cluster(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    platform = build_platform(tmp_path / "data", runtime="ray", ray_address=ray_cluster, manager_limits=FAST)
    await platform.start()
    gateway = Gateway(
        platform.router,
        control_plane=platform.control_plane,
        port=0,
        data_dir=tmp_path / "data",
        credentials=CredentialStore({}),
    )
    await gateway.start()
    try:
        stack = Stack(platform, gateway)
        monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca_path))
        sm = stack.boto()
        await sync(create_endpoint, sm, "on-ray", "bidistream/echo", variants=[("AllTraffic", 2, 1.0)])
        desc = await sync(sm.describe_endpoint, EndpointName="on-ray")
        assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
        instances = platform.manager.instances("on-ray")
        assert len(instances) == 2 and all(isinstance(i.handle, RayInstance) for i in instances)
        assert len({i.handle.base_url for i in instances if i.handle}) == 2
        client = await stack.bidi()
        sessions = await asyncio.gather(*(phrases_session(client, "on-ray") for _ in range(6)))
        assert all(s.error is None and s.texts() == SEED_PHRASES for s in sessions)
        # Both actors served: their model servers each logged a session.
        served = [await i.handle.last_log_lines(200) for i in instances if i.handle]
        assert all("model echo loaded" in text for text in served)
        await sync(sm.delete_endpoint, EndpointName="on-ray")
        await sync(
            sm.get_waiter("endpoint_deleted").wait, EndpointName="on-ray", WaiterConfig=waiter_config(60)
        )
        assert all(i.handle is not None and i.handle.exited() for i in instances)
    finally:
        await gateway.stop()
        await platform.stop()


@pytest.mark.timeout(150)
async def test_an_instance_the_cluster_cannot_place_fails_fast_with_the_reason(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cluster has 4 CPU / 0 GPU; ml.g5.2xlarge asks 4 CPU / 1 GPU.
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    platform = build_platform(tmp_path / "data", runtime="ray", ray_address=ray_cluster, manager_limits=FAST)
    await platform.start()
    gateway = Gateway(
        platform.router,
        control_plane=platform.control_plane,
        port=0,
        data_dir=tmp_path / "data",
        credentials=CredentialStore({}),
    )
    await gateway.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca_path))
        sm = Stack(platform, gateway).boto()
        await sync(sm.create_model, ModelName="big-model", PrimaryContainer={"Image": "bidistream/echo"})
        await sync(
            sm.create_endpoint_config,
            EndpointConfigName="big-config",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "big-model",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.g5.2xlarge",
                }
            ],
        )
        await sync(sm.create_endpoint, EndpointName="big", EndpointConfigName="big-config")

        async def failed() -> dict[str, object] | None:
            desc: dict[str, object] = await sync(sm.describe_endpoint, EndpointName="big")
            return desc if desc["EndpointStatus"] == "Failed" else None

        # Connecting to Ray takes 10-20 s on a loaded 2-vCPU machine; the placement timeout is 120 s.
        desc = await eventually(failed, timeout=60, interval=0.2)
        assert isinstance(desc, dict)
        reason = str(desc["FailureReason"])
        assert "asks 4 CPU / 1 GPU (ml.g5.2xlarge)" in reason, reason
        assert "the cluster has 4 CPU / 0 GPU on 1 node" in reason, reason
    finally:
        await gateway.stop()
        await platform.stop()


@pytest.mark.timeout(240)  # a cluster, two actors, a scale-out and a drain on a loaded machine
async def test_autoscaling_drives_ray_instances_out_and_in(
    ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bidistream.platform.autoscaler import AutoscalerLimits
    from bidistream.platform.manager import InstanceState
    from tests.clients.platform_stack import open_session

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    platform = build_platform(
        tmp_path / "data",
        runtime="ray",
        ray_address=ray_cluster,
        manager_limits=FAST,
        autoscaler_limits=AutoscalerLimits(evaluation_interval=0.3),
    )
    await platform.start()
    gateway = Gateway(
        platform.router,
        control_plane=platform.control_plane,
        port=0,
        data_dir=tmp_path / "data",
        credentials=CredentialStore({}),
    )
    await gateway.start()
    try:
        stack = Stack(platform, gateway)
        monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca_path))
        await sync(create_endpoint, stack.boto(), "rayscale", "bidistream/echo")
        aas = stack.boto("application-autoscaling")
        rid, dim = "endpoint/rayscale/variant/AllTraffic", "sagemaker:variant:DesiredInstanceCount"
        await sync(
            aas.register_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=rid,
            ScalableDimension=dim,
            MinCapacity=1,
            MaxCapacity=2,
        )
        await sync(
            aas.put_scaling_policy,
            PolicyName="sessions",
            ServiceNamespace="sagemaker",
            ResourceId=rid,
            ScalableDimension=dim,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 1.0,
                "ScaleOutCooldown": 0,
                "ScaleInCooldown": 1,
                "CustomizedMetricSpecification": {
                    "MetricName": "LiveSessionsPerInstance",
                    "Namespace": "bidistream",
                },
            },
        )

        def healthy() -> list[object]:
            return [i for i in platform.manager.instances("rayscale") if i.state is InstanceState.HEALTHY]

        client = await stack.bidi()
        sessions = [await open_session(client, "rayscale") for _ in range(2)]
        for s in sessions:
            await s.send("hi")
            await s.wait_for(1)
        await eventually(lambda: len(healthy()) == 2, timeout=60)
        assert all(isinstance(i.handle, RayInstance) for i in platform.manager.instances("rayscale"))
        for s in sessions:
            await s.close()
            assert s.error is None and s.texts() == ["hi"]
        await eventually(
            lambda: (
                len(healthy()) == 1
                and all(i.state is not InstanceState.DRAINING for i in platform.manager.instances("rayscale"))
            ),
            timeout=60,
        )
    finally:
        await gateway.stop()
        await platform.stop()


def test_gateway_command_on_ray_with_a_resources_file_stops_quietly(ray_cluster: str, tmp_path: Path) -> None:
    """`bidistream gateway --runtime ray --ray-resources FILE.json`, stopped by SIGTERM, says nothing odd.

    Ray's core worker used to print a `*** SIGTERM received` stack dump per signal, and ray.init off
    the main thread warned that it could not install a SIGTERM handler (issue 15.16).
    """
    from tests.boto import boto_client
    from tests.conftest import BIN, child_env, free_port, wait_for_port

    resources = tmp_path / "resources.json"
    resources.write_text('{"ml.m5.large": {"num_cpus": 0.5}}')
    port, data_dir = free_port(), tmp_path / "data"
    err = (tmp_path / "gateway.err").open("w+")
    gateway_cmd = [str(BIN / "bidistream"), "gateway", "--runtime", "ray"]
    gateway_cmd += ["--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(
        [
            str(BIN / "bidistream"),
            "gateway",
            "--runtime",
            "ray",
            "--ray-address",
            ray_cluster,
            "--ray-resources",
            str(resources),
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        env=child_env(RAY_USAGE_STATS_ENABLED="0"),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        wait_for_port(port, timeout=scaled(30), proc=proc)
        sm = boto_client("sagemaker", f"https://127.0.0.1:{port}", data_dir / "ca.pem")
        create_endpoint(sm, "on-ray", "bidistream/echo")
        assert sm.describe_endpoint(EndpointName="on-ray")["EndpointStatus"] == "InService"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err.seek(0)
    stderr = err.read()
    err.close()
    assert proc.returncode == 0, stderr
    assert "SIGTERM received" not in stderr and "SIGTERM handler is not set" not in stderr, stderr


def test_bad_ray_resources_file_is_refused_in_one_line(tmp_path: Path) -> None:
    from tests.conftest import BIN, child_env, free_port

    bad = tmp_path / "bad.json"
    bad.write_text('{"ml.m5.large": {"num_cpu": 1}}')
    cmd = [str(BIN / "bidistream"), "gateway", "--runtime", "ray"]
    cmd += ["--port", str(free_port()), "--data-dir", str(tmp_path / "d")]
    result = subprocess.run(
        [
            str(BIN / "bidistream"),
            "gateway",
            "--runtime",
            "ray",
            "--ray-resources",
            str(bad),
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode == 2
    assert "unknown key(s) num_cpu" in result.stderr and "Traceback" not in result.stderr
