"""One live session (LiveTranscriber) fed frames, with a stand-in engine and VAD.

The engine and the VAD are replaced (this is a unit test of the session
layer); the scheduler, endpointer and Deepgram message shapes are the real
ones.  Audio is a loud constant for "speech" and zeros for silence, and the
stand-in VAD calls a 512-sample frame speech when it is loud.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest

from bidistream.errors import IdleTimeoutError, InstanceFullError, wire_form
from bidistream.frames import Frame
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.endpointing import EndpointConfig, Endpointer, UtteranceDone
from bidistream.models.speech.engines import Engine, Transcript, Word, drop_words_before
from bidistream.models.speech.live import BacklogExceededError, LiveConfig, LiveTranscriber
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.vad import FRAME_SAMPLES
from tests.support.waiting import eventually, scaled

INFO = dg.ModelInfo("bidistream-test", "1", "fake", "00000000-0000-0000-0000-000000000000")


class LoudVad:
    """Speech probability 0.9 for a loud 512-sample frame, 0.02 otherwise."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._pending, samples])
        n = len(buf) // FRAME_SAMPLES
        self._pending = buf[n * FRAME_SAMPLES :]
        frames = buf[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        return np.where(np.abs(frames).max(axis=1) > 0.05, 0.9, 0.02).astype(np.float32)


class RecordingEngine(Engine):
    """Records each decode; one word per 0.25 s of loud audio; can be held shut."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        out = []
        for audio in batch:
            with self.lock:
                self.calls.append((len(audio), final))
            loud = np.flatnonzero(np.abs(audio) > 0.05)
            if not len(loud):
                out.append(Transcript.empty())
                continue
            t0, t1 = loud[0] / 16000, (loud[-1] + 1) / 16000
            n = max(1, int((t1 - t0) / 0.25))
            step = (t1 - t0) / n
            words = tuple(
                Word("word", round(t0 + i * step, 3), round(t0 + (i + 1) * step, 3), 0.9, "word")
                for i in range(n)
            )
            out.append(Transcript(" ".join(["word"] * n) + ".", 0.9, words))
        return out


def speech(frames: int) -> np.ndarray:
    return np.full(frames * FRAME_SAMPLES, 0.3, np.float32)


def quiet(frames: int) -> np.ndarray:
    return np.zeros(frames * FRAME_SAMPLES, np.float32)


def pcm16(*parts: np.ndarray) -> bytes:
    return (np.concatenate(parts) * 32767).astype("<i2").tobytes()


def transcriber(
    engine: Engine, config: LiveConfig | None = None, **options: Any
) -> tuple[LiveTranscriber, DecodeScheduler]:
    opts = dg.ListenOptions(
        encoding="linear16", sample_rate=16000, **({"interim_results": True, "endpointing_ms": 10} | options)
    )
    sched = DecodeScheduler(engine, slots=2)
    live = LiveTranscriber(opts, sched, LoudVad(), INFO, "req-1", config)  # type: ignore[arg-type]
    return live, sched


async def frames_of(data: bytes, *, then: list[str] = (), chunk: int = 3200) -> AsyncIterator[Frame]:  # type: ignore[assignment]
    for i in range(0, len(data), chunk):
        yield Frame.binary(data[i : i + chunk])
    for text in then:
        yield Frame.text(text)


async def messages(live: LiveTranscriber, frames: AsyncIterator[Frame]) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(scaled(20)):
        async for frame in live.run(frames):
            out.append(json.loads(frame.data))
    return out


def finals(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "Results" and m["is_final"]]


CLOSE = '{"type":"CloseStream"}'


async def test_final_reuses_the_decode_started_at_the_pause() -> None:
    engine = RecordingEngine()
    live, sched = transcriber(engine)
    msgs = await messages(live, frames_of(pcm16(quiet(10), speech(30), quiet(20)), then=[CLOSE]))
    final_calls = [n for n, final in engine.calls if final]
    # one final decode only: the one started at the first quiet frame, not a second at the endpoint
    assert len(final_calls) == 1
    (final,) = finals(msgs)
    assert final["speech_final"] and final["channel"]["alternatives"][0]["transcript"]
    # it decoded up to the pause; the Results message still covers the endpoint window
    assert final_calls[0] / 16000 < final["duration"]
    assert msgs[-1]["type"] == "Metadata"
    sched.close()


async def test_speech_resuming_after_a_short_pause_gives_one_final_for_all_of_it() -> None:
    engine = RecordingEngine()
    live, sched = transcriber(engine)
    audio = pcm16(quiet(10), speech(20), quiet(3), speech(20), quiet(20))
    msgs = await messages(live, frames_of(audio, then=[CLOSE]))
    (final,) = finals(msgs)
    assert final["speech_final"]
    words = final["channel"]["alternatives"][0]["words"]
    # the speculative decode of the first half was dropped: the final has both halves
    assert words[0]["start"] < 0.35 + 0.05 and words[-1]["end"] > (10 + 20 + 3 + 19) * FRAME_SAMPLES / 16000
    sched.close()


async def test_first_interim_is_asked_first_interim_after_onset() -> None:
    engine = RecordingEngine()
    live, sched = transcriber(engine)
    await messages(live, frames_of(pcm16(quiet(10), speech(60), quiet(20)), then=[CLOSE]))
    interims = [n for n, final in engine.calls if not final]
    assert interims, engine.calls
    preroll = EndpointConfig().preroll_ms * 16
    # the first interim decodes the preroll plus first_interim of speech (one 100 ms chunk of slack)
    due = LiveConfig().first_interim
    assert due <= (interims[0] - preroll) / 16000 <= due + 0.1
    sched.close()


async def test_a_client_that_does_not_read_stops_the_session_reading() -> None:
    engine = RecordingEngine()
    live, sched = transcriber(engine, LiveConfig(max_queued_messages=4))
    one = np.concatenate([speech(16), quiet(16)])
    data = pcm16(*([one] * 40))
    pulled = 0
    total = -(-len(data) // 3200)

    async def counting() -> AsyncIterator[Frame]:
        nonlocal pulled
        async for frame in frames_of(data):
            pulled += 1
            yield frame

    agen = live.run(counting())
    first = asyncio.ensure_future(anext(agen))  # start the session, then stop reading
    await first
    await eventually(lambda: live._out.full)
    # A frame that makes no message (silence) is still taken; the first that makes one
    # waits.  Whatever the loop does next, the reader stays put.
    for _ in range(200):
        await asyncio.sleep(0)
    seen = pulled
    for _ in range(200):
        await asyncio.sleep(0)
    assert pulled == seen < total / 4  # the reader waits: the socket read pauses here
    await agen.aclose()
    sched.close()


async def test_backlog_beyond_the_limit_is_refused_with_deepgrams_error() -> None:
    engine = RecordingEngine()
    engine.gate.clear()  # decodes never finish: audio piles up as a too-fast client makes it
    live, sched = transcriber(engine, LiveConfig(max_backlog_seconds=3.0))
    one = np.concatenate([speech(16), quiet(16)])
    got: list[dict[str, Any]] = []
    try:
        with pytest.raises(BacklogExceededError) as caught:
            async with asyncio.timeout(scaled(10)):
                async for frame in live.run(frames_of(pcm16(*([one] * 20)))):
                    got.append(json.loads(frame.data))
    finally:
        engine.gate.set()
        sched.close()
    assert got[-1]["type"] == "Error" and got[-1]["variant"] == "BacklogExceeded"
    assert "faster than it can be transcribed" in got[-1]["description"]
    assert wire_form(caught.value).ws_close == 1013


async def test_slow_decodes_do_not_pause_the_read_the_backlog_limit_does() -> None:
    # A client that reads keeps being read while decodes lag (its pings must be
    # answered); the session's backlog limit is what stops it.
    engine = RecordingEngine()
    engine.gate.clear()
    live, sched = transcriber(engine, LiveConfig(max_queued_messages=2, max_backlog_seconds=3.0))
    one = np.concatenate([speech(16), quiet(16)])
    got: list[dict[str, Any]] = []
    try:
        with pytest.raises(BacklogExceededError):
            async with asyncio.timeout(scaled(10)):
                async for frame in live.run(frames_of(pcm16(*([one] * 20)))):
                    got.append(json.loads(frame.data))
    finally:
        engine.gate.set()
        sched.close()
    assert got[-1]["type"] == "Error"


async def test_audio_still_being_transcribed_keeps_the_session_from_idling_out() -> None:
    engine = RecordingEngine(delay=scaled(0.8))
    live, sched = transcriber(engine, LiveConfig(idle_timeout=scaled(0.2)))
    final_seen = asyncio.Event()

    async def frames() -> AsyncIterator[Frame]:
        async for frame in frames_of(pcm16(quiet(10), speech(20), quiet(20))):
            yield frame
        await final_seen.wait()  # the client waits for its transcript, sending nothing
        yield Frame.text(CLOSE)

    got: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(20)):
        async for frame in live.run(frames()):
            msg = json.loads(frame.data)
            got.append(msg)
            if (
                msg["type"] == "Results"
                and msg["is_final"]
                and msg["channel"]["alternatives"][0]["transcript"]
            ):
                final_seen.set()
    assert final_seen.is_set() and got[-1]["type"] == "Metadata"
    sched.close()


async def test_idle_without_pending_work_still_closes() -> None:
    live, sched = transcriber(RecordingEngine(), LiveConfig(idle_timeout=scaled(0.2)))

    async def stalled() -> AsyncIterator[Frame]:
        yield Frame.text('{"type":"KeepAlive"}')
        await asyncio.Event().wait()

    with pytest.raises(IdleTimeoutError):
        await messages(live, stalled())
    sched.close()


async def test_scheduler_refuses_beyond_its_waiting_limit() -> None:
    engine = RecordingEngine()
    engine.gate.clear()
    sched = DecodeScheduler(engine, slots=1, max_waiting=2, batching=False)
    try:
        jobs = [sched.submit(np.zeros(160, np.float32), final=True) for _ in range(3)]  # 1 runs, 2 wait
        with pytest.raises(InstanceFullError):
            sched.submit(np.zeros(160, np.float32), final=True)
        assert sched.backlog_seconds == pytest.approx(2 * 160 / 16000)
    finally:
        engine.gate.set()
    await asyncio.gather(*jobs)
    sched.close()


# ----------------------------------------------------------------------------- the length cap


def test_cap_cuts_at_the_quietest_frame_and_carries_an_overlap() -> None:
    config = EndpointConfig(max_utterance_ms=2000, cap_search_ms=1500, cap_overlap_ms=200)
    ep = Endpointer(config)
    probs = [0.02] * 5 + [0.9] * 45 + [0.4] + [0.9] * 30  # a dip (still voice) at frame 50
    events = [e for e in ep.feed(probs) if isinstance(e, UtteranceDone)]
    (cut,) = events
    assert cut.cut and not cut.speech_final
    assert cut.end == 50 * FRAME_SAMPLES + FRAME_SAMPLES // 2
    (rest,) = ep.flush()
    assert isinstance(rest, UtteranceDone) and not rest.cut
    assert rest.start == cut.end - 200 * 16 and rest.words_from == cut.end


def test_words_of_the_overlap_are_dropped_and_the_first_half_has_no_full_stop() -> None:
    words = (
        Word("before", 0.0, 0.18, 0.9, "before"),
        Word("after", 0.22, 0.5, 0.9, "after."),
    )
    kept = drop_words_before(Transcript("before after.", 0.9, words), 0.2)
    assert [w.word for w in kept.words] == ["after"] and kept.text == "After."
    first_half = Transcript("it goes on.", 0.9, (Word("on", 0.1, 0.2, 0.9, "on."),)).without_final_stop()
    assert first_half.text == "it goes on" and first_half.words[0].punctuated_word == "on"


def test_numerals_join_spoken_digit_runs_only() -> None:
    spoken = "My number is four five five. One cat.".split()
    words = tuple(Word(w.strip(".").lower(), i * 0.3, i * 0.3 + 0.25, 0.9, w) for i, w in enumerate(spoken))
    out = dg.numerals(Transcript(" ".join(spoken), 0.9, words))
    assert out.text == "My number is 455. One cat."
    assert [w.punctuated_word for w in out.words] == ["My", "number", "is", "455.", "One", "cat."]
    assert out.words[3].start == pytest.approx(0.9) and out.words[3].end == pytest.approx(5 * 0.3 + 0.25)


async def test_a_capped_utterance_is_cut_at_the_dip_without_a_full_stop_or_doubled_words() -> None:
    engine = RecordingEngine()
    live, sched = transcriber(engine, LiveConfig(max_utterance_ms=2000))
    # continuous speech with one quiet frame (a breath) at frame 50, then on past the cap
    audio = pcm16(quiet(10), speech(40), quiet(1), speech(40), quiet(20))
    msgs = await messages(live, frames_of(audio, then=[CLOSE]))
    first, second = finals(msgs)
    assert not first["speech_final"] and second["speech_final"]
    cut = 50 * FRAME_SAMPLES + FRAME_SAMPLES // 2
    assert first["start"] + first["duration"] == pytest.approx(cut / 16000, abs=0.002)
    assert not first["channel"]["alternatives"][0]["transcript"].endswith(".")
    # the second decode re-read 300 ms before the cut; none of those words come back
    assert second["start"] < cut / 16000
    assert all(
        w["start"] + w["end"] >= 2 * cut / 16000 for w in second["channel"]["alternatives"][0]["words"]
    )
    sched.close()


async def test_utterance_end_follows_a_final_decoded_after_all_the_audio_arrived() -> None:
    # Audio sent faster than real time is all in before the final's decode ends; the
    # word gap is already there, so UtteranceEnd must follow the final, not wait for audio.
    engine = RecordingEngine(delay=scaled(0.3))
    live, sched = transcriber(engine, utterance_end_ms=1000)
    got = await messages(live, frames_of(pcm16(quiet(10), speech(20), quiet(60)), then=[CLOSE]))
    kinds = [m["type"] for m in got]
    assert "UtteranceEnd" in kinds, kinds
    final_at = max(i for i, m in enumerate(got) if m["type"] == "Results" and m["is_final"])
    assert kinds.index("UtteranceEnd") == final_at + 1 and kinds[-1] == "Metadata"
    words = finals(got)[0]["channel"]["alternatives"][0]["words"]
    assert got[final_at + 1]["last_word_end"] == pytest.approx(words[-1]["end"], abs=0.01)
    sched.close()
