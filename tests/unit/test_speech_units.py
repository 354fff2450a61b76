"""Sans-I/O layers of the speech model: protocol, endpointing, audio, scheduler."""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidistream.errors import ModelError, wire_form
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.audio import AudioDecoder, AudioFormatError, Resampler
from bidistream.models.speech.endpointing import (
    EndpointConfig,
    Endpointer,
    SpeechBegan,
    SpeechPaused,
    SpeechResumed,
    UtteranceDone,
)
from bidistream.models.speech.engines import Engine, Transcript, Word, clamp_start
from bidistream.models.speech.model import PROFILE_ALIASES
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.vad import FRAME_SAMPLES
from tests.support.waiting import eventually, scaled

# ----------------------------------------------------------------------------- protocol


def parse(query: str) -> dg.ListenOptions:
    from urllib.parse import parse_qsl

    return dg.parse_listen_query(parse_qsl(query, keep_blank_values=True), PROFILE_ALIASES)


def test_query_defaults_and_case_insensitive_booleans() -> None:
    opts = parse("model=nova-3&interim_results=TRUE&punctuate=False&vad_events=1&tag=a&tag=b")
    assert opts.profile == "default" and opts.interim_results and not opts.punctuate and opts.vad_events
    # Deepgram's default endpointing is 10 ms (the endpointer floors it, see EndpointConfig)
    assert opts.endpointing_ms == 10 and opts.tags == ("a", "b") and opts.encoding is None


def test_query_profiles_and_endpointing_false() -> None:
    assert parse("model=whisper-base").profile == "accurate"
    assert parse("model=pocketsphinx").profile == "light"
    assert parse("model=nova-2-phonecall").profile == "default"
    assert parse("model=nova-3&endpointing=false").endpointing_ms is None
    assert parse("model=nova-3&endpointing=500").endpointing_ms == 500


@pytest.mark.parametrize(
    "query",
    [
        "model=nova-9",
        "model=nova-3&encoding=flac&sample_rate=1",
        "model=nova-3&sample_rate=x",
        "model=nova-3&channels=0",
        "model=nova-3&utterance_end_ms=1000",
        "model=nova-3&bogus=1",
    ],
)
def test_bad_query_has_deepgram_error_body(query: str) -> None:
    with pytest.raises(dg.DeepgramQueryError) as info:
        parse(query)
    assert wire_form(info.value).http_status == 400
    assert info.value.detail is not None
    assert set(info.value.detail) == {"err_code", "err_msg", "request_id"}


def test_auth_token_bearer_and_subprotocol() -> None:
    keys = frozenset({"k1"})
    dg.check_auth({"Authorization": "Token k1"}, keys)
    dg.check_auth({"authorization": "bearer k1"}, keys)
    dg.check_auth({"Sec-WebSocket-Protocol": "token, k1"}, keys)
    dg.check_auth({}, frozenset())
    for headers in ({}, {"Authorization": "Token nope"}, {"Sec-WebSocket-Protocol": "token"}):
        with pytest.raises(dg.DeepgramAuthError) as info:
            dg.check_auth(headers, keys)
        assert wire_form(info.value).http_status == 401


def test_control_messages() -> None:
    assert dg.parse_control('{"type": "KeepAlive"}').type == "KeepAlive"
    with pytest.raises(ValueError, match="Unknown message type"):
        dg.parse_control('{"type":"Nope"}')
    with pytest.raises(ValueError, match="JSON"):
        dg.parse_control("{")
    assert dg.sniff_control(b'{"type":"CloseStream"}') is not None
    assert dg.sniff_control(b"\x00\x01{}") is None


