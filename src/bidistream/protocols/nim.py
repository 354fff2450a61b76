"""NVIDIA NIM ASR behind SageMaker's ``/invocations``, sans-I/O (the combined-container seed).

One endpoint answers the same audio two ways: the HTTP style (NIM's
``/v1/audio/transcriptions``: ``{"text": ...}``) and the gRPC style (Riva's
``RecognizeResponse`` as JSON under ``predictions[0]``, with words, float-second
times and speaker tags).  Which one is chosen, in order: the
``X-Amzn-SageMaker-Custom-Attributes`` header *containing* a forced path (the
aws CLI sends the seed's whole ``X-Amzn-SageMaker-Custom-Attributes=/…``
string as the value), then the request path, then auto (diarization or more
than 4 MiB of audio → gRPC style).  Facts: specs/asr-api-wire-facts.md.

Unlike the seed there is no 5 MB cap on the HTTP route: every route takes the
container's body limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from bidistream.errors import (
    BidistreamError,
    ClientError,
    InputValidationError,
    InternalError,
    ServiceUnavailableError,
)
from bidistream.protocols.asr import FileTranscript
from bidistream.protocols.forms import media_type, parse_multipart

__all__ = [
    "AUTO_GRPC_BYTES",
    "PATHS",
    "NimError",
    "NimRequest",
    "choose_route",
    "grpc_answer",
    "http_answer",
    "parse_request",
    "translate_error",
]

PATHS = ("invocations/http", "invocations/grpc")
Route = Literal["http", "grpc"]
# Auto-routing sends larger audio to the gRPC style, as the seed does (its HTTP route had a 5 MB cap).
AUTO_GRPC_BYTES = 4 * 1024 * 1024
# The seed's documented default for max_speakers.
DEFAULT_MAX_SPEAKERS = 10
MAX_SPEAKERS_LIMIT = 32
DEFAULT_LANGUAGE = "en-US"
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"


class NimError(InputValidationError):
    """A client mistake: 400 ``{"error": "..."}`` (the seed's error body)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, detail={"error": message})


class NimServerError(InternalError):
    def __init__(self, message: str) -> None:
        super().__init__(message, detail={"error": message})


class NimUnavailableError(ServiceUnavailableError):
    def __init__(self, message: str) -> None:
        super().__init__(message, detail={"error": message})


def translate_error(exc: BidistreamError) -> BidistreamError:
    if exc.detail is not None and isinstance(exc.detail.get("error"), str):
        return exc
    if isinstance(exc, ClientError):
        return NimError(exc.message)
    if isinstance(exc, ServiceUnavailableError):
        return NimUnavailableError(exc.message)
    return NimServerError(exc.message)


@dataclass(frozen=True, slots=True)
class NimRequest:
    audio: bytes
    language: str
    diarize: bool
    max_speakers: int
    route: Route


def check_language(value: str) -> str:
    """English only; anything else gets Riva's own refusal text."""
    low = value.strip().lower().replace("_", "-")
    if low in ("en", "en-us", "english", "multi") or low.startswith("en-"):
        return value.strip() or DEFAULT_LANGUAGE
    raise NimError(
        f"Unavailable model requested given these parameters: language_code={value.strip()}; type=offline; "
        "(this endpoint serves English: use en-US)"
    )


def _flag(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", ""):
        return False
    raise NimError(f"{name} must be true or false, got {value!r}")


def _speakers(value: object) -> int:
    if value is None or value == "":
        return DEFAULT_MAX_SPEAKERS
    try:
        number = int(str(value).strip())
    except ValueError:
        raise NimError(f"max_speakers must be an integer, got {value!r}") from None
    if not 1 <= number <= MAX_SPEAKERS_LIMIT:
        raise NimError(f"max_speakers must be within 1..{MAX_SPEAKERS_LIMIT}, got {number}")
    return number


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def choose_route(custom_attributes: str, path: str, diarize: bool, audio_bytes: int) -> Route:
    if "/invocations/grpc" in custom_attributes:
        return "grpc"
    if "/invocations/http" in custom_attributes:
        return "http"
    if path == "invocations/grpc":
        return "grpc"
    if path == "invocations/http":
        return "http"
    return "grpc" if diarize or audio_bytes > AUTO_GRPC_BYTES else "http"


def _from_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise NimError(f"body is not valid JSON: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("instances"), list):
        instances = doc["instances"]
        if not instances or not isinstance(instances[0], dict):
            raise NimError("instances must be a list holding one object")
        doc = instances[0]
    if not isinstance(doc, dict):
        raise NimError("JSON body must be an object with audio (base64)")
    encoded = doc.get("audio", doc.get("audio_base64"))
    if not isinstance(encoded, str) or not encoded:
        raise NimError("JSON body needs audio or audio_base64: the file as a base64 string")
    try:
        audio = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NimError(f"audio is not valid base64: {exc}") from exc
    return {**doc, "audio": audio}


def parse_request(
    body: bytes, content_type: str | None, path: str, raw_query: str, headers: Mapping[str, str]
) -> NimRequest:
    """Multipart, JSON base64 or raw audio, each with the seed's field names."""
    kind, _ = media_type(content_type)
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    fields: dict[str, Any]
    if kind == "multipart/form-data":
        try:
            parts = parse_multipart(body, content_type)
        except ClientError as exc:
            raise NimError(exc.message) from exc
        files = [p for p in parts if p.name in ("file", "audio")]
        if not files:
            raise NimError('multipart body has no file part (name="file")')
        fields = {p.name: p.text() for p in parts if p not in files}
        fields["audio"] = files[-1].data
    elif kind in ("application/json", "text/json") or kind.endswith("+json"):
        fields = _from_json(body)
    else:
        fields = {**query, "audio": body}
    audio = fields["audio"]
    if not audio:
        raise NimError("no audio: the file is empty")
    language = str(fields.get("language_code") or fields.get("language") or query.get("language_code") or "")
    diarize = _flag("speaker_diarization", fields.get("speaker_diarization", False))
    route = choose_route(_header(headers, CUSTOM_ATTRIBUTES), path.strip("/"), diarize, len(audio))
    return NimRequest(
        audio=audio,
        language=check_language(language or DEFAULT_LANGUAGE),
        diarize=diarize,
        max_speakers=_speakers(fields.get("max_speakers")),
        route=route,
    )


# ----------------------------------------------------------------------------- answers
def http_answer(result: FileTranscript) -> dict[str, Any]:
    return {"text": result.text()}


def grpc_answer(result: FileTranscript, *, diarized: bool) -> dict[str, Any]:
    """Riva's RecognizeResponse as the seed's container returns it (float-second word times)."""
    results: list[dict[str, Any]] = []
    for seg in result.segments:
        if not seg.text.strip():
            continue
        words = [
            {
                "word": w.punctuated.strip() or w.word,
                "start_time": round(w.start, 3),
                "end_time": round(w.end, 3),
                "confidence": w.confidence,
                "speaker_tag": (w.speaker or 0) if diarized else 0,
            }
            for w in seg.words
        ]
        results.append(
            {
                "alternatives": [
                    {"transcript": seg.text.strip(), "confidence": seg.confidence, "words": words}
                ],
                "is_final": True,
                "channel_tag": 1,
                "audio_processed": round(seg.end, 3),
            }
        )
    return {"predictions": [{"results": results, "model_version": result.model}]}
