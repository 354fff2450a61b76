"""The credential scope is pinned (issue 10.4), seen from the unmodified official clients.

The official bidi client signs for whatever region it is configured with; a gateway
answering as us-east-1 refuses a session signed for eu-west-1 with 403 (the client has
no modeled type for it: a CallError naming the AWS error), while a session signed
correctly on the same gateway keeps streaming.  Through ``bidistream.client`` the same
403 reaches the caller as our AuthError.  boto3 gets the same refusal on HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from botocore.config import Config
from botocore.exceptions import ClientError
from smithy_aws_core.identity.components import AWSCredentialsIdentity
from smithy_aws_core.identity.static import StaticCredentialsResolver
from smithy_core.exceptions import CallError
from smithy_http.aio.crt import AWSCRTHTTPClient

from bidistream.client import Client
from bidistream.errors import AuthError
from bidistream.models.echo import EchoModel
from bidistream.sigv4 import CredentialStore
from tests.boto import boto_client
from tests.clients.test_aws_errors import Healthy, open_failing
from tests.support.aws import AKID, SECRET, Stack, T, gateway_stack


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with gateway_stack(
        tmp_path / "gw", {"echo": EchoModel()}, credentials=CredentialStore({AKID: SECRET})
    ) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


async def client_for(stack: Stack, region: str) -> AsyncSageMakerRuntimeHTTP2Client:
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=stack.gateway.url,
        region=region,
        aws_credentials_identity_resolver=StaticCredentialsResolver(
            AWSCredentialsIdentity(access_key_id=AKID, secret_access_key=SECRET)
        ),
        transport=AWSCRTHTTPClient(),
    )
    return AsyncSageMakerRuntimeHTTP2Client(config=config)


async def test_a_session_signed_for_another_region_is_403(stack: Stack) -> None:
    healthy = await Healthy(await client_for(stack, "us-east-1")).open()
    error = await open_failing(await client_for(stack, "eu-west-1"), endpoint_name="echo")
    assert isinstance(error, CallError)
    assert "403" in str(error) and "AccessDeniedException" in str(error)
    await healthy.check()


async def test_the_sdk_raises_our_auth_error(stack: Stack) -> None:
    async with Client(stack.gateway.url, ca_file=str(stack.gateway.ca_path), region="eu-west-1") as client:
        with pytest.raises(AuthError, match="403"):
            async with client.session("echo"):
                pass


async def test_boto3_signed_for_another_region_is_403(stack: Stack) -> None:
    rt = boto_client("sagemaker-runtime", stack.gateway.url, stack.gateway.ca_path, akid=AKID, secret=SECRET)
    ok = await asyncio.wait_for(asyncio.to_thread(rt.invoke_endpoint, EndpointName="echo", Body=b"x"), T)
    assert ok["Body"].read() == b"x"
    other = boto3.client(
        "sagemaker-runtime",
        endpoint_url=stack.gateway.url,
        verify=str(stack.gateway.ca_path),
        region_name="eu-west-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as info:
        await asyncio.wait_for(asyncio.to_thread(other.invoke_endpoint, EndpointName="echo", Body=b"x"), T)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