def test_results_shape_is_compact_and_complete() -> None:
    tr = Transcript(
        "Hello world.", 0.9, (Word("hello", 0.1, 0.4, 0.95, "Hello"), Word("world", 0.5, 0.9, 0.85, "world."))
    )
    info = dg.ModelInfo("n", "v", "a", "u")
    msg = dg.results_message(
        tr,
        start=2.0,
        duration=1.0,
        is_final=True,
        speech_final=True,
        from_finalize=False,
        request_id="r",
        info=info,
        formatted=False,
    )
    text = dg.dumps(msg)
    assert '"type":"Results"' in text and ": " not in text
    alt = msg["channel"]["alternatives"][0]
    assert alt["transcript"] == "hello world"
    assert alt["words"][0] == {
        "word": "hello",
        "start": 2.1,
        "end": 2.4,
        "confidence": 0.95,
        "punctuated_word": "hello",
    }
    assert msg["channel_index"] == [0, 1] and msg["metadata"]["model_info"]["name"] == "n"


def test_clamp_start_moves_words_to_onset() -> None:
    tr = Transcript("a b", 1.0, (Word("a", 0.0, 0.5, 1, "a"), Word("b", 0.5, 0.9, 1, "b")))
    out = clamp_start(tr, 0.25)
    assert out.words[0].start == 0.25 and out.words[1].start == 0.5


def test_unpunctuated_output_splits_hyphenated_compounds() -> None:
    # "illdisposed" (hyphen deleted) was two word errors on the real recordings.
    word = Word("ill-disposed", 1.0, 2.0, 0.8, "ill-disposed,")
    tr = Transcript("He was ill-disposed, so-so.", 0.8, (word,))
    assert dg.format_transcript(tr, False) == "he was ill disposed so so"
    assert dg.format_transcript(tr, True) == tr.text
    msg = dg.results_message(tr, **_kw(start=10.0))
    words = msg["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in words] == ["ill", "disposed"]
    assert words[0]["start"] == 11.0 and words[0]["end"] == words[1]["start"] < words[1]["end"] == 12.0
    formatted = dg.results_message(tr, **_kw(formatted=True))
    assert [w["punctuated_word"] for w in formatted["channel"]["alternatives"][0]["words"]] == [
        "ill-disposed,"
    ]


def _kw(**over: Any) -> dict[str, Any]:
    return {
        "start": 0.0,
        "duration": 3.0,
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "request_id": "r",
        "info": dg.ModelInfo("n", "v", "a", "u"),
        "formatted": False,
        "channels": 1,
    } | over


def test_refused_query_carries_dg_error_headers() -> None:
    err = dg.DeepgramQueryError("Invalid value for\nmodel: 'nöpe'", request_id="rid-1")
    assert err.headers == {"dg-error": "Invalid value for model: 'nöpe'", "dg-request-id": "rid-1"}
    assert err.detail is not None and err.detail["request_id"] == "rid-1"


# ----------------------------------------------------------------------------- endpointing


def frames(pattern: str) -> list[float]:
    """'s' = speech frame, '.' = silence frame (32 ms each)."""
    return [0.9 if c == "s" else 0.05 for c in pattern]


def test_endpoint_after_300ms_of_silence() -> None:
    ep = Endpointer(EndpointConfig(endpoint_ms=300))
    events = ep.feed(frames("....." + "s" * 30 + "." * 12))
    began = [e for e in events if isinstance(e, SpeechBegan)]
    done = [e for e in events if isinstance(e, UtteranceDone)]
    assert len(began) == 1 and began[0].at == 5 * FRAME_SAMPLES
    assert len(done) == 1 and done[0].speech_final and not done[0].from_finalize
    assert done[0].speech_end == 35 * FRAME_SAMPLES
    # ends after ceil(300 ms / 32 ms) = 10 quiet frames
    assert done[0].end == 45 * FRAME_SAMPLES - FRAME_SAMPLES


def test_short_pause_does_not_end_and_click_is_ignored() -> None:
    ep = Endpointer()
    assert ep.feed(frames("s.....")) == []  # one frame is a click, not speech
    events = ep.feed(frames("ssss" + "....." + "ssss"))
    # the pause is announced (the live session speculates on it) and withdrawn; no final
    assert [type(e) for e in events] == [SpeechBegan, SpeechPaused, SpeechResumed]


def test_length_cap_and_flush() -> None:
    ep = Endpointer(EndpointConfig(max_utterance_ms=1000))
    events = ep.feed(frames("s" * 40))
    done = [e for e in events if isinstance(e, UtteranceDone)]
    assert len(done) == 1 and not done[0].speech_final
    flushed = ep.flush()
    assert len(flushed) == 1 and isinstance(flushed[0], UtteranceDone) and flushed[0].from_finalize
    empty = ep.flush()
    assert len(empty) == 1 and isinstance(empty[0], UtteranceDone) and empty[0].end == empty[0].start


def test_endpointing_disabled_gives_no_speech_final() -> None:
    ep = Endpointer(EndpointConfig(endpoint_ms=None, fallback_end_ms=320))
    done = [e for e in ep.feed(frames("sssss" + "." * 12)) if isinstance(e, UtteranceDone)]
    assert len(done) == 1 and not done[0].speech_final


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=300), st.lists(st.booleans(), max_size=5))
def test_endpointer_any_input_is_in_the_table(probs: list[float], flushes: list[bool]) -> None:
    ep = Endpointer(EndpointConfig(max_utterance_ms=2000))
    last_end = 0
    for chunk_start in range(0, len(probs), 60):
        for event in ep.feed(probs[chunk_start : chunk_start + 60]):
            if isinstance(event, UtteranceDone):
                assert event.start >= last_end - FRAME_SAMPLES * 10 and event.end >= event.start
                last_end = event.end
        if flushes and flushes.pop():
            ep.flush()
    assert ep.keep_from() <= ep.position


