"""boto3's ``sagemaker-runtime`` client, unmodified, against the gateway over HTTP/1.1 + TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError

from bidistream.model import Model, Request, Response
from bidistream.models.echo import EchoModel
from bidistream.models.words import WordsModel
from tests.boto import boto_client
from tests.support.aws import AKID, SECRET, Stack, gateway_stack


class TokensModel(Model):
    """Streams its answer in pieces, like an LLM behind InvokeEndpointWithResponseStream."""

    name = "tokens"

    async def invoke(self, request: Request) -> Response:
        words = request.text().split()
        fail = request.custom_attributes == "fail"

        async def body() -> AsyncIterator[bytes]:
            for w in words:
                yield (w + " ").encode()
                await asyncio.sleep(0.01)
            if fail:
                raise RuntimeError("generation failed")

        return Response(body(), "text/plain", headers={"X-Amzn-SageMaker-Custom-Attributes": "streamed=1"})


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    models = {"words": WordsModel(), "tokens": TokensModel(), "echo": EchoModel()}
    async with gateway_stack(tmp_path / "gw", models) as s:
        yield s


def runtime(stack: Stack) -> Any:
    return boto_client(
        "sagemaker-runtime", stack.gateway.url, stack.gateway.ca_path, akid=AKID, secret=SECRET
    )


async def test_invoke_endpoint_words(stack: Stack) -> None:
    def call() -> dict[str, Any]:
        return runtime(stack).invoke_endpoint(  # type: ignore[no-any-return]
            EndpointName="words",
            Body=b"the quick brown fox",
            ContentType="text/plain",
            Accept="application/json",
            CustomAttributes="trace=1",
        )

    resp = await asyncio.to_thread(call)
    assert json.loads(resp["Body"].read()) == ["the", "quick", "brown", "fox"]
    assert resp["ContentType"] == "application/json"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    assert resp["ResponseMetadata"]["RequestId"]


async def test_invoke_endpoint_echo_binary(stack: Stack) -> None:
    blob = bytes(range(256)) * 100

    def call() -> bytes:
        r = runtime(stack).invoke_endpoint(
            EndpointName="echo", Body=blob, ContentType="application/octet-stream"
        )
        return r["Body"].read()  # type: ignore[no-any-return]

    assert await asyncio.to_thread(call) == blob


async def test_response_stream_words(stack: Stack) -> None:
    def call() -> tuple[list[bytes], dict[str, Any]]:
        r = runtime(stack).invoke_endpoint_with_response_stream(
            EndpointName="words", Body=b"hello streaming world", ContentType="text/plain"
        )
        return [ev["PayloadPart"]["Bytes"] for ev in r["Body"]], r

    parts, resp = await asyncio.to_thread(call)
    assert json.loads(b"".join(parts)) == ["hello", "streaming", "world"]
    assert resp["InvokedProductionVariant"] == "AllTraffic"


async def test_response_stream_relays_chunks_as_they_stream(stack: Stack) -> None:
    def call() -> tuple[list[bytes], dict[str, Any]]:
        r = runtime(stack).invoke_endpoint_with_response_stream(
            EndpointName="tokens", Body=b"one two three four", ContentType="text/plain"
        )
        return [ev["PayloadPart"]["Bytes"] for ev in r["Body"]], r

    parts, resp = await asyncio.to_thread(call)
    assert b"".join(parts) == b"one two three four "
    assert len(parts) >= 2  # streamed, not buffered into one part
    assert resp["ContentType"] == "text/plain"
    assert resp["CustomAttributes"] == "streamed=1"


async def test_response_stream_failure_is_model_stream_error(stack: Stack) -> None:
    def call() -> tuple[list[bytes], EventStreamError]:
        r = runtime(stack).invoke_endpoint_with_response_stream(
            EndpointName="tokens", Body=b"a b", ContentType="text/plain", CustomAttributes="fail"
        )
        got: list[bytes] = []
        with pytest.raises(EventStreamError) as info:
            for ev in r["Body"]:
                got.append(ev["PayloadPart"]["Bytes"])
        return got, info.value

    got, err = await asyncio.to_thread(call)
    assert b"".join(got) == b"a b "
    assert err.response["Error"]["Code"] == "ModelStreamError"
    assert "broke off" in err.response["Error"]["Message"]


async def test_container_error_is_model_error_424(stack: Stack) -> None:
    def call() -> ClientError:
        with pytest.raises(ClientError) as info:
            runtime(stack).invoke_endpoint(EndpointName="words", Body=b"\xff\xfe", ContentType="text/plain")
        return info.value

    err = await asyncio.to_thread(call)
    assert err.response["Error"]["Code"] == "ModelError"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err.response["OriginalStatusCode"] == 400
    assert "not UTF-8" in err.response["OriginalMessage"]


async def test_unknown_endpoint_is_validation_error(stack: Stack) -> None:
    def call() -> ClientError:
        with pytest.raises(ClientError) as info:
            runtime(stack).invoke_endpoint(EndpointName="missing", Body=b"x")
        return info.value

    err = await asyncio.to_thread(call)
    assert err.response["Error"]["Code"] == "ValidationError"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400  # as SageMaker: not a 404
    assert "Endpoint missing not found" in err.response["Error"]["Message"]


async def test_unknown_target_variant_is_validation_error_400(stack: Stack) -> None:
    def call() -> ClientError:
        with pytest.raises(ClientError) as info:
            runtime(stack).invoke_endpoint(EndpointName="echo", Body=b"x", TargetVariant="Blue")
        return info.value

    err = await asyncio.to_thread(call)
    assert (err.response["Error"]["Code"], err.response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "ValidationError",
        400,
    )
    assert "Variant Blue not found" in err.response["Error"]["Message"]
    # the endpoint itself still answers
    ok = await asyncio.to_thread(lambda: runtime(stack).invoke_endpoint(EndpointName="echo", Body=b"hi"))
    assert ok["Body"].read() == b"hi"


async def test_control_plane_without_one_is_unknown_operation(stack: Stack) -> None:
    def call() -> ClientError:
        sm = boto_client("sagemaker", stack.gateway.url, stack.gateway.ca_path, akid=AKID, secret=SECRET)
        with pytest.raises(ClientError) as info:
            sm.describe_endpoint(EndpointName="echo")
        return info.value

    err = await asyncio.to_thread(call)
    assert err.response["Error"]["Code"] == "UnknownOperationException"
