"""bidistream.client: the session SDK over the official client, against the real stack."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bidistream.client import Client
from bidistream.errors import ModelError, ModelStreamError, NotFoundError
from bidistream.frames import FrameKind
from bidistream.models.echo import EchoModel
from tests.clients.test_aws_errors import CrashingModel, RefusingModel
from tests.support.aws import Stack, gateway_stack


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("SSL_CERT_FILE", "")  # restored afterwards: Client(ca_file=...) sets it
    models = {"echo": EchoModel(), "refusing": RefusingModel(), "crashing": CrashingModel()}
    async with gateway_stack(tmp_path / "gw", models) as s:
        yield s


async def test_session_send_and_iterate(stack: Stack) -> None:
    async with Client(stack.gateway.url, ca_file=str(stack.gateway.ca_path)) as client:
        async with client.session("echo") as s:
            await s.send("hello")
            await s.send(b"\x00\x01")
            frames = []
            async for frame in s:
                frames.append(frame)
                if len(frames) == 2:
                    break
            assert s.invoked_variant == "AllTraffic"
        assert [(f.data, f.kind) for f in frames] == [
            (b"hello", FrameKind.TEXT),
            (b"\x00\x01", FrameKind.BINARY),
        ]
        # the same client serves another session
        async with client.session("echo") as s2:
            await s2.send("again")
            await s2.close_input()
            assert [f.as_text() async for f in s2] == ["again"]


async def test_errors_are_ours(stack: Stack) -> None:
    async with Client(stack.gateway.url, ca_file=str(stack.gateway.ca_path)) as client:
        # NotFound arrives as the most specific class (it used to be a bare InputValidationError).
        with pytest.raises(NotFoundError, match="not found"):
            async with client.session("missing"):
                pass
        with pytest.raises(ModelError) as info:
            async with client.session("refusing"):
                pass
        assert info.value.original_status == 400
        async with client.session("crashing") as s:
            await s.send("x")
            assert (await s.receive()) is not None
            with pytest.raises(ModelStreamError, match="crashed") as err:
                await s.receive()
            assert err.value.code == "1011"