# ----------------------------------------------------------------------------- audio


def wav_bytes(samples: np.ndarray, rate: int, tag: int = 1, bits: int = 16) -> bytes:
    data = samples.astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * 2, 2, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"LIST"
        + struct.pack("<I", 4)
        + b"INFO"
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def test_wav_header_split_anywhere_gives_same_samples() -> None:
    samples = (np.sin(np.arange(8000) / 5) * 10000).astype(np.int16)
    blob = wav_bytes(samples, 16000)
    whole = AudioDecoder().feed(blob)
    dec = AudioDecoder()
    parts = [dec.feed(blob[i : i + 7]) for i in range(0, len(blob), 7)]
    assert np.allclose(np.concatenate(parts), whole) and len(whole) == 8000
    assert np.allclose(whole, samples / 32768.0)


def test_not_wav_without_encoding_is_unsupported_data() -> None:
    with pytest.raises(AudioFormatError) as info:
        AudioDecoder().feed(b"definitely not a wav header")
    assert wire_form(info.value).ws_close == 1002


def test_mulaw_and_alaw_known_codes() -> None:
    mu = AudioDecoder("mulaw", 16000).feed(bytes([0xFF, 0x7F, 0x80, 0x00]))
    assert (
        mu[0] == 0
        and mu[1] == 0
        and mu[2] == pytest.approx(32124 / 32768)
        and mu[3] == pytest.approx(-32124 / 32768)
    )
    al = AudioDecoder("alaw", 16000).feed(bytes([0xD5, 0x55, 0xAA, 0x2A]))
    assert al[0] == pytest.approx(8 / 32768) and al[1] == pytest.approx(-8 / 32768)
    assert al[2] == pytest.approx(32256 / 32768) and al[3] == pytest.approx(-32256 / 32768)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resampler_keeps_frequency_and_is_seamless(rate: int) -> None:
    t = np.arange(rate) / rate
    tone = np.sin(2 * math.pi * 440 * t).astype(np.float32)
    res = Resampler(rate)
    out = np.concatenate([res.process(tone[i : i + 1000]) for i in range(0, len(tone), 1000)])
    assert abs(len(out) - 16000) <= 40
    spectrum = np.abs(np.fft.rfft(out[1000:15000]))
    peak_hz = np.argmax(spectrum) * 16000 / len(out[1000:15000])
    assert abs(peak_hz - 440) < 3
    assert np.max(np.abs(np.diff(out[100:-100]))) < 0.2  # no clicks at chunk joins


