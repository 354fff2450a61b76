"""A real gateway in front of the real platform (process runtime), for client tests.

boto3 is synchronous: its calls run in a thread (``sync``) so the gateway,
on the test's event loop, keeps serving while a waiter polls.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
    ResponseStreamEventPayloadPart,
)

from bidistream.gateway.server import Gateway
from bidistream.platform.app import Platform, build_platform
from bidistream.platform.autoscaler import AutoscalerLimits
from bidistream.platform.manager import ManagerLimits
from bidistream.sigv4 import CredentialStore
from tests.boto import boto_client
from tests.integration.platform_helpers import FAST, production_variants
from tests.support.aws import SEED_PHRASES, official_client
from tests.support.waiting import scaled, waiter_config

AKID, SECRET = "AKIDPLATFORMTEST", "platform-test-secret"
T = scaled(15.0)


@dataclass
class Stack:
    platform: Platform
    gateway: Gateway

    def boto(self, service: str = "sagemaker", **config: Any) -> Any:
        return boto_client(
            service, self.gateway.url, self.gateway.ca_path, akid=AKID, secret=SECRET, **config
        )

    async def bidi(self) -> AsyncSageMakerRuntimeHTTP2Client:
        return await official_client(self.gateway, AKID, SECRET)


@asynccontextmanager
async def platform_stack(
    data_dir: Path,
    limits: ManagerLimits = FAST,
    *,
    signed: bool = False,
    autoscaler: AutoscalerLimits | None = None,
) -> AsyncIterator[Stack]:
    platform = build_platform(data_dir, manager_limits=limits, autoscaler_limits=autoscaler)
    await platform.start()
    gateway = Gateway(
        platform.router,
        control_plane=platform.control_plane,
        port=0,
        data_dir=data_dir,
        credentials=CredentialStore({AKID: SECRET} if signed else {}),
    )
    await gateway.start()
    try:
        yield Stack(platform, gateway)
    finally:
        await gateway.stop()
        await platform.stop()


async def sync[R](fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


def text_part(s: str) -> RequestPayloadPart:
    return RequestPayloadPart(bytes_=s.encode(), data_type="UTF8", completion_state="COMPLETE")


class BidiSession:
    """One open bidi session: send parts, read what came back, close."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.events: list[Any] = []
        self.variant: str | None = None
        self.error: BaseException | None = None
        self.got = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            output, receiver = await self.stream.await_output()
            self.variant = output.invoked_production_variant
            while (ev := await receiver.receive()) is not None:
                self.events.append(ev)
                self.got.set()
        except Exception as exc:
            self.error = exc
            self.got.set()

    async def send(self, text: str) -> None:
        await asyncio.wait_for(
            self.stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part(text))), T
        )

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(T):
            while len(self.events) < count and self.error is None:
                self.got.clear()
                await self.got.wait()

    async def close(self) -> None:
        await asyncio.wait_for(self.stream.input_stream.close(), T)
        await asyncio.wait_for(self.reader, T)

    def texts(self) -> list[str]:
        out = []
        for ev in self.events:
            assert isinstance(ev, ResponseStreamEventPayloadPart), ev
            out.append(ev.value.bytes_.decode())
        return out


async def open_session(client: AsyncSageMakerRuntimeHTTP2Client, endpoint: str, **kw: Any) -> BidiSession:
    stream = await asyncio.wait_for(
        client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(endpoint_name=endpoint, **kw)
        ),
        T,
    )
    return BidiSession(stream)


async def phrases_session(
    client: AsyncSageMakerRuntimeHTTP2Client, endpoint: str, *, interactive: bool = False, **kw: Any
) -> BidiSession:
    """The seed's invoke script: four phrases, then close; returns the finished session.

    ``interactive`` waits for each answer before the next phrase, as a caller
    in a conversation does (and as a container that stops answering once the
    client closes, like the seed's FastAPI app, needs).
    """
    sess = await open_session(client, endpoint, **kw)
    for n, phrase in enumerate(SEED_PHRASES, 1):
        await sess.send(phrase)
        if interactive:
            await sess.wait_for(n)
    await sess.close()
    return sess


def create_endpoint(
    sm: Any,
    name: str,
    image: str,
    variants: list[tuple[str, int, float]] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """The seed's create script, in boto3: model, endpoint config, endpoint."""
    container: dict[str, Any] = {"Image": image}
    if env:
        container["Environment"] = env
    sm.create_model(
        ModelName=f"{name}-model",
        PrimaryContainer=container,
        ExecutionRoleArn="arn:aws:iam::000000000000:role/SageMakerRole",
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-config",
        ProductionVariants=production_variants(name, variants),
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=waiter_config(60))
