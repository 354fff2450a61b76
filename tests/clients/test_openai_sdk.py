"""The unmodified ``openai`` SDK against the speech model's ``/v1/audio/transcriptions``.

Audio is synthesised at test time; transcripts are scored by WER (jiwer), and
every bad input must raise the SDK's ``BadRequestError`` while a concurrent
transcription on the same server still succeeds.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import jiwer
import numpy as np
import openai
import pytest

from tests.speech_audio import pcm, speech_server, synth

SENTENCE = "i need help with my account balance"
SECOND = "please call me back tomorrow morning"
MAX_WER = 0.25


def norm(text: str) -> str:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).strip()


def wer(ref: str, hyp: str) -> float:
    return float(jiwer.wer(norm(ref), norm(hyp)))


def client(prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{speech_server()}{prefix}", api_key="sk-test", max_retries=0
    )


def async_client() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{speech_server()}/v1", api_key="sk-test", max_retries=0
    )


def two_sentences() -> Path:
    """Two utterances with a pause between them (two segments)."""
    a, rate = pcm(synth(SENTENCE))
    b, _ = pcm(synth(SECOND))
    out = synth(SENTENCE).parent / "openai-two.wav"
    import wave

    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(a + b"\0\0" * rate + b)
    return out


def encode(path: Path, fmt: str, codec: str) -> bytes:
    """Re-encode a WAV with PyAV (FLAC / MP3 made at test time)."""
    import av

    data, rate = pcm(path)
    samples = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def test_json_default_whisper_1() -> None:
    with synth(SENTENCE).open("rb") as f:
        result = client().audio.transcriptions.create(model="whisper-1", file=f)
    assert isinstance(result, openai.types.audio.Transcription)
    assert wer(SENTENCE, result.text) <= MAX_WER, result.text
    assert result.usage is not None and result.usage.type == "duration"


def test_without_v1_prefix_and_bcp47_language() -> None:
    with synth(SENTENCE).open("rb") as f:
        result = client("").audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=f, language="en-US"
        )
    assert wer(SENTENCE, result.text) <= MAX_WER, result.text


def test_verbose_json_words_and_segments_fill_every_sdk_field() -> None:
    path = two_sentences()
    duration = len(pcm(path)[0]) / 32000
    with path.open("rb") as f:
        result = client().audio.transcriptions.create(
            model="whisper-1",
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert result.language == "english"
    assert result.duration == pytest.approx(duration, abs=0.05)
    assert wer(f"{SENTENCE} {SECOND}", result.text) <= MAX_WER, result.text
    assert result.words and result.segments and len(result.segments) == 2
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    for w in result.words:
        assert isinstance(w.word, str) and 0 <= w.start <= w.end <= duration + 0.05
    for i, seg in enumerate(result.segments):
        dumped = seg.model_dump()
        assert all(dumped[k] is not None for k in type(seg).model_fields), dumped
        assert seg.id == i and seg.start < seg.end
    assert result.segments[0].end < result.segments[1].start


def test_verbose_json_words_only() -> None:
    with synth(SENTENCE).open("rb") as f:
        result = client().audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    assert result.words and result.segments is None


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(fmt: str) -> None:
    with synth(SENTENCE).open("rb") as f:
        body = client().audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)  # type: ignore[call-overload]
    assert isinstance(body, str) and body.endswith("\n")
    if fmt == "srt":
        assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", body), body
    if fmt == "vtt":
        assert body.startswith("WEBVTT\n\n") and re.search(r"00:00:\d\d\.\d{3} --> ", body), body
    cues = [line for line in body.splitlines() if line and "-->" not in line and not line.isdigit()]
    text = body if fmt == "text" else " ".join(line for line in cues if line != "WEBVTT")
    assert wer(SENTENCE, text) <= MAX_WER, body


@pytest.mark.parametrize(("fmt", "codec", "name"), [("flac", "flac", "a.flac"), ("mp3", "mp3", "a.mp3")])
def test_flac_and_mp3(fmt: str, codec: str, name: str) -> None:
    data = encode(synth(SENTENCE), fmt, codec)
    result = client().audio.transcriptions.create(model="whisper-1", file=(name, data))
    assert wer(SENTENCE, result.text) <= MAX_WER, result.text


def test_content_type_is_ignored_bytes_are_sniffed() -> None:
    # The SDK guesses text/plain from the name: the bytes are a WAV all the same.
    data = synth(SENTENCE).read_bytes()
    result = client().audio.transcriptions.create(model="whisper-1", file=("notes.txt", data, "text/plain"))
    assert wer(SENTENCE, result.text) <= MAX_WER, result.text


def test_stream_true_deltas_then_done() -> None:
    with two_sentences().open("rb") as f:
        events = list(
            client().audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=f, stream=True)
        )
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.delta") == 2, kinds
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == events[-1].text
    assert wer(f"{SENTENCE} {SECOND}", deltas) <= MAX_WER, deltas


BAD_INPUTS = [
    ("not audio", {"file": ("a.wav", b"this is not audio at all, just text" * 10)}, "file"),
    ("empty", {"file": ("a.wav", b"")}, "file"),
    ("no file part", {"file": openai.omit}, "file"),
    ("unknown format", {"response_format": "yaml"}, "response_format"),
    ("unsupported language", {"language": "fr"}, "language"),
    ("truncated wav", {"file": ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ")}, "file"),
]


@pytest.mark.parametrize(("label", "kwargs", "param"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_bad_request_and_concurrent_request_untouched(
    label: str, kwargs: dict[str, object], param: str
) -> None:
    good_audio = synth(SENTENCE).read_bytes()
    api = async_client()

    async def bad() -> openai.BadRequestError:
        args: dict[str, object] = {"model": "whisper-1", "file": ("a.wav", good_audio), **kwargs}
        with pytest.raises(openai.BadRequestError) as info:
            await api.audio.transcriptions.create(**args)  # type: ignore[call-overload]
        return info.value

    good_task = asyncio.create_task(
        api.audio.transcriptions.create(model="whisper-1", file=("a.wav", good_audio))
    )
    error = await bad()
    good = await good_task
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error", error.body
    assert error.body["param"] == param and error.body["message"]
    assert wer(SENTENCE, good.text) <= MAX_WER, good.text
    await api.close()