# ----------------------------------------------------------------------------- scheduler


class FakeEngine(Engine):
    """Each decode blocks in its worker thread until the test opens ``gate``.

    The scheduler's decisions (what runs, what waits) are taken synchronously in
    ``submit`` and when a decode ends; with the gate, the test, not the clock,
    decides when decodes end, so no assertion races the thread pool."""

    def __init__(self, fail: bool = False, open_gate: bool = False) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.fail = fail
        self.lock = threading.Lock()
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()

    @property
    def max_batch(self) -> int:
        return 8

    def started(self) -> list[tuple[int, bool]]:
        with self.lock:
            return list(self.calls)

    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        with self.lock:
            self.calls.append((len(batch), final))
        if not self.gate.wait(timeout=scaled(10)):
            raise RuntimeError("the test never opened the gate")
        if self.fail:
            raise RuntimeError("boom")
        return [Transcript(str(len(a)), 1.0) for a in batch]


def audio(n: int) -> np.ndarray:
    return np.zeros(n, np.float32)


async def test_scheduler_batches_coinciding_jobs_and_keeps_results_apart() -> None:
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=1, batching=True)
    jobs = [sched.submit(audio(n), final=False) for n in range(1, 7)]
    # The first takes the only slot at once; the five that coincide with it wait…
    assert sched._running == 1 and sched.pending == 5
    engine.gate.set()
    results = await asyncio.gather(*jobs)
    # …and go as one batch when it ends.
    assert [r.text for r in results] == [str(n) for n in range(1, 7)]
    assert engine.calls == [(1, False), (5, False)]
    assert sched.stats.calls == 2 and sched.stats.jobs == 6


class KeyedEngine(FakeEngine):
    """Batch key = the audio's length class (short or long), as Whisper's encoder window is."""

    def batch_key(self, audio: np.ndarray, *, final: bool) -> object:
        return (final, len(audio) > 4)

    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        keys = {self.batch_key(a, final=final) for a in batch}
        assert len(keys) == 1, f"one engine call mixed batch keys {keys}"
        return super().decode(batch, final=final)


async def test_scheduler_batches_only_equal_keys_and_keeps_queue_order() -> None:
    engine = KeyedEngine()
    sched = DecodeScheduler(engine, slots=1, batching=True)
    lengths = [1, 2, 9, 3, 8, 4]  # after the first: short, long, short, long, short
    jobs = [sched.submit(audio(n), final=True) for n in lengths]
    engine.gate.set()
    results = await asyncio.gather(*jobs)
    assert [r.text for r in results] == [str(n) for n in lengths]
    # The first runs alone; max_final_batch (2) then takes the next short one with the
    # following short one, and the long ones keep their places for the calls after.
    assert engine.calls == [(1, True), (2, True), (2, True), (1, True)]


async def test_scheduler_without_batching_and_finals_first() -> None:
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=1, batching=False)
    first = sched.submit(audio(1), final=False)
    await eventually(lambda: engine.started() == [(1, False)])  # decoding, holding the slot
    rest = [sched.submit(audio(1), final=f) for f in (False, True)]
    engine.gate.set()
    await asyncio.gather(first, *rest)
    assert engine.calls == [(1, False), (1, True), (1, False)]


async def test_scheduler_caps_concurrency_and_wraps_errors() -> None:
    engine = FakeEngine(fail=True, open_gate=True)
    sched = DecodeScheduler(engine, slots=2, batching=False)
    with pytest.raises(ModelError, match="boom"):
        await sched.decode(audio(1), final=True)
    gated = FakeEngine()
    ok = DecodeScheduler(gated, slots=2)
    tasks = [ok.submit(audio(1), final=True) for _ in range(3)]
    assert ok._running == 2 and ok.pending == 1
    await eventually(lambda: len(gated.started()) == 2)
    assert ok._running == 2 and ok.pending == 1  # still capped while both decode
    gated.gate.set()
    await asyncio.gather(*tasks)
    assert len(gated.calls) == 3


