"""The HTTP/2 door fed bytes in memory: no socket, a hand-built DoorContext.

Issue 10.3: HEADERS and RST_STREAM for one stream in the same read used to
raise out of ``data_received`` (the window increment on a stream h2 had
already closed), killing the connection and every stream on it.  Each event
is now handled against its stream's state, and a stream whose handler fails
is reset alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from bidistream.gateway.bridge import PingTicker
from bidistream.gateway.context import DoorContext
from bidistream.gateway.h2front import BidiStream, H2Protocol
from bidistream.gateway.http import HttpResponse
from bidistream.gateway.limits import GatewayLimits
from bidistream.routing import StaticRouter
from bidistream.sigv4 import CredentialStore

BIDI = "/endpoints/echo/invocations-bidirectional-stream"


class MemoryTransport:
    """Collects what the door writes; enough of asyncio.Transport for H2Protocol."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _ok(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> HttpResponse:
    return HttpResponse(200, [("content-type", "text/plain"), ("content-length", "3")], b"ok\n")


def door() -> tuple[H2Protocol, MemoryTransport, h2.connection.H2Connection]:
    ctx = DoorContext(
        limits=GatewayLimits(),
        # Nothing listens there: bidi sessions are refused, which is all these tests need.
        router=StaticRouter({"echo": "http://127.0.0.1:9"}),
        credentials=CredentialStore({}),
        ticker=PingTicker(60.0, 5),
        connections=set(),
        handle_http=_ok,
        upgrade_ws=lambda transport, req, trailing: None,
    )
    proto = H2Protocol(ctx)
    transport = MemoryTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.receive_data(bytes(transport.out))
    transport.out.clear()
    return proto, transport, client


def headers(path: str, method: str = "POST") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "https"), (":authority", "localhost"), (":path", path)]


def replies(client: h2.connection.H2Connection, transport: MemoryTransport) -> list[Any]:
    events = client.receive_data(bytes(transport.out))
    transport.out.clear()
    return events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_headers_and_rst_in_one_read_touch_only_that_stream() -> None:
    proto, transport, client = door()
    client.send_headers(1, headers("/ping", "GET"), end_stream=True)
    for sid in (3, 5, 7):
        client.send_headers(sid, headers(BIDI))
        client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    proto.data_received(client.data_to_send())  # one read: must not raise
    await settle()
    proto.flush()
    events = replies(client, transport)
    answered = [ev for ev in events if isinstance(ev, h2.events.ResponseReceived)]
    assert [ev.stream_id for ev in answered] == [1]
    assert not transport.closed
    assert set(proto.streams) <= {1}
    # The connection still takes new streams.
    client.send_headers(9, headers("/ping", "GET"), end_stream=True)
    proto.data_received(client.data_to_send())
    await settle()
    proto.flush()
    assert any(
        isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 9 for ev in replies(client, transport)
    )


async def test_headers_and_goaway_in_one_read_end_the_streams_and_close() -> None:
    proto, transport, client = door()
    client.send_headers(1, headers(BIDI))
    client.close_connection()
    proto.data_received(client.data_to_send())
    assert transport.closed
    assert proto.streams == {}


async def test_a_failing_stream_is_reset_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    proto, transport, client = door()

    def broken(self: BidiStream) -> None:
        raise RuntimeError("a bug in one stream's handler")

    monkeypatch.setattr(BidiStream, "start", broken)
    client.send_headers(1, headers(BIDI))
    client.send_headers(3, headers("/ping", "GET"), end_stream=True)
    proto.data_received(client.data_to_send())
    await settle()
    proto.flush()
    events = replies(client, transport)
    resets = [ev for ev in events if isinstance(ev, h2.events.StreamReset)]
    assert [(ev.stream_id, ev.error_code) for ev in resets] == [(1, h2.errors.ErrorCodes.INTERNAL_ERROR)]
    assert any(isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3 for ev in events)
    assert not transport.closed
