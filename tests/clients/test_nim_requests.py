"""NIM's ``/invocations`` routes with ``requests``, bodies built exactly as the seed's bash block builds them.

The seed (../shared/seeds/nim-asr-combined-container-readme.md) writes the
multipart body with printf, which leaves a CRLF inside every value but the
last; JSON base64 and raw bodies use the field names of its reference server.
"""

from __future__ import annotations

import base64
import threading
import uuid

import jiwer
import pytest
import requests

from tests.speech_audio import conversation, pcm, speaker_accuracy, speech_server, synth

SENTENCE = "i need help with my account balance"
MAX_WER = 0.25


def url(path: str) -> str:
    return f"http://127.0.0.1:{speech_server()}/{path}"


def plain(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c in " '").split())


def seed_body(audio: bytes, *, diarize: str = "true", speakers: str = "4") -> tuple[bytes, str]:
    """The seed's printf block, byte for byte (boundary unquoted, WebKit style)."""
    boundary = "----WebKitFormBoundary" + uuid.uuid4().hex
    out = b""
    out += f"--{boundary}\r\n".encode()
    out += b'Content-Disposition: form-data; name="file"; filename="test.wav"\r\n'
    out += b"Content-Type: audio/wav\r\n\r\n"
    out += audio
    out += f"\r\n--{boundary}\r\n".encode()
    out += b'Content-Disposition: form-data; name="language_code"\r\n\r\n'
    out += b"en-US\r\n"
    out += f"\r\n--{boundary}\r\n".encode()
    out += b'Content-Disposition: form-data; name="speaker_diarization"\r\n\r\n'
    out += f"{diarize}\r\n".encode()
    out += f"\r\n--{boundary}\r\n".encode()
    out += b'Content-Disposition: form-data; name="max_speakers"\r\n\r\n'
    out += f"{speakers}\r\n".encode()
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def grpc_text(doc: dict[str, object]) -> str:
    preds = doc["predictions"]
    assert isinstance(preds, list) and preds[0]["model_version"]
    return " ".join(r["alternatives"][0]["transcript"] for r in preds[0]["results"])


def check_grpc_words(doc: dict[str, object], duration: float) -> None:
    for result in doc["predictions"][0]["results"]:  # type: ignore[index]
        assert result["is_final"] is True and result["channel_tag"] == 1
        for w in result["alternatives"][0]["words"]:
            assert set(w) == {"word", "start_time", "end_time", "confidence", "speaker_tag"}
            assert isinstance(w["start_time"], float) and 0 <= w["start_time"] <= w["end_time"] <= duration
            assert isinstance(w["speaker_tag"], int)


def test_health_paths() -> None:
    assert requests.get(url("v1/health/live"), timeout=5).status_code == 200
    assert requests.get(url("v1/health/ready"), timeout=5).status_code == 200
    assert requests.get(url("ping"), timeout=5).status_code == 200


def test_seed_multipart_auto_routes_diarization_to_grpc_style() -> None:
    audio = synth(SENTENCE).read_bytes()
    body, ctype = seed_body(audio)
    resp = requests.post(url("invocations"), data=body, headers={"Content-Type": ctype}, timeout=60)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert jiwer.wer(SENTENCE, plain(grpc_text(doc))) <= MAX_WER, doc
    check_grpc_words(doc, len(pcm(synth(SENTENCE))[0]) / 32000 + 0.05)


def test_seed_multipart_without_diarization_auto_routes_to_http_style() -> None:
    body, ctype = seed_body(synth(SENTENCE).read_bytes(), diarize="false")
    resp = requests.post(url("invocations"), data=body, headers={"Content-Type": ctype}, timeout=60)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert set(doc) == {"text"} and jiwer.wer(SENTENCE, plain(doc["text"])) <= MAX_WER, doc


