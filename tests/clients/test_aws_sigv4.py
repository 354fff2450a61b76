"""SigV4 verification on (``Gateway(credentials=...)``), with the unmodified official clients.

The bidi client sends no ``host`` header over HTTP/2 (only ``:authority``) yet
signs ``host``; these tests pin that a correctly signed session streams, a
wrongly signed one is refused with what the client reports, and that the
refusal leaves a concurrent healthy session alone.  boto3 (HTTP/1.1) is checked
the same way for ``invoke_endpoint``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from botocore.exceptions import ClientError
from smithy_aws_core.identity.components import AWSCredentialsIdentity
from smithy_aws_core.identity.static import StaticCredentialsResolver
from smithy_core.exceptions import CallError
from smithy_http.aio.crt import AWSCRTHTTPClient

from bidistream.gateway.server import Gateway
from bidistream.models.echo import EchoModel
from bidistream.models.words import WordsModel
from bidistream.sigv4 import CredentialStore
from tests.boto import boto_client
from tests.clients.test_aws_errors import Healthy, open_failing
from tests.support.aws import (
    AKID,
    SECRET,
    SEED_PHRASES,
    Stack,
    T,
    gateway_stack,
    payloads,
    session,
    text_part,
)
from tests.support.waiting import eventually


async def signed_client(
    gw: Gateway, secret: str = SECRET, token: str | None = None
) -> AsyncSageMakerRuntimeHTTP2Client:
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=gw.url,
        region="us-east-1",
        aws_credentials_identity_resolver=StaticCredentialsResolver(
            AWSCredentialsIdentity(access_key_id=AKID, secret_access_key=secret, session_token=token)
        ),
        transport=AWSCRTHTTPClient(),
    )
    return AsyncSageMakerRuntimeHTTP2Client(config=config)


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    models = {"echo": EchoModel(), "words": WordsModel()}
    async with gateway_stack(tmp_path / "gw", models, credentials=CredentialStore({AKID: SECRET})) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


async def test_signed_session_echoes_the_four_phrases(stack: Stack) -> None:
    client = await signed_client(stack.gateway)
    events = await session(client, "echo", [text_part(p) for p in SEED_PHRASES], gap=0.02)
    assert payloads(events) == [(p.encode(), "UTF8", "COMPLETE") for p in SEED_PHRASES]


async def test_signed_session_with_sagemaker_headers_and_session_token(stack: Stack) -> None:
    # x-amzn-sagemaker-* headers and x-amz-security-token are signed headers too.
    client = await signed_client(stack.gateway, token="FQoGZXIvYXdzEXAMPLETOKEN")
    events = await session(
        client,
        "echo",
        [text_part("hi")],
        model_invocation_path="invocations-bidirectional-stream",
        model_query_string="model=nova-3&language=en",
        target_variant="AllTraffic",
    )
    assert payloads(events) == [(b"hi", "UTF8", "COMPLETE")]


async def test_wrong_secret_is_access_denied_and_healthy_session_untouched(stack: Stack) -> None:
    healthy = await Healthy(await signed_client(stack.gateway)).open()
    forged = await signed_client(stack.gateway, secret="not-the-secret")
    error = await open_failing(forged, endpoint_name="echo")
    # The client has no modeled type for it: a CallError naming the AWS error code.
    assert isinstance(error, CallError)
    assert "403" in str(error) and "AccessDeniedException" in str(error)
    await healthy.check()
    assert await _drained(stack.gateway)


async def _drained(gw: Gateway) -> bool:
    await eventually(lambda: gw.live_sessions == 0, timeout=1.0)
    return True


def runtime(stack: Stack, secret: str = SECRET) -> Any:
    return boto_client(
        "sagemaker-runtime", stack.gateway.url, stack.gateway.ca_path, akid=AKID, secret=secret
    )


async def test_boto3_invoke_endpoint_signed(stack: Stack) -> None:
    rt = runtime(stack)
    resp = await asyncio.wait_for(
        asyncio.to_thread(
            rt.invoke_endpoint, EndpointName="words", Body=b"one two three", ContentType="text/plain"
        ),
        T,
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["Body"].read()


async def test_boto3_invoke_endpoint_wrong_secret_is_denied(stack: Stack) -> None:
    healthy = await Healthy(await signed_client(stack.gateway)).open()
    rt = runtime(stack, secret="not-the-secret")
    with pytest.raises(ClientError) as info:
        await asyncio.wait_for(
            asyncio.to_thread(
                rt.invoke_endpoint, EndpointName="words", Body=b"one", ContentType="text/plain"
            ),
            T,
        )
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    await healthy.check()
