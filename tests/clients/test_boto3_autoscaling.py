"""boto3's ``application-autoscaling`` client drives the platform's scaler, end to end.

A target-tracking policy on live sessions per instance: a load of bidi
sessions (the official AWS client) scales the variant out; the load ends and
it scales back in by draining, without a single session cut; the activities
say both; a gateway restart keeps the target and the policy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bidistream import metrics
from bidistream.platform.autoscaler import AutoscalerLimits
from bidistream.platform.manager import InstanceState
from tests.support.waiting import eventually

from .platform_stack import BidiSession, Stack, create_endpoint, open_session, platform_stack, sync

FAST_SCALER = AutoscalerLimits(evaluation_interval=0.3)
RID = "endpoint/scaly/variant/AllTraffic"
DIM = "sagemaker:variant:DesiredInstanceCount"
POLICY = {
    "TargetValue": 2.0,
    "CustomizedMetricSpecification": {
        "MetricName": "LiveSessionsPerInstance",
        "Namespace": "bidistream",
        "Statistic": "Average",
    },
    "ScaleOutCooldown": 0,
    "ScaleInCooldown": 1,
}


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with platform_stack(tmp_path / "data", autoscaler=FAST_SCALER) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


def _healthy(stack: Stack, endpoint: str = "scaly") -> list[Any]:
    return [i for i in stack.platform.manager.instances(endpoint) if i.state is InstanceState.HEALTHY]


def _draining(stack: Stack, endpoint: str = "scaly") -> list[Any]:
    return [i for i in stack.platform.manager.instances(endpoint) if i.state is InstanceState.DRAINING]


async def _talk(sess: BidiSession, text: str) -> None:
    before = len(sess.events)
    await sess.send(text)
    await sess.wait_for(before + 1)


def _gauge(name: str, **labels: str) -> float:
    """Sum of a gauge's samples with these labels, from a real scrape of /metrics."""
    total = 0.0
    for fam in text_string_to_metric_families(metrics.exposition()[0].decode()):
        for s in fam.samples:
            if s.name == name and labels.items() <= s.labels.items():
                total += s.value
    return total


def _closed_clean(endpoint: str) -> float:
    """Gateway sessions of ``endpoint`` closed with 1000, from a real scrape of /metrics."""
    text = metrics.exposition()[0].decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "bidistream_gateway_sessions_closed":
            for s in fam.samples:
                if (
                    s.labels["endpoint"] == endpoint
                    and s.labels["code"] == "1000"
                    and s.name.endswith("_total")
                ):
                    total += s.value
    return total


async def test_sessions_scale_out_then_drain_in_without_a_cut(stack: Stack, tmp_path: Path) -> None:
    sm = stack.boto()
    aas = stack.boto("application-autoscaling")
    await sync(create_endpoint, sm, "scaly", "bidistream/echo")
    await sync(
        aas.register_scalable_target,
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        MinCapacity=1,
        MaxCapacity=2,
    )
    put = await sync(
        aas.put_scaling_policy,
        PolicyName="sessions",
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=POLICY,
    )
    assert put["PolicyARN"].endswith(":policyName/sessions") and len(put["Alarms"]) == 2
    closed_before = _closed_clean("scaly")

    client = await stack.bidi()
    load = [await open_session(client, "scaly") for _ in range(4)]
    for n, sess in enumerate(load):
        await _talk(sess, f"load {n}")
    # 4 sessions on 1 instance against a target of 2 per instance: scale out to 2.
    await eventually(lambda: len(_healthy(stack)) == 2, timeout=30)

    async def in_service() -> bool:
        return (await sync(sm.describe_endpoint, EndpointName="scaly"))["EndpointStatus"] == "InService"

    await eventually(in_service, timeout=10)

    # A new session goes to the new, empty instance.
    assert _gauge("bidistream_instance_state", endpoint="scaly", state="healthy") == 2
    assert _gauge("bidistream_autoscaling_metric_value", endpoint="scaly", policy="sessions") > 0
    late = await open_session(client, "scaly")
    await _talk(late, "late")
    assert sorted(i.routable.live_sessions for i in _healthy(stack)) == [1, 4]

    # The load ends: three sessions finish, one stays on each instance (1 per instance < 2).
    for sess in load[1:]:
        await _talk(sess, "bye")
        await sess.close()
        assert sess.error is None
    await eventually(lambda: len(_draining(stack)) == 1, timeout=30)
    leaving = _draining(stack)[0]
    assert leaving.routable is not None and leaving.routable.live_sessions == 1
    assert len(_healthy(stack)) == 1
    assert _gauge("bidistream_instance_draining", endpoint="scaly", instance=leaving.instance_id) == 1

    # Both sessions still talk, the draining one included, and end cleanly.
    for sess in (load[0], late):
        await _talk(sess, "still here")
        await sess.close()
        assert sess.error is None
    assert load[0].texts() == ["load 0", "still here"]
    assert late.texts() == ["late", "still here"]
    for n, sess in enumerate(load[1:], 1):
        assert sess.texts() == [f"load {n}", "bye"]
    assert _closed_clean("scaly") - closed_before == 5

    # The drained instance stops once its last session is gone.
    await eventually(lambda: not _draining(stack) and len(_healthy(stack)) == 1, timeout=30)

    async def settled() -> list[dict[str, Any]] | None:
        got = await sync(aas.describe_scaling_activities, ServiceNamespace="sagemaker", ResourceId=RID)
        acts: list[dict[str, Any]] = got["ScalingActivities"]
        done = len(acts) == 2 and all(x["StatusCode"] == "Successful" for x in acts)
        return acts if done else None

    acts = await eventually(settled, timeout=15)
    assert isinstance(acts, list)
    scale_in, scale_out = acts  # newest first
    assert scale_out["Description"] == "Setting desired instance count to 2."
    assert "AlarmHigh" in scale_out["Cause"] and "LiveSessionsPerInstance" in scale_out["Cause"]
    assert scale_in["Description"] == "Setting desired instance count to 1."
    assert "AlarmLow" in scale_in["Cause"] and "drains" in scale_in["Details"]
    desc = await sync(sm.describe_endpoint, EndpointName="scaly")
    assert desc["ProductionVariants"][0]["DesiredInstanceCount"] == 1