@pytest.mark.parametrize(
    ("attributes", "style"),
    [
        ("X-Amzn-SageMaker-Custom-Attributes=/invocations/http", "http"),
        ("X-Amzn-SageMaker-Custom-Attributes=/invocations/grpc", "grpc"),
        ("/invocations/grpc", "grpc"),
    ],
)
def test_custom_attributes_route_over_path(attributes: str, style: str) -> None:
    body, ctype = seed_body(synth(SENTENCE).read_bytes())
    # The header beats the path (and the auto rule): post to the other forced path.
    other = "invocations/grpc" if style == "http" else "invocations/http"
    resp = requests.post(
        url(other),
        data=body,
        headers={"Content-Type": ctype, "X-Amzn-SageMaker-Custom-Attributes": attributes},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert ("predictions" in resp.json()) is (style == "grpc")


@pytest.mark.parametrize("path", ["invocations/http", "invocations/grpc"])
def test_forced_paths(path: str) -> None:
    body, ctype = seed_body(synth(SENTENCE).read_bytes(), diarize="false")
    resp = requests.post(url(path), data=body, headers={"Content-Type": ctype}, timeout=60)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    text = grpc_text(doc) if path.endswith("grpc") else doc["text"]
    assert jiwer.wer(SENTENCE, plain(text)) <= MAX_WER, doc


@pytest.mark.parametrize("key", ["audio", "audio_base64"])
@pytest.mark.parametrize("nested", [False, True])
def test_json_base64(key: str, nested: bool) -> None:
    item = {key: base64.b64encode(synth(SENTENCE).read_bytes()).decode(), "language_code": "en-US"}
    doc = {"instances": [item]} if nested else item
    resp = requests.post(url("invocations"), json=doc, timeout=60)
    assert resp.status_code == 200, resp.text
    assert jiwer.wer(SENTENCE, plain(resp.json()["text"])) <= MAX_WER


@pytest.mark.parametrize("ctype", ["audio/wav", "application/octet-stream"])
def test_raw_audio_with_query_language(ctype: str) -> None:
    resp = requests.post(
        url("invocations?language_code=en-US"),
        data=synth(SENTENCE).read_bytes(),
        headers={"Content-Type": ctype},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert jiwer.wer(SENTENCE, plain(resp.json()["text"])) <= MAX_WER


def test_large_upload_over_the_seed_5mb_cap_auto_routes_to_grpc() -> None:
    """About 6 MB of WAV (silence around speech): no 5 MB cap, and > 4 MiB goes to the gRPC style."""
    data, rate = pcm(synth(SENTENCE))
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data + b"\0\0" * rate * 190)
    assert buf.tell() > 6_000_000
    body, ctype = seed_body(buf.getvalue(), diarize="false")
    resp = requests.post(url("invocations"), data=body, headers={"Content-Type": ctype}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert jiwer.wer(SENTENCE, plain(grpc_text(resp.json()))) <= MAX_WER


BAD = [
    ("not audio", lambda: seed_body(b"hello, this is plain text, not audio" * 20)),
    ("empty file", lambda: seed_body(b"")),
    (
        "no file part",
        lambda: (
            b'--B\r\nContent-Disposition: form-data; name="language_code"\r\n\r\nen-US\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),
    ),
    ("bad json", lambda: (b"{not json", "application/json")),
    ("bad base64", lambda: (b'{"audio": "***"}', "application/json")),
    ("json without audio", lambda: (b'{"language_code": "en-US"}', "application/json")),
    (
        "french",
        lambda: (seed_body(synth(SENTENCE).read_bytes())[0].replace(b"en-US", b"fr-FR"), seed_body(b"")[1]),
    ),
    ("bad max_speakers", lambda: seed_body(synth(SENTENCE).read_bytes(), speakers="many")),
]


@pytest.mark.parametrize(("label", "make"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_400_error_and_concurrent_request_untouched(label: str, make: object) -> None:
    good_body, good_type = seed_body(synth(SENTENCE).read_bytes(), diarize="false")
    good: dict[str, requests.Response] = {}

    def run_good() -> None:
        good["r"] = requests.post(
            url("invocations"), data=good_body, headers={"Content-Type": good_type}, timeout=60
        )

    thread = threading.Thread(target=run_good)
    thread.start()
    assert callable(make)
    body, ctype = make()
    if label == "french":
        # the boundary in the body and the header must agree: rebuild both
        body, ctype = seed_body(synth(SENTENCE).read_bytes())
        body = body.replace(b"en-US", b"fr-FR")
    resp = requests.post(url("invocations"), data=body, headers={"Content-Type": ctype}, timeout=60)
    thread.join()
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]
    if label == "french":
        assert doc["error"].startswith("Unavailable model requested given these parameters:")
    assert good["r"].status_code == 200 and jiwer.wer(SENTENCE, plain(good["r"].json()["text"])) <= MAX_WER


def test_diarization_two_voices_speaker_tags_over_90_percent() -> None:
    path, turns = conversation()
    body, ctype = seed_body(path.read_bytes(), speakers="4")
    resp = requests.post(url("invocations"), data=body, headers={"Content-Type": ctype}, timeout=120)
    assert resp.status_code == 200, resp.text
    words = [w for r in resp.json()["predictions"][0]["results"] for w in r["alternatives"][0]["words"]]
    accuracy = speaker_accuracy([(w["start_time"], w["end_time"], w["speaker_tag"]) for w in words], turns)
    ref = " ".join(t[3] for t in turns)
    hyp = plain(" ".join(w["word"] for w in words))
    assert jiwer.wer(ref, hyp) <= MAX_WER, hyp
    assert {w["speaker_tag"] for w in words} == {0, 1}
    assert accuracy >= 0.9, (accuracy, [(w["word"], w["speaker_tag"]) for w in words])
