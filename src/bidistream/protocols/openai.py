"""OpenAI's ``POST /v1/audio/transcriptions``, sans-I/O: a multipart form in, a transcription out.

Shapes follow specs/openai-audio-transcriptions.md and the ``openai`` SDK's
types (checked against the real client in specs/asr-api-wire-facts.md).  The
SDK picks its return type from the ``response_format`` it sent and never
validates the body, so every field its models declare is always present:
a missing one would silently read as ``None`` in user code.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bidistream.errors import (
    BidistreamError,
    ClientError,
    InputValidationError,
    InternalError,
    ServiceUnavailableError,
    UnsupportedDataError,
)
from bidistream.protocols.asr import FileTranscript, Segment
from bidistream.protocols.forms import FormPart, parse_multipart

__all__ = [
    "PATHS",
    "RESPONSE_FORMATS",
    "OpenAIRequestError",
    "TranscriptionRequest",
    "delta_event",
    "done_event",
    "parse_request",
    "render",
    "translate_error",
]

PATHS = ("v1/audio/transcriptions", "audio/transcriptions")
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# What the language names in verbose_json look like (OpenAI answers with the English name).
LANGUAGE_NAMES = {"en": "english"}
_FALSE = ("false", "0", "no", "off", "")
_TRUE = ("true", "1", "yes", "on")


def _error_body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIRequestError(InputValidationError):
    """A client mistake: HTTP 400, so the SDK raises ``BadRequestError``."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, detail=_error_body(message, "invalid_request_error", param, code))


class OpenAIServerError(InternalError):
    def __init__(self, message: str) -> None:
        super().__init__(message, detail=_error_body(message, "server_error", None, None))


class OpenAIUnavailableError(ServiceUnavailableError):
    def __init__(self, message: str) -> None:
        super().__init__(message, detail=_error_body(message, "server_error", None, "unavailable"))


def translate_error(exc: BidistreamError) -> BidistreamError:
    """Any error met while answering, in OpenAI's envelope (client mistakes are all 400)."""
    if exc.detail is not None and isinstance(exc.detail.get("error"), dict):
        return exc
    if isinstance(exc, ClientError):
        # Bytes that are not decodable audio are a problem with the file part.
        param = "file" if isinstance(exc, UnsupportedDataError) else None
        return OpenAIRequestError(exc.message, param=param, code="invalid_file" if param else None)
    if isinstance(exc, ServiceUnavailableError):
        return OpenAIUnavailableError(exc.message)
    return OpenAIServerError(exc.message)


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    file: bytes
    filename: str
    model: str
    language: str
    response_format: str = "json"
    granularities: frozenset[str] = field(default_factory=lambda: frozenset({"segment"}))
    stream: bool = False
    prompt: str = ""
    temperature: float = 0.0


def normalise_language(value: str) -> str:
    """``en``, ``en-US``, ``en_GB``, ``english`` → ``en``; anything else is refused (English only)."""
    low = value.strip().lower().replace("_", "-")
    if low in ("en", "english") or low.startswith("en-"):
        return "en"
    raise OpenAIRequestError(
        f"Unsupported language {value!r}: this model transcribes English only (use 'en' or 'en-US')",
        param="language",
        code="unsupported_language",
    )


def _parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise OpenAIRequestError(f"Invalid value for {name!r}: {value!r} is not a boolean", param=name)


