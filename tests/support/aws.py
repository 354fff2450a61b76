"""The official bidi client's side of the tests: a gateway in front of model servers, and the client.

Shared by every test that drives the unmodified aws-sdk-sagemaker-runtime-http2
client (and by the boto3 and browser tests that need the same gateway).  Every
client call is wrapped in a timeout: the client hangs instead of failing in
several situations (wire spec, surprise 12).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.config import AsyncSageMakerRuntimeHTTP2Config
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
    ResponseStreamEventPayloadPart,
)
from smithy_aws_core.identity.components import AWSCredentialsIdentity
from smithy_aws_core.identity.static import StaticCredentialsResolver
from smithy_http.aio.crt import AWSCRTHTTPClient

from bidistream.container.server import ModelServer
from bidistream.gateway.limits import GatewayLimits
from bidistream.gateway.server import Gateway
from bidistream.model import Model
from bidistream.models.echo import EchoModel
from bidistream.routing import StaticRouter
from bidistream.sigv4 import CredentialStore
from tests.conftest import running_server
from tests.support.waiting import scaled

AKID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SEED_PHRASES = ["I need help with", "my account balance", "I can help with that", "and recent charges"]
T = scaled(15.0)  # per-call bound


@dataclass
class Stack:
    gateway: Gateway
    servers: dict[str, ModelServer]


@asynccontextmanager
async def gateway_stack(
    data_dir: Path,
    models: dict[str, Model] | None = None,
    *,
    urls: dict[str, str] | None = None,
    limits: GatewayLimits | None = None,
    credentials: CredentialStore | None = None,
) -> AsyncIterator[Stack]:
    """Model servers on ephemeral ports behind a gateway declaring them as endpoints."""
    async with AsyncExitStack() as stack:
        servers: dict[str, ModelServer] = {}
        for name, model in (models if models is not None else {"echo": EchoModel()}).items():
            servers[name] = await stack.enter_async_context(running_server(model))
        all_urls = {name: f"http://127.0.0.1:{s.port}" for name, s in servers.items()} | (urls or {})
        gw = Gateway(
            StaticRouter(all_urls),
            port=0,
            data_dir=data_dir,
            limits=limits or GatewayLimits(),
            credentials=credentials or CredentialStore({}),
        )
        await gw.start()
        try:
            yield Stack(gw, servers)
        finally:
            await gw.stop()


async def official_client(
    gw: Gateway, akid: str = AKID, secret: str = SECRET
) -> AsyncSageMakerRuntimeHTTP2Client:
    """The client exactly as a user configures it (SSL_CERT_FILE must point at the CA)."""
    config = await AsyncSageMakerRuntimeHTTP2Config.resolve(
        endpoint_uri=gw.url,
        region="us-east-1",
        aws_credentials_identity_resolver=StaticCredentialsResolver(
            AWSCredentialsIdentity(access_key_id=akid, secret_access_key=secret)
        ),
        transport=AWSCRTHTTPClient(),
    )
    return AsyncSageMakerRuntimeHTTP2Client(config=config)


def text_part(s: str, complete: bool = True) -> RequestPayloadPart:
    return RequestPayloadPart(
        bytes_=s.encode(), data_type="UTF8", completion_state="COMPLETE" if complete else "PARTIAL"
    )


def bin_part(b: bytes) -> RequestPayloadPart:
    return RequestPayloadPart(bytes_=b, data_type="BINARY")


async def session(
    client: AsyncSageMakerRuntimeHTTP2Client,
    endpoint: str,
    parts: list[RequestPayloadPart],
    *,
    gap: float = 0.0,
    **kw: Any,
) -> list[Any]:
    """One session the way the seed drives it: a reader task while sending, then close."""
    stream = await asyncio.wait_for(
        client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(endpoint_name=endpoint, **kw)
        ),
        T,
    )
    got: list[Any] = []

    async def read() -> None:
        _, receiver = await stream.await_output()
        while (ev := await receiver.receive()) is not None:
            got.append(ev)

    reader = asyncio.create_task(read())
    try:
        for part in parts:
            await asyncio.wait_for(stream.input_stream.send(RequestStreamEventPayloadPart(value=part)), T)
            if gap:
                await asyncio.sleep(gap)
        await asyncio.wait_for(stream.input_stream.close(), T)
        await asyncio.wait_for(reader, T)
    finally:
        reader.cancel()
    return got


def payloads(events: list[Any]) -> list[tuple[bytes, str | None, str | None]]:
    out = []
    for ev in events:
        assert isinstance(ev, ResponseStreamEventPayloadPart), ev
        out.append((ev.value.bytes_, ev.value.data_type, ev.value.completion_state))
    return out
