"""The launch post's flow: real clients speak to the speech model through the real gateway.

The official bidi client (``aws-sdk-sagemaker-runtime-http2`` + ``AWSCRTHTTPClient``)
streams a WAV in chunks with ``ModelInvocationPath="v1/listen"`` and
``ModelQueryString="model=nova-3..."``, sends ``{"type":"CloseStream"}`` as a
UTF8 part and reads Deepgram's messages back; the unmodified ``deepgram-sdk``
does the same through the gateway's WebSocket front door.  The endpoint is a
``StaticRouter`` entry pointing at the shared ``bidistream serve speech``
process (tests/speech_audio.py), so only the gateway is built per test.
Bad queries show the error each client surfaces, while a healthy session
running at the same time still gets its transcript.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from aws_sdk_sagemaker_runtime_http2.client import AsyncSageMakerRuntimeHTTP2Client
from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    ModelError,
    RequestStreamEventPayloadPart,
    ResponseStreamEventPayloadPart,
)
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment

from tests.speech_audio import pcm, silence, speech_server, synth
from tests.support.aws import Stack, bin_part, gateway_stack, official_client, text_part
from tests.support.waiting import eventually, scaled

BALANCE = "i need help with my account balance"
CANCEL = "i would like to cancel my subscription"
CLOSE_STREAM = '{"type":"CloseStream"}'
T = scaled(30.0)  # bound for one whole transcription session (decodes share 2 cores with other tests)


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    urls = {"speech": f"http://127.0.0.1:{speech_server()}"}
    async with gateway_stack(tmp_path / "gw", {}, urls=urls) as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncSageMakerRuntimeHTTP2Client:
    return await official_client(stack.gateway)


def chunks(data: bytes, size: int = 8000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def aws_listen(
    client: AsyncSageMakerRuntimeHTTP2Client, query: str, audio: list[bytes], *, pace: float = 0.02
) -> list[dict[str, Any]]:
    """Stream ``audio`` parts, then CloseStream; every message the endpoint sends, decoded."""
    stream = await asyncio.wait_for(
        client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(
                endpoint_name="speech", model_invocation_path="v1/listen", model_query_string=query
            )
        ),
        T,
    )
    got: list[dict[str, Any]] = []

    async def read() -> None:
        _, receiver = await stream.await_output()
        while (ev := await receiver.receive()) is not None:
            assert isinstance(ev, ResponseStreamEventPayloadPart), ev
            assert ev.value.data_type == "UTF8", "Deepgram messages are text"
            got.append(json.loads(ev.value.bytes_))

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(T):
            for part in audio:
                await stream.input_stream.send(RequestStreamEventPayloadPart(value=bin_part(part)))
                await asyncio.sleep(pace)
            await stream.input_stream.send(RequestStreamEventPayloadPart(value=text_part(CLOSE_STREAM)))
            await stream.input_stream.close()
            await reader  # remaining finals, Metadata, then the model's close ends the stream
    finally:
        reader.cancel()
    return got


def final_text(messages: list[dict[str, Any]]) -> str:
    return " ".join(
        m["channel"]["alternatives"][0]["transcript"]
        for m in messages
        if m["type"] == "Results" and m["is_final"]
    ).lower()


@pytest.mark.parametrize(
    ("query", "as_wav"),
    [
        ("model=nova-3&interim_results=true", True),  # container format read from the WAV header
        ("model=nova-3&encoding=linear16&sample_rate=16000", False),  # raw PCM declared in the query
    ],
)
async def test_aws_client_streams_wav_through_gateway(
    client: AsyncSageMakerRuntimeHTTP2Client, query: str, as_wav: bool
) -> None:
    wav = synth(BALANCE)
    audio = wav.read_bytes() if as_wav else pcm(wav)[0]
    # 0.25 s of audio every 0.1 s: faster than real time, slow enough that the
    # first interim (0.6 s after onset) starts before the final supersedes it.
    messages = await aws_listen(client, query, chunks(audio + silence(0.6)), pace=0.1)
    results = [m for m in messages if m["type"] == "Results"]
    finals = [m for m in results if m["is_final"] and m["channel"]["alternatives"][0]["transcript"]]
    assert finals and all(m["speech_final"] or m["from_finalize"] for m in finals)
    text = final_text(messages)
    assert "help" in text and "balance" in text
    words = [w["word"] for m in finals for w in m["channel"]["alternatives"][0]["words"]]
    assert words[:3] == ["i", "need", "help"]
    interims = [m for m in results if not m["is_final"]]
    assert bool(interims) == ("interim_results=true" in query)
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["duration"] == pytest.approx(len(pcm(wav)[0] + silence(0.6)) / 32000, abs=0.05)


async def test_aws_bad_query_is_model_error_424_and_other_session_untouched(
    client: AsyncSageMakerRuntimeHTTP2Client, stack: Stack
) -> None:
    healthy = asyncio.create_task(
        aws_listen(client, "model=nova-3", chunks(synth(CANCEL).read_bytes() + silence(0.6)), pace=0.05)
    )
    # The healthy session is live on the gateway while the bad one is refused.
    await eventually(lambda: stack.gateway.live_sessions == 1, timeout=10)
    stream = await asyncio.wait_for(
        client.invoke_endpoint_with_bidirectional_stream(
            InvokeEndpointWithBidirectionalStreamInput(
                endpoint_name="speech", model_invocation_path="v1/listen", model_query_string="model=nope"
            )
        ),
        T,
    )
    with pytest.raises(ModelError) as info:
        await asyncio.wait_for(stream.await_output(), T)
    assert info.value.original_status_code == 400
    assert "model" in str(info.value.message) and "nope" in str(info.value.message)
    text = final_text(await asyncio.wait_for(healthy, T))
    assert "cancel" in text and "subscription" in text


def front_door(stack: Stack) -> AsyncDeepgramClient:
    """The SDK as a Deepgram user builds it, with only the environment pointed at the gateway."""
    base = f"127.0.0.1:{stack.gateway.port}/endpoints/speech/ws"
    env = DeepgramClientEnvironment(
        base=f"https://{base}",
        production=f"wss://{base}",
        agent=f"wss://{base}",
        agent_rest=f"https://{base}",
    )
    return AsyncDeepgramClient(api_key="test-key", environment=env)


async def sdk_listen(socket: Any, audio: bytes) -> list[Any]:
    for part in chunks(audio, 3200):
        await socket.send_media(part)
        await asyncio.sleep(0.02)
    await socket.send_close_stream()
    out: list[Any] = []
    async with asyncio.timeout(T):
        async for message in socket:
            out.append(message)
    return out


async def test_deepgram_sdk_through_gateway_ws_front_door(stack: Stack) -> None:
    data, _ = pcm(synth(BALANCE))
    async with front_door(stack).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, interim_results=True, punctuate=True
    ) as socket:
        messages = await sdk_listen(socket, data + silence(0.6))
    results = [m for m in messages if m.type == "Results"]
    finals = [m for m in results if m.is_final and m.channel.alternatives[0].transcript]
    assert any(not m.is_final for m in results), "no interim results"
    text = " ".join(m.channel.alternatives[0].transcript for m in finals).lower()
    assert "help" in text and "balance" in text
    assert all(w.start < w.end for m in finals for w in m.channel.alternatives[0].words)
    assert messages[-1].type == "Metadata"


async def test_deepgram_sdk_bad_query_through_front_door_is_refused_like_deepgram(stack: Stack) -> None:
    """The front door answers a refused upgrade as the instance did: the SDK raises its ApiError 400,
    exactly as it does talking to the model server (or Deepgram) directly (issue 12)."""
    data, _ = pcm(synth(CANCEL))
    client = front_door(stack)
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as good:
        healthy = asyncio.create_task(sdk_listen(good, data + silence(0.6)))
        with pytest.raises(ApiError) as info:
            async with client.listen.v1.connect(model="nope"):
                pass
        assert info.value.status_code == 400
        # The refusal carries the instance's body and Deepgram's headers (a raw client reads them).
        ctx = ssl.create_default_context(cafile=str(stack.gateway.ca_path))
        url = f"wss://127.0.0.1:{stack.gateway.port}/endpoints/speech/ws/v1/listen?model=nope"
        with pytest.raises(websockets.InvalidStatus) as raw:
            async with websockets.connect(url, ssl=ctx):
                pass
        response = raw.value.response
        assert response.status_code == 400 and "nope" in response.headers["dg-error"]
        body = json.loads(response.body)
        assert body["err_code"] == "INVALID_QUERY_PARAMETER" and "nope" in body["err_msg"]
        messages = await asyncio.wait_for(healthy, T)
    text = " ".join(
        m.channel.alternatives[0].transcript for m in messages if m.type == "Results" and m.is_final
    ).lower()
    assert "cancel" in text and "subscription" in text
    assert messages[-1].type == "Metadata"
