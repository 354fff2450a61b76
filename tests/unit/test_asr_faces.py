"""The ASR faces' sans-I/O parts: multipart, routing, renderings, Riva audio specs, diarization pieces."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from riva.client.proto import riva_asr_pb2 as rasr

from bidistream.models.speech import diarize
from bidistream.models.speech.files import sniff_container
from bidistream.protocols import nim, openai, riva
from bidistream.protocols.asr import FileTranscript, Segment, TimedWord
from bidistream.protocols.forms import FormError, parse_multipart


def form(fields: dict[str, str], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + f"--{boundary}--\r\n".encode()


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text(max_size=40), max_size=6))
def test_multipart_text_fields_round_trip(fields: dict[str, str]) -> None:
    parts = parse_multipart(form(fields), "multipart/form-data; boundary=XyZ")
    assert {p.name: p.text() for p in parts} == {k: v.strip() for k, v in fields.items()}


def test_seed_crlf_inside_values_is_stripped() -> None:
    body = b'--B\r\nContent-Disposition: form-data; name="language_code"\r\n\r\nen-US\r\n\r\n--B--\r\n'
    (part,) = parse_multipart(body, "multipart/form-data; boundary=B")
    assert part.data == b"en-US\r\n" and part.text() == "en-US"


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"x", "application/json"),
        (b"x", "multipart/form-data"),
        (b"garbage", "multipart/form-data; boundary=B"),
    ],
)
def test_not_a_form_is_form_error(body: bytes, ctype: str) -> None:
    with pytest.raises(FormError):
        parse_multipart(body, ctype)


@pytest.mark.parametrize(
    ("attrs", "path", "diarize", "size", "route"),
    [
        ("X-Amzn-SageMaker-Custom-Attributes=/invocations/http", "invocations/grpc", True, 10, "http"),
        ("/invocations/grpc", "invocations/http", False, 10, "grpc"),
        ("", "invocations/http", True, 10**8, "http"),
        ("", "invocations/grpc", False, 10, "grpc"),
        ("", "invocations", True, 10, "grpc"),
        ("", "invocations", False, nim.AUTO_GRPC_BYTES + 1, "grpc"),
        ("", "invocations", False, nim.AUTO_GRPC_BYTES, "http"),
        ("trace=1", "invocations", False, 10, "http"),
    ],
)
def test_nim_routing_order(attrs: str, path: str, diarize: bool, size: int, route: str) -> None:
    assert nim.choose_route(attrs, path, diarize, size) == route


def test_nim_json_nested_and_flat_and_raw_query() -> None:
    flat = nim.parse_request(
        b'{"audio_base64": "UklGRg==", "speaker_diarization": true}',
        "application/json",
        "invocations",
        "",
        {},
    )
    nested = nim.parse_request(
        b'{"instances": [{"audio": "UklGRg==", "max_speakers": "3"}]}',
        "application/json",
        "invocations",
        "",
        {},
    )
    raw = nim.parse_request(b"RIFF....", "audio/wav", "invocations", "language_code=en-GB", {})
    assert flat.audio == b"RIFF" and flat.diarize and flat.route == "grpc"
    assert nested.max_speakers == 3 and nested.route == "http"
    assert raw.language == "en-GB" and raw.audio == b"RIFF...."


@pytest.mark.parametrize("lang", ["fr-FR", "de", "zh-CN"])
def test_nim_unavailable_language_uses_rivas_wording(lang: str) -> None:
    with pytest.raises(nim.NimError, match="Unavailable model requested given these parameters"):
        nim.check_language(lang)


RESULT = FileTranscript(
    3.5,
    "en",
    (
        Segment(
            0.25,
            1.0,
            "Hello there.",
            0.9,
            (TimedWord("hello", "Hello", 0.25, 0.5, 0.9), TimedWord("there", "there.", 0.55, 1.0, 0.8)),
        ),
        Segment(3661.5, 3662.25, "Bye.", 0.7, (TimedWord("bye", "Bye.", 3661.5, 3662.25, 0.7),)),
    ),
)


def test_openai_srt_and_vtt_clocks() -> None:
    srt = openai.srt(RESULT)
    assert srt.startswith(
        "1\n00:00:00,250 --> 00:00:01,000\nHello there.\n\n2\n01:01:01,500 --> 01:01:02,250\nBye.\n\n"
    )
    assert openai.vtt(RESULT).startswith("WEBVTT\n\n00:00:00.250 --> 00:00:01.000\nHello there.\n\n")


def test_openai_verbose_json_has_every_segment_field() -> None:
    req = openai.TranscriptionRequest(
        b"x", "a.wav", "whisper-1", "en", "verbose_json", frozenset({"word", "segment"})
    )
    body = openai.verbose_json(req, RESULT)
    assert body["language"] == "english" and body["text"] == "Hello there. Bye."
    assert [w["word"] for w in body["words"]] == ["Hello", "there.", "Bye."]  # type: ignore[index]
    fields = {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert all(set(s) == fields for s in body["segments"])  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["en", "EN", "en-US", "en_GB", "english"])
def test_openai_language_accepts_english_spellings(value: str) -> None:
    assert openai.normalise_language(value) == "en"


def test_riva_raw_pcm_starting_ff_ff_is_not_sniffed_as_mp3() -> None:
    config = rasr.RecognitionConfig(encoding=1, sample_rate_hertz=16000)
    spec, skip = riva.audio_spec(config, b"\xff\xff\xfb\x90" * 100, streaming=False)
    assert spec == riva.AudioSpec("linear16", 16000) and skip == 0


def test_riva_wav_header_overrides_config_and_is_dropped() -> None:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(b"\0\0" * 100)
    config = rasr.RecognitionConfig()  # UNSPECIFIED, rate 0: what the scripts send
    spec, skip = riva.audio_spec(config, buf.getvalue(), streaming=True)
    assert spec.sample_rate == 22050 and skip == 44


@pytest.mark.parametrize(
    ("config", "streaming"),
    [
        (rasr.RecognitionConfig(encoding=7, sample_rate_hertz=16000), False),
        (rasr.RecognitionConfig(encoding=3), False),
        (rasr.RecognitionConfig(encoding=1, sample_rate_hertz=200000), False),
        (rasr.RecognitionConfig(encoding=2), True),
    ],
)
def test_riva_bad_audio_config_is_request_error(config: object, streaming: bool) -> None:
    with pytest.raises(riva.RivaRequestError):
        riva.audio_spec(config, b"\0" * 64, streaming=streaming)


def test_sniffing() -> None:
    assert sniff_container(b"fLaC\0\0") == "flac"
    assert sniff_container(b"ID3\x04") == "mp3"
    assert sniff_container(b"\xff\xfb\x90\x64") == "mp3"
    assert sniff_container(b"\xff\xff\xff\xff") is None  # invalid MPEG header fields
    assert sniff_container(b"hello world") is None


def test_weights_unpickler_refuses_anything_but_tensors() -> None:
    evil = pickle.dumps(print)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        diarize._Unpickler(io.BytesIO(evil)).load()


def test_clusters_chosen_by_criterion_not_distance() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=256), rng.normal(size=256)
    two = np.stack(
        [a + rng.normal(scale=0.3, size=256) for _ in range(10)]
        + [b + rng.normal(scale=0.3, size=256) for _ in range(10)]
    )
    two /= np.linalg.norm(two, axis=1, keepdims=True)
    labels = diarize.choose_clusters(two, 5)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    one = np.stack([a + rng.normal(scale=0.3, size=256) for _ in range(12)])
    one /= np.linalg.norm(one, axis=1, keepdims=True)
    assert set(diarize.choose_clusters(one, 5)) == {0}
    assert set(diarize.choose_clusters(two, 1)) == {0}


def test_smoothing_removes_one_word_islands() -> None:
    assert diarize.smooth([0, 0, 1, 0, 0, 1, 1, 0, 1, 1]) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