def parse_request(body: bytes, content_type: str | None) -> TranscriptionRequest:
    """Validate the SDK's form; OpenAIRequestError names the first problem."""
    try:
        parts = parse_multipart(body, content_type)
    except ClientError as exc:
        raise OpenAIRequestError(f"Could not parse multipart form: {exc.message}") from exc
    files: list[FormPart] = []
    scalars: dict[str, str] = {}
    granularities: set[str] = set()
    for part in parts:
        if part.name == "file":
            files.append(part)
        elif part.name in ("timestamp_granularities[]", "timestamp_granularities"):
            granularities.update(g.strip() for g in part.text().split(",") if g.strip())
        elif part.name.endswith("[]"):
            continue  # include[], known_speaker_names[] ...: accepted, not used
        else:
            scalars[part.name] = part.text() if part.filename is None else ""
    if not files:
        raise OpenAIRequestError("Missing required parameter: 'file'", param="file", code="missing_required")
    upload = files[-1]
    if not upload.data:
        raise OpenAIRequestError("The audio file is empty", param="file", code="empty_file")
    fmt = scalars.get("response_format", "json").strip().lower() or "json"
    if fmt not in RESPONSE_FORMATS:
        raise OpenAIRequestError(
            f"Unsupported response_format {fmt!r}: use one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    bad = granularities - {"word", "segment"}
    if bad:
        raise OpenAIRequestError(
            f"Invalid timestamp_granularities[] {sorted(bad)!r}: use 'word' and/or 'segment'",
            param="timestamp_granularities",
        )
    temperature = 0.0
    if scalars.get("temperature"):
        try:
            temperature = float(scalars["temperature"])
        except ValueError:
            raise OpenAIRequestError(
                f"Invalid value for 'temperature': {scalars['temperature']!r}", param="temperature"
            ) from None
    return TranscriptionRequest(
        file=upload.data,
        filename=upload.filename or "file",
        model=scalars.get("model", "") or "whisper-1",
        language=normalise_language(scalars.get("language", "en") or "en"),
        response_format=fmt,
        granularities=frozenset(granularities or {"segment"}),
        stream=_parse_bool("stream", scalars.get("stream", "false")),
        prompt=scalars.get("prompt", ""),
        temperature=temperature,
    )


# ----------------------------------------------------------------------------- answers
def _usage(result: FileTranscript) -> dict[str, object]:
    return {"type": "duration", "seconds": math.ceil(result.duration)}


def _segment(index: int, seg: Segment, temperature: float) -> dict[str, object]:
    text = " " + seg.text.strip()
    raw = text.encode("utf-8")
    return {
        "id": index,
        "seek": round(seg.start * 100),
        "start": round(seg.start, 3),
        "end": round(seg.end, 3),
        "text": text,
        "tokens": [],
        "temperature": temperature,
        "avg_logprob": round(math.log(max(seg.confidence, 1e-6)), 4),
        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0,
        "no_speech_prob": 0.0,
    }


def verbose_json(req: TranscriptionRequest, result: FileTranscript) -> dict[str, object]:
    body: dict[str, object] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(result.language, result.language),
        "duration": round(result.duration, 3),
        "text": result.text(),
    }
    if "word" in req.granularities:
        body["words"] = [
            {"word": w.punctuated.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for w in result.words
        ]
    if "segment" in req.granularities:
        body["segments"] = [
            _segment(i, s, req.temperature) for i, s in enumerate(s for s in result.segments if s.text)
        ]
    body["usage"] = _usage(result)
    return body


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments: Iterable[Segment]) -> Iterator[tuple[int, Segment]]:
    return enumerate((s for s in segments if s.text.strip()), start=1)


def srt(result: FileTranscript) -> str:
    return "".join(
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n\n"
        for i, s in _cues(result.segments)
    )


def vtt(result: FileTranscript) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n\n"
        for _, s in _cues(result.segments)
    )


def render(req: TranscriptionRequest, result: FileTranscript) -> tuple[bytes, str]:
    """``(body, content_type)`` for the requested format (JSON formats must say application/json)."""
    fmt = req.response_format
    if fmt == "json":
        body = {"text": result.text(), "usage": _usage(result)}
        return json.dumps(body, ensure_ascii=False).encode(), "application/json"
    if fmt == "verbose_json":
        return json.dumps(verbose_json(req, result), ensure_ascii=False).encode(), "application/json"
    if fmt == "srt":
        return srt(result).encode(), "text/plain; charset=utf-8"
    if fmt == "vtt":
        return vtt(result).encode(), "text/vtt; charset=utf-8"
    return (result.text() + "\n").encode(), "text/plain; charset=utf-8"


# ----------------------------------------------------------------------------- stream=true
def _sse(value: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(value, ensure_ascii=False).encode() + b"\n\n"


def delta_event(text: str) -> bytes:
    return _sse({"type": "transcript.text.delta", "delta": text})


def done_event(text: str) -> bytes:
    # The SDK's done event only knows token usage, which a CTC/Whisper decode does not bill.
    return _sse({"type": "transcript.text.done", "text": text})


def error_event(message: str) -> bytes:
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
