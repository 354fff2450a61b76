"""boto3's ``sagemaker`` client and the official bidi client against the real gateway + platform.

The seed's three scripts (create, invoke, clean up) re-expressed: only the
endpoint URL differs from what a SageMaker user runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import botocore.exceptions
import pytest

from tests.support.waiting import waiter_config

from .platform_stack import AKID, SEED_PHRASES, Stack, create_endpoint, phrases_session, platform_stack, sync


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with platform_stack(tmp_path / "data") as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


async def test_seed_scripts_create_invoke_clean_up(stack: Stack) -> None:
    sm = stack.boto()
    await sync(create_endpoint, sm, "seed-endpoint", "bidistream/echo")
    desc = await sync(sm.describe_endpoint, EndpointName="seed-endpoint")
    assert desc["EndpointStatus"] == "InService"
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert desc["EndpointArn"] == "arn:aws:sagemaker:us-east-1:000000000000:endpoint/seed-endpoint"

    client = await stack.bidi()
    sess = await phrases_session(client, "seed-endpoint")
    assert sess.error is None and sess.texts() == SEED_PHRASES
    assert sess.variant == "AllTraffic"

    # cleanup_sagemaker_resources.py
    await sync(sm.delete_endpoint, EndpointName="seed-endpoint")
    await sync(sm.delete_endpoint_config, EndpointConfigName="seed-endpoint-config")
    await sync(sm.delete_model, ModelName="seed-endpoint-model")
    waiter = sm.get_waiter("endpoint_deleted")
    await sync(waiter.wait, EndpointName="seed-endpoint", WaiterConfig=waiter_config(60))
    assert (await sync(sm.list_endpoints))["Endpoints"] == []
    assert (await sync(sm.list_models))["Models"] == []


async def test_failed_endpoint_fails_the_waiter_with_the_reason(stack: Stack) -> None:
    sm = stack.boto()
    with pytest.raises(botocore.exceptions.WaiterError) as info:
        await sync(
            create_endpoint, sm, "needs-docker", "123456789012.dkr.ecr.us-west-2.amazonaws.com/bidi:latest"
        )
    assert "Failed" in str(info.value)
    desc = await sync(sm.describe_endpoint, EndpointName="needs-docker")
    assert desc["EndpointStatus"] == "Failed" and "Docker engine" in desc["FailureReason"]


def _code(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str, str]:
    err = exc.value.response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"], err["Error"]["Message"]


async def test_every_validation_error_as_boto3_raises_it(stack: Stack) -> None:
    sm = stack.boto()
    raw = stack.boto(parameter_validation=False)  # so rules botocore checks first reach the server
    await sync(sm.create_model, ModelName="m", PrimaryContainer={"Image": "bidistream/echo"})
    pv = {"VariantName": "v", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
    await sync(sm.create_endpoint_config, EndpointConfigName="c", ProductionVariants=[pv])
    cases = [
        (
            sm.create_model,
            {"ModelName": "m", "PrimaryContainer": {"Image": "bidistream/echo"}},
            "already existing model",
        ),
        (
            sm.create_model,
            {"ModelName": "bad_name", "PrimaryContainer": {"Image": "bidistream/echo"}},
            "modelName",
        ),
        (
            sm.create_model,
            {"ModelName": "m2", "PrimaryContainer": {"Image": "bidistream/nope"}},
            "not a built-in",
        ),
        (
            sm.create_model,
            {"ModelName": "m2", "PrimaryContainer": {"Image": "no such thing"}},
            "not a valid image",
        ),
        (
            sm.create_endpoint_config,
            {"EndpointConfigName": "c", "ProductionVariants": [pv]},
            "already existing endpoint configuration",
        ),
        (
            sm.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [{**pv, "ModelName": "ghost"}]},
            "Could not find model",
        ),
        (
            raw.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [{**pv, "InitialInstanceCount": 0}]},
            "greater than or equal to 1",
        ),
        (
            raw.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [{**pv, "InitialVariantWeight": -1.0}]},
            "initialVariantWeight",
        ),
        (
            sm.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [{**pv, "InitialVariantWeight": 0.0}]},
            "sum of InitialVariantWeight",
        ),
        (
            sm.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [pv, pv]},
            "Duplicate VariantName",
        ),
        (
            sm.create_endpoint_config,
            {"EndpointConfigName": "c2", "ProductionVariants": [{**pv, "VariantName": "v.1"}]},
            "regular expression",
        ),
        (
            sm.create_endpoint,
            {"EndpointName": "e", "EndpointConfigName": "ghost"},
            "Could not find endpoint configuration",
        ),
        (
            sm.create_endpoint,
            {"EndpointName": "e" * 64, "EndpointConfigName": "c"},
            "length less than or equal to 63",
        ),
        (sm.describe_endpoint, {"EndpointName": "ghost"}, "Could not find endpoint"),
        (sm.delete_model, {"ModelName": "ghost"}, "Could not find model"),
        (sm.update_endpoint, {"EndpointName": "ghost", "EndpointConfigName": "c"}, "Could not find endpoint"),
    ]
    for method, params, needle in cases:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await sync(method, **params)
        status, code, message = _code(info)
        assert (status, code) == (400, "ValidationException"), (params, message)
        assert needle in message, (needle, message)
    # botocore itself refuses what its model forbids before anything is sent.
    with pytest.raises(botocore.exceptions.ParamValidationError):
        await sync(
            sm.create_endpoint_config,
            EndpointConfigName="c3",
            ProductionVariants=[{**pv, "InitialInstanceCount": 0}],
        )


async def test_byo_fastapi_container_as_a_command(stack: Stack, tmp_path: Path) -> None:
    app = tmp_path / "byo_app.py"
    app.write_text(
        """
