"""The scaler's decision rules and the model-driven validator, without sockets or clocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream import metrics
from bidistream.platform.autoscaler import decide
from bidistream.platform.autoscaling import TargetPolicy
from bidistream.platform.awsjson import ModelValidationError, service_model, shape_output, validate_input


def policy(target: float = 2.0, out: float = 0.0, inn: float = 0.0, disable_in: bool = False) -> TargetPolicy:
    return TargetPolicy("p", "arn:p", "sessions_per_instance", target, out, inn, disable_in)


def test_scale_out_to_bring_the_metric_to_target() -> None:
    d = decide(1, 1, 4, [(policy(), 5.0)], now=100, last_out=0, last_change=0)
    assert (d.desired, d.direction) == (3, "out")  # ceil(1 * 5 / 2)
    assert "AlarmHigh" in d.cause and "LiveSessionsPerInstance = 5" in d.cause


def test_bounds_clamp_and_restore() -> None:
    assert decide(1, 1, 2, [(policy(), 50.0)], 100, 0, 0).desired == 2
    assert decide(1, 2, 4, [], 100, 0, 0).direction == "out"
    assert decide(5, 1, 4, [], 100, 0, 0).desired == 4


def test_cooldowns_and_disable_scale_in() -> None:
    assert decide(1, 1, 4, [(policy(out=60), 5.0)], now=100, last_out=90, last_change=90).direction == ""
    assert decide(3, 1, 4, [(policy(inn=60), 0.5)], now=100, last_out=0, last_change=90).direction == ""
    assert decide(3, 1, 4, [(policy(inn=60), 0.5)], now=200, last_out=0, last_change=90).direction == "in"
    assert decide(3, 1, 4, [(policy(disable_in=True), 0.5)], 200, 0, 0).direction == ""


def test_scale_in_only_when_every_policy_agrees() -> None:
    calm, busy = (policy(), 0.5), (TargetPolicy("q", "arn:q", "backlog_seconds", 1.0, 0, 0, False), 1.0)
    assert decide(2, 1, 4, [calm, busy], 100, 0, 0).direction == ""
    assert decide(2, 1, 4, [calm], 100, 0, 0).desired == 1


@given(
    current=st.integers(1, 20),
    lo=st.integers(1, 5),
    span=st.integers(0, 20),
    value=st.floats(0, 1000, allow_nan=False),
    target=st.floats(0.1, 100, allow_nan=False),
)
def test_desired_always_within_bounds(current: int, lo: int, span: int, value: float, target: float) -> None:
    hi = lo + span
    d = decide(current, lo, hi, [(policy(target), value)], 1e9, 0, 0)
    assert lo <= d.desired <= hi or (d.direction == "" and d.desired == current)


def test_validation_from_botocores_model() -> None:
    op = service_model("application-autoscaling").operation_model("RegisterScalableTarget")
    validate_input(
        op,
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": "endpoint/a/variant/b",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        },
    )
    bad = [
        (
            {"ServiceNamespace": "sagemaker", "ResourceId": "x"},
            "'scalableDimension' failed to satisfy constraint: Member must not be null",
        ),
        (
            {
                "ServiceNamespace": "nope",
                "ResourceId": "x",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            },
            "Member must satisfy enum value set",
        ),
        (
            {
                "ServiceNamespace": "sagemaker",
                "ResourceId": "",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            },
            "Member must have length greater than or equal to 1",
        ),
        (
            {
                "ServiceNamespace": "sagemaker",
                "ResourceId": "x",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                "MinCapacity": "1",
            },
            "'minCapacity' failed to satisfy constraint: Member must be of type integer",
        ),
    ]
    for req, text in bad:
        with pytest.raises(ModelValidationError) as info:
            validate_input(op, req)
        assert text in info.value.message and info.value.message.startswith("1 validation error detected")


def test_output_keeps_only_model_members() -> None:
    op = service_model("application-autoscaling").operation_model("PutScalingPolicy")
    assert shape_output(op.output_shape, {"PolicyARN": "a", "_id": "x", "Extra": 1}) == {"PolicyARN": "a"}


def test_meter_counts_once_and_flushes_live_sessions() -> None:
    fam = metrics.GATEWAY
    m = fam.open("unit-ep", "v", "i")
    assert m is not None
    m.inbound(10)
    m.outbound(3)
    m.outbound(4)
    fam.flush_live()
    frames_out = fam.frames.labels("unit-ep", "v", "i", "out")._value.get()
    assert frames_out == 2
    m.close(1000)
    m.close(1000)
    assert fam.closed.labels("unit-ep", "v", "i", "1000", "")._value.get() == 1
    assert fam.active.labels("unit-ep", "v", "i")._value.get() == 0
    assert fam.bytes.labels("unit-ep", "v", "i", "out")._value.get() == 7
    metrics.set_enabled(False)
    try:
        assert fam.open("unit-ep", "v", "i") is None
    finally:
        metrics.set_enabled(True)
