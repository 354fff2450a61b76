"""The unmodified ``deepgram-sdk`` against ``bidistream serve speech``.

Only the SDK's ``environment`` changes (pointed at 127.0.0.1); everything
else is what a Deepgram user writes.  If the SDK is missing these tests fail
at import, on purpose.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.events import EventType
from deepgram.environment import DeepgramClientEnvironment

from tests.speech_audio import SERVER_IDLE_TIMEOUT, pcm, silence, speech_server, synth
from tests.support.waiting import scaled

SENTENCE = "i would like to cancel my subscription"


def environment(port: int) -> DeepgramClientEnvironment:
    return DeepgramClientEnvironment(
        base=f"http://127.0.0.1:{port}",
        production=f"ws://127.0.0.1:{port}",
        agent=f"ws://127.0.0.1:{port}",
        agent_rest=f"http://127.0.0.1:{port}",
    )


def async_client() -> AsyncDeepgramClient:
    return AsyncDeepgramClient(api_key="test-key", environment=environment(speech_server()))


async def collect(socket: Any, timeout: float = 30) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(scaled(timeout)):
        async for message in socket:
            out.append(message)
    return out


async def send_audio(socket: Any, data: bytes, pace: float = 0.05) -> None:
    for i in range(0, len(data), 3200):
        await socket.send_media(data[i : i + 3200])
        await asyncio.sleep(pace)


async def test_interim_and_final_results_with_word_timings() -> None:
    data, _ = pcm(synth(SENTENCE))
    client = async_client()
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=16000,
        interim_results=True,
        punctuate=True,
        vad_events=True,
        utterance_end_ms=1000,
    ) as socket:
        sender = asyncio.create_task(send_audio(socket, data + silence(1.5)))
        await sender
        await socket.send_close_stream()
        messages = await collect(socket)
    types = [m.type for m in messages]
    assert "SpeechStarted" in types and "UtteranceEnd" in types and types[-1] == "Metadata"
    results = [m for m in messages if m.type == "Results"]
    interims = [m for m in results if not m.is_final]
    finals = [m for m in results if m.is_final and m.channel.alternatives[0].transcript]
    assert interims, "no interim results"
    assert len(finals) == 1 and finals[0].speech_final
    alt = finals[0].channel.alternatives[0]
    assert "cancel" in alt.transcript.lower() and "subscription" in alt.transcript.lower()
    words = {w.word: w for w in alt.words}
    # the speech lies between 0.25 s (lead-in) and the end of the synthesised audio
    speech_end = (len(data) - len(silence(0.5))) / 32000
    assert 0.15 <= alt.words[0].start < alt.words[0].end <= words["cancel"].start + 0.01
    assert words["subscription"].end <= speech_end + 0.3
    assert all(w.start <= w.end for w in alt.words)
    assert all(a.start <= b.start for a, b in zip(alt.words, alt.words[1:], strict=False))
    assert messages[-1].duration == pytest.approx((len(data) + len(silence(1.5))) / 32000, abs=0.05)


async def test_finalize_and_keepalive() -> None:
    data, _ = pcm(synth("thank you very much for your help today", tail=0.0))
    client = async_client()
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as socket:
        # KeepAlive keeps the session open past the idle timeout
        began = time.monotonic()
        while time.monotonic() - began < SERVER_IDLE_TIMEOUT + 1:
            await socket.send_keep_alive()
            await asyncio.sleep(0.5)
        await send_audio(socket, data[: len(data) - 4000], pace=0.0)
        await socket.send_finalize()
        final = None
        async with asyncio.timeout(scaled(20)):
            while final is None:
                msg = await socket.recv()
                if getattr(msg, "type", None) == "Results" and msg.is_final:
                    final = msg
        assert final.from_finalize is True
        assert "thank you" in final.channel.alternatives[0].transcript.lower()
        await socket.send_close_stream()
        rest = await collect(socket)
    assert rest[-1].type == "Metadata"


def test_sync_client_close_stream_and_events() -> None:
    data, _ = pcm(synth("goodbye"))
    client = DeepgramClient(api_key="k", environment=environment(speech_server()))
    seen: list[Any] = []
    errors: list[Any] = []
    with client.listen.v1.connect(model="nova-2", encoding="linear16", sample_rate="16000") as socket:
        socket.on(EventType.MESSAGE, seen.append)
        socket.on(EventType.ERROR, errors.append)
        for i in range(0, len(data), 6400):
            socket.send_media(data[i : i + 6400])
        socket.send_close_stream()
        socket.start_listening()
    shown = [(m.type, m.channel.alternatives[0].transcript if m.type == "Results" else "") for m in seen]
    assert not errors, (errors, shown)
    assert seen[-1].type == "Metadata", shown
    # Letters only: Whisper may write the one word "Goodbye!" or "Good-bye."
    assert any(
        kind == "Results" and "goodbye" in re.sub("[^a-z]", "", text.lower()) for kind, text in shown
    ), shown


async def test_idle_close_surfaces_as_connection_closed_error() -> None:
    client = async_client()
    errors: list[Exception] = []
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as socket:
        socket.on(EventType.ERROR, errors.append)
        began = time.monotonic()
        await asyncio.wait_for(socket.start_listening(), SERVER_IDLE_TIMEOUT + scaled(5))
        waited = time.monotonic() - began
    assert len(errors) == 1 and isinstance(errors[0], websockets.ConnectionClosedError)
    assert errors[0].rcvd is not None and errors[0].rcvd.code == 1011
    assert "NET-0001" in errors[0].rcvd.reason
    assert SERVER_IDLE_TIMEOUT - 0.6 < waited < SERVER_IDLE_TIMEOUT + scaled(2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "nova-3", "language": "de"},
        {"model": "not-a-model"},
        {"model": "nova-3", "encoding": "linear16"},  # sample_rate missing
        {"model": "nova-3", "endpointing": "soon"},
    ],
)
async def test_bad_parameters_raise_api_error_400(kwargs: dict[str, Any]) -> None:
    client = async_client()
    with pytest.raises(ApiError) as info:
        async with client.listen.v1.connect(**kwargs):
            pass
    assert info.value.status_code == 400


async def test_non_audio_stream_errors_while_other_session_is_untouched() -> None:
    data, _ = pcm(synth(SENTENCE))
    client = async_client()
    async with (
        client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as good,
        client.listen.v1.connect(model="nova-3") as bad,
    ):
        errors: list[Exception] = []
        bad.on(EventType.ERROR, errors.append)
        sender = asyncio.create_task(send_audio(good, data + silence(1.0), pace=0.02))
        await bad.send_media(b"<html>definitely not audio</html>" * 20)
        await asyncio.wait_for(bad.start_listening(), scaled(10))
        assert len(errors) == 1 and isinstance(errors[0], websockets.ConnectionClosedError)
        assert errors[0].rcvd is not None and errors[0].rcvd.code == 1002
        await sender
        await good.send_close_stream()
        messages = await collect(good)
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    assert any("subscription" in m.channel.alternatives[0].transcript.lower() for m in finals)
    assert messages[-1].type == "Metadata"