async def test_restart_keeps_target_and_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    async with platform_stack(data, autoscaler=FAST_SCALER) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        await sync(create_endpoint, s.boto(), "scaly", "bidistream/echo")
        aas = s.boto("application-autoscaling")
        await sync(
            aas.register_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=RID,
            ScalableDimension=DIM,
            MinCapacity=1,
            MaxCapacity=3,
        )
        await sync(
            aas.put_scaling_policy,
            PolicyName="sessions",
            ServiceNamespace="sagemaker",
            ResourceId=RID,
            ScalableDimension=DIM,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=POLICY,
        )
    async with platform_stack(data, autoscaler=FAST_SCALER) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        aas = s.boto("application-autoscaling")
        targets = (await sync(aas.describe_scalable_targets, ServiceNamespace="sagemaker"))["ScalableTargets"]
        assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(RID, 1, 3)]
        policies = (await sync(aas.describe_scaling_policies, ServiceNamespace="sagemaker", ResourceId=RID))[
            "ScalingPolicies"
        ]
        assert [p["PolicyName"] for p in policies] == ["sessions"]
        assert policies[0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 2.0
        await sync(
            aas.delete_scaling_policy,
            PolicyName="sessions",
            ServiceNamespace="sagemaker",
            ResourceId=RID,
            ScalableDimension=DIM,
        )
        await sync(
            aas.deregister_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=RID,
            ScalableDimension=DIM,
        )
        assert (await sync(aas.describe_scalable_targets, ServiceNamespace="sagemaker"))[
            "ScalableTargets"
        ] == []


def _error(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str, str]:
    err = exc.value.response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"], err["Error"]["Message"]


async def test_validation_errors_as_boto3_raises_them(stack: Stack) -> None:
    aas = stack.boto("application-autoscaling")
    await sync(create_endpoint, stack.boto(), "scaly", "bidistream/echo")
    base = {"ServiceNamespace": "sagemaker", "ResourceId": RID, "ScalableDimension": DIM}
    cases: list[tuple[Any, dict[str, Any], str, str]] = [
        (
            aas.register_scalable_target,
            {**base, "MinCapacity": 3, "MaxCapacity": 2},
            "ValidationException",
            "cannot be greater than maximum capacity 2",
        ),
        (
            aas.register_scalable_target,
            {**base, "ServiceNamespace": "ecs", "MinCapacity": 1, "MaxCapacity": 2},
            "ValidationException",
            "Unsupported service namespace",
        ),
        (
            aas.register_scalable_target,
            {**base, "ResourceId": "endpoint/nope/variant/AllTraffic", "MinCapacity": 1, "MaxCapacity": 2},
            "ValidationException",
            "endpoint 'nope' does not exist",
        ),
        (
            aas.register_scalable_target,
            {**base, "ResourceId": "service/default/web", "MinCapacity": 1, "MaxCapacity": 2},
            "ValidationException",
            "Unsupported resource ID",
        ),
        (
            aas.register_scalable_target,
            base,
            "ValidationException",
            "MinCapacity and MaxCapacity are required",
        ),
        (
            aas.put_scaling_policy,
            {
                **base,
                "PolicyName": "p",
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": POLICY,
            },
            "ObjectNotFoundException",
            "No scalable target registered",
        ),
        (
            aas.delete_scaling_policy,
            {**base, "PolicyName": "p"},
            "ObjectNotFoundException",
            "No scaling policy",
        ),
        (aas.deregister_scalable_target, base, "ObjectNotFoundException", "No scalable target registered"),
    ]
    for call, params, code, text in cases:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await sync(call, **params)
        status, got, message = _error(info)
        assert (status, got) == (400, code), (params, message)
        assert text in message, message
    await sync(aas.register_scalable_target, **base, MinCapacity=1, MaxCapacity=2)
    bad_policies: list[tuple[dict[str, Any], str]] = [
        (
            {
                "TargetValue": 5.0,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"},
            },
            "does not apply to a SageMaker variant",
        ),
        (
            {
                "TargetValue": 5.0,
                "CustomizedMetricSpecification": {"MetricName": "CPU", "Namespace": "AWS/EC2"},
            },
            "not a metric bidistream measures",
        ),
        ({"TargetValue": 5.0}, "needs PredefinedMetricSpecification or CustomizedMetricSpecification"),
        (
            {
                "TargetValue": 0.0,
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
            },
            "Member must be greater than 0",
        ),
    ]
    for cfg, text in bad_policies:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await sync(
                aas.put_scaling_policy,
                **base,
                PolicyName="p",
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration=cfg,
            )
        status, got, message = _error(info)
        assert (status, got) == (400, "ValidationException") and text in message, message
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await sync(
            aas.put_scaling_policy,
            **base,
            PolicyName="p",
            PolicyType="StepScaling",
            StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity"},
        )
    assert _error(info)[1] == "ValidationException"
    # The predefined SageMaker metrics are accepted; an invalid token is its own error.
    for kind in (
        "SageMakerVariantInvocationsPerInstance",
        "SageMakerVariantConcurrentRequestsPerModelHighResolution",
    ):
        await sync(
            aas.put_scaling_policy,
            **base,
            PolicyName=kind,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 100.0,
                "PredefinedMetricSpecification": {"PredefinedMetricType": kind},
            },
        )
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await sync(aas.describe_scaling_policies, ServiceNamespace="sagemaker", NextToken="garbage")
    assert _error(info)[1] == "InvalidNextTokenException"
    page = await sync(aas.describe_scaling_policies, ServiceNamespace="sagemaker", MaxResults=1)
    assert len(page["ScalingPolicies"]) == 1 and page["NextToken"]


