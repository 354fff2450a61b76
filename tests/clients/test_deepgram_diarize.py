"""Deepgram's ``diarize=true`` with the unmodified ``deepgram-sdk``: live and pre-recorded.

A two-voice conversation made at test time; at least 90 % of the words must
carry the right speaker under the best label mapping (specs/speech-models.md §3.5).
"""

from __future__ import annotations

import asyncio
from typing import Any

from deepgram import AsyncDeepgramClient

from tests.clients.test_deepgram_sdk import collect, environment
from tests.speech_audio import conversation, pcm, speaker_accuracy, speech_server

MIN_ACCURACY = 0.9


def client() -> AsyncDeepgramClient:
    return AsyncDeepgramClient(api_key="test-key", environment=environment(speech_server()))


async def test_prerecorded_diarize_speaker_per_word_and_utterance() -> None:
    path, turns = conversation()
    response: Any = await client().listen.v1.media.transcribe_file(
        request=path.read_bytes(), model="nova-3", diarize=True, punctuate=True
    )
    words = response.results.channels[0].alternatives[0].words
    assert words and all(w.speaker is not None for w in words)
    assert speaker_accuracy([(w.start, w.end, w.speaker) for w in words], turns) >= MIN_ACCURACY
    assert {u.speaker for u in response.results.utterances} == {0, 1}


async def test_prerecorded_without_diarize_has_no_speakers() -> None:
    path, _ = conversation()
    response: Any = await client().listen.v1.media.transcribe_file(request=path.read_bytes(), model="nova-3")
    assert all(w.speaker is None for w in response.results.channels[0].alternatives[0].words)


async def test_live_diarize_speaker_per_final_word() -> None:
    path, turns = conversation()
    data, _ = pcm(path)
    async with client().listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, diarize=True
    ) as socket:
        for i in range(0, len(data), 3200):
            await socket.send_media(data[i : i + 3200])
            await asyncio.sleep(0.01)
        await socket.send_close_stream()
        messages = await collect(socket, timeout=60)
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    assert words and all(w.speaker is not None for w in words)
    accuracy = speaker_accuracy([(w.start, w.end, w.speaker) for w in words], turns)
    assert accuracy >= MIN_ACCURACY, [(w.word, w.speaker) for w in words]