async def test_scheduler_keeps_a_slot_for_finals() -> None:
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=2, batching=False)
    interims = [sched.submit(audio(1), final=False) for _ in range(3)]
    assert sched._running == 1 and sched.pending == 2  # interims never take the last slot
    final = sched.submit(audio(1), final=True)
    assert sched._running == 2  # the final starts at once, beside the running interim
    await eventually(lambda: sorted(engine.started()) == [(1, False), (1, True)])
    engine.gate.set()
    await asyncio.gather(final, *interims)
    assert DecodeScheduler(FakeEngine(), slots=2, reserve_final_slot=False).interim_slots == 2


async def test_scheduler_skips_cancelled_interims() -> None:
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=1, batching=False)
    first = sched.submit(audio(1), final=False)
    superseded = sched.submit(audio(2), final=False)
    superseded.cancel()
    final = sched.submit(audio(3), final=True)
    engine.gate.set()
    assert (await final).text == "3"
    await first
    assert superseded.cancelled()
    assert engine.calls == [(1, False), (1, True)]  # the cancelled interim never ran


def test_endpointer_says_ending_after_half_the_window() -> None:
    ep = Endpointer(EndpointConfig(endpoint_ms=320))  # 10 frames of 32 ms
    ep.feed(frames("s" * 20))
    assert ep.in_speech and not ep.ending
    ep.feed(frames("." * 4))
    assert not ep.ending  # a short pause between words
    ep.feed(frames("."))
    assert ep.ending  # half the window: the final is due, no new interim starts
    ep.feed(frames("s"))
    assert not ep.ending


async def test_scheduler_withdraws_only_decodes_not_started() -> None:
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=1, batching=False)
    running = sched.submit(audio(1), final=False)  # takes the slot at once
    queued = sched.submit(audio(2), final=False)
    assert not sched.withdraw(running)  # already decoding: its result still arrives
    assert sched.withdraw(queued) and queued.cancelled() and sched.pending == 0
    engine.gate.set()
    assert (await running).text == "1"
    assert engine.calls == [(1, False)]


async def test_scheduler_withdraws_the_right_job_among_many() -> None:
    # Jobs hold numpy audio: finding one by equality compared samples and raised.
    engine = FakeEngine()
    sched = DecodeScheduler(engine, slots=1, batching=False)
    first = sched.submit(audio(1), final=True)
    queued = [sched.submit(audio(n), final=False) for n in (5, 6, 7)]
    assert sched.withdraw(queued[1]) and sched.pending == 2
    engine.gate.set()
    assert [r.text for r in await asyncio.gather(first, queued[0], queued[2])] == ["1", "5", "7"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1), max_size=400),
    st.sampled_from([10, 300, None]),
    st.sampled_from([0, 160]),
    st.sampled_from([32, 64]),
)
def test_endpointer_pauses_resumes_and_cuts_stay_consistent(
    probs: list[float], endpoint_ms: int | None, min_endpoint_ms: int, speculate_ms: int
) -> None:
    ep = Endpointer(
        EndpointConfig(
            endpoint_ms=endpoint_ms,
            min_endpoint_ms=min_endpoint_ms,
            speculate_after_ms=speculate_ms,
            max_utterance_ms=2000,
            cap_search_ms=1000,
        )
    )
    paused = False
    last_end = 0
    for event in ep.feed(probs) + ep.flush():
        if isinstance(event, SpeechPaused):
            assert not paused and event.start <= event.at <= ep.position
            paused = True
        elif isinstance(event, SpeechResumed):
            assert paused
            paused = False
        elif isinstance(event, UtteranceDone):
            paused = False
            assert event.start <= event.words_from <= max(event.end, event.start)
            assert event.end >= event.start >= last_end - 300 * 16
            if event.cut:
                assert not event.speech_final
            last_end = event.end