async def test_predefined_invocations_per_instance_scales_out_and_back(stack: Stack) -> None:
    sm, aas, rt = stack.boto(), stack.boto("application-autoscaling"), stack.boto("sagemaker-runtime")
    await sync(create_endpoint, sm, "scaly", "bidistream/echo")
    await sync(
        aas.register_scalable_target,
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        MinCapacity=1,
        MaxCapacity=2,
    )
    await sync(
        aas.put_scaling_policy,
        PolicyName="invocations",
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 60.0,  # per instance per minute: a burst of calls is far above it
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
            },
            "ScaleOutCooldown": 0,
            "ScaleInCooldown": 1,
        },
    )

    async def burst() -> bool:
        for _ in range(10):
            assert (await sync(rt.invoke_endpoint, EndpointName="scaly", Body=b"x"))["Body"].read() == b"x"
        return len(_healthy(stack)) == 2

    await eventually(burst, timeout=30)
    # No more calls: the rate falls to 0 and the variant goes back to its minimum.
    await eventually(lambda: len(_healthy(stack)) == 1 and not _draining(stack), timeout=30)
    acts = (await sync(aas.describe_scaling_activities, ServiceNamespace="sagemaker"))["ScalingActivities"]
    assert [a["Description"] for a in acts][:2] == [
        "Setting desired instance count to 1.",
        "Setting desired instance count to 2.",
    ]
    assert "SageMakerVariantInvocationsPerInstance" in acts[1]["Cause"]


async def test_speech_backlog_scraped_from_the_instances_scales_out(stack: Stack) -> None:
    sm, aas = stack.boto(), stack.boto("application-autoscaling")
    await sync(create_endpoint, sm, "scaly", "python:tests.fixtures.backlog:BacklogModel")
    await sync(
        aas.register_scalable_target,
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        MinCapacity=1,
        MaxCapacity=3,
    )
    await sync(
        aas.put_scaling_policy,
        PolicyName="backlog",
        ServiceNamespace="sagemaker",
        ResourceId=RID,
        ScalableDimension=DIM,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 1.0,
            "CustomizedMetricSpecification": {
                "MetricName": "SpeechBacklogSeconds",
                "Namespace": "bidistream",
            },
            "ScaleOutCooldown": 0,
            "ScaleInCooldown": 600,
        },
    )
    client = await stack.bidi()
    behind = await open_session(client, "scaly")
    await _talk(behind, "2.5")  # one session 2.5 s behind real time, against a target of 1 s
    await eventually(lambda: len(_healthy(stack)) == 3, timeout=30)  # ceil(1 x 2.5 / 1) = 3
    acts = (await sync(aas.describe_scaling_activities, ServiceNamespace="sagemaker"))["ScalingActivities"]
    assert "SpeechBacklogSeconds = 2.5 against target 1" in acts[0]["Cause"]
    await _talk(behind, "0")
    await behind.close()
    assert behind.error is None and behind.texts() == ["2.5", "0"]
