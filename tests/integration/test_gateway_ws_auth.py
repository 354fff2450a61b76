"""The WebSocket front door under ``--credentials`` / ``--api-key`` (issue 10.4), with raw clients.

``websockets`` is the client; presigned URLs and signed upgrades are made by botocore's own
SigV4 signers (an implementation apart from ours), so the check is against AWS's algorithm,
not against itself.  Every refusal is an HTTP status before the 101, and a healthy
authenticated session on the same gateway keeps streaming.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from bidistream.models.echo import EchoModel
from bidistream.sigv4 import CredentialStore
from tests.fixtures.models import PathQueryModel
from tests.support.aws import AKID, SECRET, Stack, gateway_stack

API_KEY = "k-3f9a-local"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    creds = CredentialStore({AKID: SECRET}, api_keys=frozenset({API_KEY}))
    async with gateway_stack(
        tmp_path / "gw", {"echo": EchoModel(), "pathquery": PathQueryModel()}, credentials=creds
    ) as s:
        yield s


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.gateway.ca_path))


def base(stack: Stack, tail: str = "/endpoints/echo/ws") -> str:
    return f"wss://127.0.0.1:{stack.gateway.port}{tail}"


def presign(url: str, *, service: str = "sagemaker", region: str = "us-east-1", expires: int = 60) -> str:
    """botocore's query-string SigV4 over the https form of a wss URL."""
    request = AWSRequest(method="GET", url=url.replace("wss://", "https://", 1))
    SigV4QueryAuth(Credentials(AKID, SECRET), service, region, expires=expires).add_auth(request)
    return request.url.replace("https://", "wss://", 1)


def signed_headers(url: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url.replace("wss://", "https://", 1))
    SigV4Auth(Credentials(AKID, SECRET), "sagemaker", "us-east-1").add_auth(request)
    return {k: v for k, v in request.headers.items() if k.lower() != "host"}


async def echoes(ws: ClientConnection, text: str = "hi") -> bool:
    await ws.send(text)
    return await ws.recv() == text


async def refused(stack: Stack, url: str, **kw: object) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, ssl=tls(stack), **kw):  # type: ignore[arg-type]
            pass
    return info.value.response.status_code


async def test_no_credentials_is_401_before_the_upgrade_and_a_healthy_session_streams(stack: Stack) -> None:
    async with connect(
        base(stack), ssl=tls(stack), additional_headers={"Authorization": f"Bearer {API_KEY}"}
    ) as ok:
        assert await echoes(ok, "before")
        assert await refused(stack, base(stack)) == 401
        assert await refused(stack, base(stack, "/endpoints/nope/ws")) == 401  # no route probing either
        assert await echoes(ok, "after")


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer"])
async def test_api_key_in_the_authorization_header(stack: Stack, scheme: str) -> None:
    async with connect(
        base(stack), ssl=tls(stack), additional_headers={"Authorization": f"{scheme} {API_KEY}"}
    ) as ws:
        assert await echoes(ws)


async def test_api_key_as_the_token_subprotocol_for_browsers(stack: Stack) -> None:
    protocols = [Subprotocol("token"), Subprotocol(API_KEY)]
    async with connect(base(stack), ssl=tls(stack), subprotocols=protocols) as ws:
        assert ws.subprotocol == "token"
        assert await echoes(ws)


async def test_wrong_key_is_403(stack: Stack) -> None:
    assert await refused(stack, base(stack), additional_headers={"Authorization": "Bearer nope"}) == 403
    protocols = [Subprotocol("token"), Subprotocol("nope")]
    assert await refused(stack, base(stack), subprotocols=protocols) == 403
    assert await refused(stack, base(stack), additional_headers={"Authorization": "Basic eDp5"}) == 403


async def test_presigned_url_streams_and_the_model_never_sees_the_signature(stack: Stack) -> None:
    url = presign(base(stack, "/endpoints/pathquery/ws/v1/listen?model=nova-3"))
    assert "X-Amz-Signature=" in url
    async with connect(url, ssl=tls(stack)) as ws:
        await ws.send("x")
        seen = json.loads(await ws.recv())
    assert seen["path"] == "v1/listen" and seen["raw_query"] == "model=nova-3"


async def test_signed_upgrade_headers_stream(stack: Stack) -> None:
    url = base(stack)
    async with connect(url, ssl=tls(stack), additional_headers=signed_headers(url)) as ws:
        assert await echoes(ws)


@pytest.mark.parametrize(
    ("service", "region"),
    [("s3", "us-east-1"), ("execute-api", "us-east-1"), ("sagemaker", "eu-west-1")],
)
async def test_a_signature_for_another_scope_is_403(stack: Stack, service: str, region: str) -> None:
    assert await refused(stack, presign(base(stack), service=service, region=region)) == 403


async def test_a_tampered_or_expired_presigned_url_is_403(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = presign(base(stack))
    assert await refused(stack, url.replace("/endpoints/echo/ws", "/endpoints/pathquery/ws")) == 403
    assert await refused(stack, url + "&model=extra") == 403
    short = presign(base(stack), expires=1)
    real = time.time
    monkeypatch.setattr("bidistream.sigv4.time.time", lambda: real() + 5)
    assert await refused(stack, short) == 403


async def test_without_credentials_the_door_stays_open_and_strips_nothing_it_needs(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path / "open", {"echo": EchoModel()}) as s:
        async with connect(base(s), ssl=tls(s)) as ws:
            assert await echoes(ws)
