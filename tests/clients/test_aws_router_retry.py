"""A full instance accepts the upgrade and closes with 1013: the gateway moves on.

``bidistream serve`` at ``max_sessions`` accepts the WebSocket and closes it
with 1013 at once (the close can arrive in a later read than the 101).  Until
the instance has confirmed the session no client data is relayed to it, so the
gateway can try the next candidate and the client never sees the refusal; only
when every candidate is full does the client get ``ServiceUnavailableError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import picows
import pytest
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestStreamEventPayloadPart,
    ServiceUnavailableError,
)

from bidistream.container.server import ModelServer
from bidistream.errors import NotFoundError
from bidistream.gateway.server import Gateway
from bidistream.models.echo import EchoModel
from bidistream.routing import RoutableInstance
from bidistream.sigv4 import CredentialStore
from tests.clients.test_aws_errors import open_failing
from tests.conftest import running_server
from tests.support.aws import (
    SEED_PHRASES,
    T,
    official_client,
    payloads,
    session,
    text_part,
)


@dataclass
class OrderedRouter:
    """One endpoint, its instances tried in the given order (the full one first)."""

    urls: list[str]
    started: list[str] = field(default_factory=list)
    targets: list[RoutableInstance] = field(init=False)

    def __post_init__(self) -> None:
        self.targets = [
            RoutableInstance("echo", "AllTraffic", f"echo-{i}", u) for i, u in enumerate(self.urls)
        ]

    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        if endpoint != "echo":
            raise NotFoundError(f"Endpoint {endpoint} not found.")
        return list(self.targets)

    def session_started(self, target: RoutableInstance) -> None:
        target.live_sessions += 1
        self.started.append(target.instance_id)

    def session_ended(self, target: RoutableInstance) -> None:
        target.live_sessions -= 1


class _LateFull(picows.WSListener):  # type: ignore[misc]
    """Accepts, then closes 1013 a little later: the close never rides with the 101.

    Like aiohttp (what ``bidistream serve`` runs on), it answers pings only from
    its application's read loop, which a full instance never enters.
    """

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        asyncio.get_running_loop().call_later(0.03, self._full, transport)

    @staticmethod
    def _full(transport: picows.WSTransport) -> None:
        transport.send_close(picows.WSCloseCode(1013), b"instance full (1 sessions); try again later")


async def occupy(server: ModelServer) -> picows.WSTransport:
    """Take the instance's only session slot directly."""
    transport, _ = await picows.ws_connect(
        picows.WSListener, f"ws://127.0.0.1:{server.port}/invocations-bidirectional-stream"
    )
    async with asyncio.timeout(T):
        while not server._sessions:  # noqa: ASYNC110 (polling the server under test)
            await asyncio.sleep(0.01)
    return transport


@pytest.fixture
async def two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, ModelServer, ModelServer, OrderedRouter]]:
    async with AsyncExitStack() as stack:
        full = await stack.enter_async_context(running_server(EchoModel(), max_sessions=1))
        roomy = await stack.enter_async_context(running_server(EchoModel()))
        router = OrderedRouter([f"http://127.0.0.1:{full.port}", f"http://127.0.0.1:{roomy.port}"])
        gw = Gateway(router, port=0, data_dir=tmp_path / "gw", credentials=CredentialStore({}))
        await gw.start()
        stack.push_async_callback(gw.stop)
        monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca_path))
        yield gw, full, roomy, router


async def test_full_instance_closing_1013_sends_session_to_the_next(
    two: tuple[Gateway, ModelServer, ModelServer, OrderedRouter],
) -> None:
    gw, full, _, router = two
    blocker = await occupy(full)
    try:
        client = await official_client(gw)
        events = await session(client, "echo", [text_part(p) for p in SEED_PHRASES])
        assert payloads(events) == [(p.encode(), "UTF8", "COMPLETE") for p in SEED_PHRASES]
        # The session ran on the second instance; the full one was never committed to.
        assert router.started == ["echo-1"]
        assert len(full._sessions) == 1
    finally:
        blocker.disconnect()


async def test_first_frames_wait_for_the_confirmed_instance(
    two: tuple[Gateway, ModelServer, ModelServer, OrderedRouter],
) -> None:
    # The client sends before the response headers: those frames are held by
    # the gateway, not relayed to the full instance, and reach the next one.
    gw, full, _, router = two
    blocker = await occupy(full)
    try:
        client = await official_client(gw)
        stream = await asyncio.wait_for(
            client.invoke_endpoint_with_bidirectional_stream(
                InvokeEndpointWithBidirectionalStreamInput(endpoint_name="echo")
            ),
            T,
        )
        for p in SEED_PHRASES[:2]:
            await asyncio.wait_for(
                stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part(p))), T
            )
        _, receiver = await asyncio.wait_for(stream.await_output(), T)
        got = [(await asyncio.wait_for(receiver.receive(), T)).value.bytes_ for _ in range(2)]
        assert got == [p.encode() for p in SEED_PHRASES[:2]]
        await asyncio.wait_for(stream.input_stream.close(), T)
        assert await asyncio.wait_for(receiver.receive(), T) is None
        assert router.started == ["echo-1"]
    finally:
        blocker.disconnect()


async def test_close_1013_in_a_later_read_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    late = await picows.ws_create_server(lambda _req: _LateFull(), "127.0.0.1", 0, enable_auto_pong=False)
    late_port = late.sockets[0].getsockname()[1]
    try:
        async with running_server(EchoModel()) as roomy:
            router = OrderedRouter([f"http://127.0.0.1:{late_port}", f"http://127.0.0.1:{roomy.port}"])
            gw = Gateway(router, port=0, data_dir=tmp_path / "gw", credentials=CredentialStore({}))
            await gw.start()
            try:
                monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca_path))
                client = await official_client(gw)
                events = await session(client, "echo", [text_part("moved")])
                assert payloads(events) == [(b"moved", "UTF8", "COMPLETE")]
                assert router.started == ["echo-1"]
            finally:
                await gw.stop()
    finally:
        late.close()


async def test_all_instances_full_is_service_unavailable_and_healthy_session_survives(
    two: tuple[Gateway, ModelServer, ModelServer, OrderedRouter],
) -> None:
    gw, full, roomy, _ = two
    client = await official_client(gw)
    blocker = await occupy(full)
    # A healthy session on the roomy instance, open across the failure.
    healthy = await asyncio.wait_for(
        client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(endpoint_name="echo")
        ),
        T,
    )
    await healthy.input_stream.send(RequestStreamEventPayloadPart(value=text_part("before")))
    _, receiver = await asyncio.wait_for(healthy.await_output(), T)
    assert (await asyncio.wait_for(receiver.receive(), T)).value.bytes_ == b"before"
    roomy.limits = type(roomy.limits)(max_sessions=1)  # now both are full
    try:
        err = await open_failing(client, endpoint_name="echo")
        assert isinstance(err, ServiceUnavailableError)
        assert "full" in str(err.message)
        await healthy.input_stream.send(RequestStreamEventPayloadPart(value=text_part("after")))
        assert (await asyncio.wait_for(receiver.receive(), T)).value.bytes_ == b"after"
        await asyncio.wait_for(healthy.input_stream.close(), T)
        assert await asyncio.wait_for(receiver.receive(), T) is None
    finally:
        blocker.disconnect()