import os
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

app = FastAPI()

@app.get("/ping")
def ping():
    return PlainTextResponse("")

@app.websocket("/invocations-bidirectional-stream")
async def stream(ws: WebSocket):
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await ws.send_text("fastapi:" + msg["text"])
            elif msg.get("bytes") is not None:
                await ws.send_bytes(msg["bytes"])
    except WebSocketDisconnect:
        return

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["SAGEMAKER_BIND_TO_PORT"]), log_level="info")
"""
    )
    sm = stack.boto()
    await sync(create_endpoint, sm, "byo", f"cmd:python {app}", env={"BYO_GREETING": "hi"})
    client = await stack.bidi()
    sess = await phrases_session(client, "byo", interactive=True)
    assert sess.error is None and sess.texts() == [f"fastapi:{p}" for p in SEED_PHRASES]
    logs = list((stack.platform.data_dir / "logs" / "byo").glob("*.log"))
    assert logs and "Uvicorn running" in logs[0].read_text()


async def test_two_variants_three_to_one_and_target_variant_pins(stack: Stack) -> None:
    sm = stack.boto()
    await sync(create_endpoint, sm, "ab", "bidistream/echo", variants=[("Blue", 1, 3.0), ("Green", 1, 1.0)])
    client = await stack.bidi()
    counts = {"Blue": 0, "Green": 0}
    for _ in range(10):  # 10 batches of 40 concurrent sessions = 400 sessions
        batch = await asyncio.gather(*(phrases_session(client, "ab") for _ in range(40)))
        for sess in batch:
            assert sess.error is None and sess.texts() == SEED_PHRASES
            assert sess.variant is not None
            counts[sess.variant] += 1
    assert abs(counts["Blue"] / 400 - 0.75) <= 0.05, counts
    assert abs(counts["Green"] / 400 - 0.25) <= 0.05, counts
    pinned = await asyncio.gather(*(phrases_session(client, "ab", target_variant="Green") for _ in range(8)))
    assert {s.variant for s in pinned} == {"Green"}
    rt = stack.boto("sagemaker-runtime")
    out = await sync(rt.invoke_endpoint, EndpointName="ab", Body=b"x", TargetVariant="Blue")
    assert out["InvokedProductionVariant"] == "Blue" and out["Body"].read() == b"x"


async def test_control_plane_verifies_sigv4_when_credentials_are_configured(tmp_path: Path) -> None:
    async with platform_stack(tmp_path / "signed", signed=True) as signed:
        sm = signed.boto()
        await sync(sm.create_model, ModelName="signed", PrimaryContainer={"Image": "bidistream/words"})
        assert [m["ModelName"] for m in (await sync(sm.list_models))["Models"]] == ["signed"]
        forged = signed.boto()
        forged._request_signer._credentials = forged._request_signer._credentials.__class__(AKID, "wrong")
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await sync(forged.list_models)
        # a known key with a wrong signature is AWS's InvalidSignatureException (issue 15.12) ...
        assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
        stranger = signed.boto()
        stranger._request_signer._credentials = stranger._request_signer._credentials.__class__(
            "AKIDUNKNOWN", "whatever"
        )
        with pytest.raises(botocore.exceptions.ClientError) as info2:
            await sync(stranger.list_models)
        # ... and a key nobody issued is UnrecognizedClientException
        assert info2.value.response["Error"]["Code"] == "UnrecognizedClientException"


async def test_environment_sets_a_builtin_models_options(stack: Stack) -> None:
    """PrimaryContainer.Environment's BIDISTREAM_OPTION_* keys are the model's --set options (15.4)."""
    sm = stack.boto()
    await sync(create_endpoint, sm, "slow-words", "bidistream/words", env={"BIDISTREAM_OPTION_DELAY": "0.2"})
    client = await stack.bidi()
    started = asyncio.get_running_loop().time()
    sess = await phrases_session(client, "slow-words")
    elapsed = asyncio.get_running_loop().time() - started
    assert sess.error is None
    words = sum(len(p.split()) for p in SEED_PHRASES)
    assert sess.texts() == [w for p in SEED_PHRASES for w in p.split()]
    assert elapsed >= 0.2 * (words - 1), "the delay option reached the instance"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BIDISTREAM_OPTION_DELAI": "0.2"}, "unknown primaryContainer.environment option 'delai'"),
        ({"BIDISTREAM_OPTION_DELAY": "-1"}, "delay must be >= 0 seconds"),
    ],
)
async def test_bad_model_option_in_environment_is_a_validation_error(
    stack: Stack, env: dict[str, str], needle: str
) -> None:
    sm = stack.boto()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await sync(
            sm.create_model,
            ModelName="bad-options",
            PrimaryContainer={"Image": "bidistream/words", "Environment": env},
            ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
        )
    err = info.value.response["Error"]
    assert err["Code"] == "ValidationException" and needle in err["Message"], err
    assert (await sync(sm.list_models))["Models"] == []  # nothing stored
    # other keys pass through untouched: a container's own variables are not model options
    await sync(
        sm.create_model,
        ModelName="passes",
        PrimaryContainer={"Image": "bidistream/words", "Environment": {"MY_SETTING": "1"}},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
    )


async def test_invoking_a_failed_endpoint_is_a_400_that_boto3_does_not_retry(stack: Stack) -> None:
    """A Failed endpoint is permanent until the user acts: 503 would be retried and mislead (15.12)."""
    sm = stack.boto()
    with pytest.raises(botocore.exceptions.WaiterError):
        await sync(create_endpoint, sm, "broken", "123456789012.dkr.ecr.us-west-2.amazonaws.com/bidi:latest")
    rt = stack.boto("sagemaker-runtime")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await sync(rt.invoke_endpoint, EndpointName="broken", Body=b"x")
    err = info.value.response
    assert (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationError", 400)
    assert (
        "Endpoint broken is Failed" in err["Error"]["Message"] and "Docker engine" in err["Error"]["Message"]
    )
    assert err["ResponseMetadata"].get("RetryAttempts", 0) == 0
