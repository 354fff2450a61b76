"""The official bidi client configured the way every example here needs it (client 0.12+).

Three things changed since client 0.1.0, which the seed's script was written for: the client class is
``AsyncSageMakerRuntimeHTTP2Client``, its config is built with ``await ...Config.resolve(...)``, and the
transport must be named (``AWSCRTHTTPClient``, from the ``[awscrt]`` extra).
"""

from __future__ import annotations

import os

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from smithy_aws_core.identity.environment import EnvironmentCredentialsResolver
from smithy_http.aio.crt import AWSCRTHTTPClient

REGION = os.environ.get("AWS_REGION", "us-east-1")
# SageMaker's bidi endpoint is runtime.sagemaker.<region>.amazonaws.com:8443; `bidistream env` points
# this variable at the local gateway instead.
ENDPOINT_URL = os.environ.get(
    "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2", f"https://runtime.sagemaker.{REGION}.amazonaws.com:8443"
)


async def make_client() -> AsyncSageMakerRuntimeHTTP2Client:
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=ENDPOINT_URL,
        region=REGION,
        aws_credentials_identity_resolver=EnvironmentCredentialsResolver(),
        transport=AWSCRTHTTPClient(),
    )
    return AsyncSageMakerRuntimeHTTP2Client(config=config)
