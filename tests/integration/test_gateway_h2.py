"""The HTTP/2 front door fed with bytes no official client would send, on real sockets.

A raw ``h2`` client stands in for a broken or malicious client: bad CRCs, a
truncated prelude, an oversized length, an abrupt disconnect.  Each case shows
the exact response the client gets, and a healthy session on the same
connection keeps working.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bidistream.gateway.limits import GatewayLimits
from tests.h2client import H2TestClient
from tests.support.aws import Stack, gateway_stack
from tests.support.waiting import eventually, scaled

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
EVENT1 = bytes.fromhex((VECTORS / "sagemaker-bidi-request-event-1.hex").read_text().strip())
FINAL = bytes.fromhex((VECTORS / "sagemaker-bidi-request-final.hex").read_text().strip())
T = scaled(10.0)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    limits = GatewayLimits(max_event_size=4096)
    async with gateway_stack(tmp_path / "gw", limits=limits) as s:
        yield s


@pytest.fixture
async def raw(stack: Stack) -> AsyncIterator[H2TestClient]:
    c = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    yield c
    c.close()


async def healthy_open(raw: H2TestClient) -> int:
    sid = raw.open()
    raw.send(sid, EVENT1)
    assert (await raw.headers(sid))[":status"] == "200"
    assert (await raw.events(sid, 1))[0]["payload"] == b'{"prompt":"Hello"}'
    return sid


async def healthy_finish(raw: H2TestClient, sid: int) -> None:
    raw.send(sid, EVENT1)
    raw.send(sid, FINAL, end=True)
    await raw.wait_end(sid)
    evs = await raw.events(sid, 2)
    assert [e["payload"] for e in evs] == [b'{"prompt":"Hello"}'] * 2


async def in_stream_error(raw: H2TestClient, sid: int) -> dict[str, object]:
    assert (await raw.headers(sid))[":status"] == "200"
    await raw.wait_end(sid)
    evs = await raw.events(sid, 1)
    assert evs[-1][":message-type"] == "exception"
    return evs[-1]


async def test_bad_crc(raw: H2TestClient) -> None:
    healthy = await healthy_open(raw)
    sid = raw.open()
    bad = bytearray(EVENT1)
    bad[-1] ^= 0xFF
    await raw.headers(sid)
    raw.send(sid, bytes(bad))
    ev = await in_stream_error(raw, sid)
    assert ev[":exception-type"] == "ModelStreamError"
    body = json.loads(ev["payload"])  # type: ignore[arg-type]
    assert body["ErrorCode"] == "InvalidFrame" and "ChecksumMismatch" in body["Message"]
    await healthy_finish(raw, healthy)


async def test_truncated_prelude(raw: H2TestClient) -> None:
    healthy = await healthy_open(raw)
    sid = raw.open()
    await raw.headers(sid)
    raw.send(sid, EVENT1[:7], end=True)
    ev = await in_stream_error(raw, sid)
    body = json.loads(ev["payload"])  # type: ignore[arg-type]
    assert body["ErrorCode"] == "InvalidFrame" and "inside a prelude" in body["Message"]
    await healthy_finish(raw, healthy)


async def test_oversized_message(raw: H2TestClient) -> None:
    healthy = await healthy_open(raw)
    sid = raw.open()
    await raw.headers(sid)
    raw.send(sid, (1 << 20).to_bytes(4, "big") + b"\0" * 8)
    ev = await in_stream_error(raw, sid)
    body = json.loads(ev["payload"])  # type: ignore[arg-type]
    assert body["ErrorCode"] == "MessageTooLarge" and "exceeds the limit of 4096" in body["Message"]
    await healthy_finish(raw, healthy)


async def test_bad_bytes_before_instance_connects_get_a_400(raw: H2TestClient) -> None:
    sid = raw.open()
    raw.send(sid, b"\0\0\0\x01garbage....", end=True)
    headers = await raw.headers(sid)
    await raw.wait_end(sid)
    if headers[":status"] == "200":  # the instance answered first: in-stream form
        evs = await raw.events(sid, 1)
        assert evs[-1][":exception-type"] == "ModelStreamError"
    else:
        assert headers[":status"] == "400"
        assert headers["x-amzn-errortype"] == "InputValidationError"
        assert "below the 16-byte minimum" in json.loads(bytes(raw.data[sid]))["Message"]


async def test_client_vanishes_instance_sees_close_within_a_second(stack: Stack) -> None:
    raw = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    other = await H2TestClient.connect(stack.gateway.port, stack.gateway.ca_path)
    healthy = await healthy_open(other)
    sid = raw.open()
    raw.send(sid, EVENT1)
    await raw.events(sid, 1)
    server = stack.servers["echo"]
    assert server.live_sessions == 2
    raw.close()  # TCP reset, no GOAWAY
    await eventually(lambda: server.live_sessions == 1, timeout=1.0)
    await healthy_finish(other, healthy)
    other.close()


async def test_stream_reset_closes_instance_socket(raw: H2TestClient, stack: Stack) -> None:
    healthy = await healthy_open(raw)
    sid = raw.open()
    raw.send(sid, EVENT1)
    await raw.events(sid, 1)
    raw.conn.reset_stream(sid)
    raw._flush()
    server = stack.servers["echo"]
    await eventually(lambda: server.live_sessions == 1, timeout=1.0)
    await healthy_finish(raw, healthy)


async def test_bare_end_stream_without_final_envelope(raw: H2TestClient) -> None:
    # Client 0.1 ends with END_STREAM only; so does a 0.12 app that exits without close().
    sid = raw.open()
    raw.send(sid, EVENT1, end=True)
    await raw.wait_end(sid)
    evs = await raw.events(sid, 1)
    assert [e["payload"] for e in evs] == [b'{"prompt":"Hello"}']


async def test_http11_to_bidi_path_is_a_clear_error(stack: Stack) -> None:
    def call() -> tuple[int, str | None, dict[str, str]]:
        ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
        ctx.set_alpn_protocols(["http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", stack.gateway.port, context=ctx, timeout=T)
        conn.request("POST", "/endpoints/echo/invocations-bidirectional-stream", body=EVENT1)
        resp = conn.getresponse()
        out = resp.status, resp.getheader("x-amzn-errortype"), json.loads(resp.read())
        conn.close()
        return out

    status, etype, body = await asyncio.to_thread(call)
    assert status == 400
    assert etype == "InputValidationError"
    assert "needs HTTP/2" in body["Message"]
