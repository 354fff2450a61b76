"""The real Whisper engine: sharing an engine call never changes a transcript.

Whisper's output depends on how far its input is padded, so a batch of
utterances with different encoder windows decoded one of them differently from
decoding it alone (espeak's "goodbye": "Goodbye Goodbye" alone, "Goodbye!" beside
a 13.5 s utterance).  The scheduler only batches equal ``batch_key`` values;
these tests hold the engine to what that promise needs.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bidistream.models.speech.engines import WhisperEngine
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.weights import locate_tiny_en
from tests.speech_audio import pcm, synth


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine(locate_tiny_en(), label="tiny.en", parallelism=1, min_window=10.0)


def speech(text: str, repeat: int = 1) -> np.ndarray:
    data, _ = pcm(synth(text))
    one = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return np.concatenate([one] * repeat)


def test_batch_keys_follow_the_encoder_window(engine: WhisperEngine) -> None:
    short, also_short = speech("goodbye"), speech("thank you very much for your help today")
    long = speech("i would like to cancel my subscription", repeat=4)  # ~13.5 s
    assert engine.batch_key(short, final=True) == engine.batch_key(also_short, final=True)
    assert engine.batch_key(short, final=True) != engine.batch_key(long, final=True)
    assert engine.batch_key(short, final=True) != engine.batch_key(short, final=False)


def test_same_key_batch_decodes_each_member_as_alone(engine: WhisperEngine) -> None:
    short, also_short = speech("goodbye"), speech("thank you very much for your help today")
    alone = [engine.decode([a], final=True)[0] for a in (short, also_short)]
    together = engine.decode([short, also_short], final=True)
    assert [(t.text, t.confidence) for t in together] == [(t.text, t.confidence) for t in alone]


async def test_scheduler_never_lets_a_long_neighbour_change_a_transcript(engine: WhisperEngine) -> None:
    short = speech("goodbye")
    long = speech("i would like to cancel my subscription", repeat=4)
    alone = engine.decode([short], final=True)[0]
    sched = DecodeScheduler(engine, slots=1, batching=True)
    try:
        blocker = sched.submit(speech("hello"), final=True)  # holds the one slot
        waiting = [sched.submit(long, final=True), sched.submit(short, final=True)]
        results = await asyncio.gather(blocker, *waiting)
    finally:
        sched.close()
    assert results[2].text == alone.text and results[2].confidence == alone.confidence
    assert sched.stats.max_batch_seen == 1  # the long and the short one never shared a call
