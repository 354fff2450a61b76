"""Deepgram's ``/v1/listen`` wire format, sans-I/O: query options in, JSON messages out.

Shapes follow specs/deepgram-live-listen.md: every field the SDK parses
strictly is always present, messages carry a ``type`` the SDK knows, and JSON
is compact (``deepgram-sagemaker`` looks for the literal ``"type":"Metadata"``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bidistream.errors import InputValidationError, UnauthenticatedError
from bidistream.models.speech.audio import SUPPORTED_ENCODINGS
from bidistream.models.speech.engines import Transcript, Word, plain_parts

__all__ = [
    "ControlMessage",
    "DeepgramAuthError",
    "DeepgramQueryError",
    "ListenOptions",
    "ModelInfo",
    "check_auth",
    "dumps",
    "metadata_message",
    "numerals",
    "parse_control",
    "parse_listen_query",
    "prerecorded_response",
    "results_message",
    "speech_started_message",
    "utterance_end_message",
]

# Deepgram model names that mean "your default"; our own profile names are added by the caller.
DEEPGRAM_DEFAULT_MODELS = frozenset(
    {"nova-3", "nova-2", "nova", "enhanced", "base", "general", "nova-3-general", "nova-2-general"}
)
_DEEPGRAM_MODEL_PREFIXES = ("nova-3-", "nova-2-", "enhanced-", "base-")
SUPPORTED_LANGUAGES = frozenset({"en", "en-us", "en-gb", "en-au", "en-in", "en-nz", "en-ca", "en-ie"})

_BOOL_PARAMS = frozenset(
    {
        "interim_results",
        "punctuate",
        "smart_format",
        "vad_events",
        "numerals",
        "multichannel",
        "diarize",
        "profanity_filter",
        "dictation",
        "detect_entities",
        "mip_opt_out",
        "filler_words",
        "measurements",
    }
)
# Accepted and ignored: no outbound network, or features this model does not offer.
_IGNORED_PARAMS = frozenset(
    {
        "callback",
        "callback_method",
        "extra",
        "keyterm",
        "keywords",
        "redact",
        "replace",
        "search",
        "version",
        "diarize_model",
        "no_delay",
    }
)
_KNOWN = frozenset(
    {"model", "language", "encoding", "sample_rate", "channels", "endpointing", "utterance_end_ms", "tag"}
)


def _error_body(message: str, request_id: str, code: str = "INVALID_QUERY_PARAMETER") -> dict[str, object]:
    return {"err_code": code, "err_msg": message, "request_id": request_id}


def _error_headers(message: str, request_id: str) -> dict[str, str]:
    """Deepgram's ``dg-error`` / ``dg-request-id`` on a refused upgrade.

    Clients that cannot read the body of a failed handshake (the SDK's
    websockets layer keeps only status and headers) log these instead.  Header
    values must be one line of Latin-1, so anything else is replaced.
    """
    line = " ".join(message.split()).encode("latin-1", "replace").decode("latin-1")
    return {"dg-error": line[:512], "dg-request-id": request_id}


class DeepgramAudioError(InputValidationError):
    """A pre-recorded body that is not audio we can decode: Deepgram answers 400 ``Bad Request`` in
    its own error shape, the same shape as every other error of this face (never a bare 415)."""

    code = "Bad Request"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        rid = request_id or str(uuid.uuid4())
        text = f"Bad Request: failed to process audio: {message}"
        super().__init__(
            text, detail=_error_body(text, rid, "Bad Request"), headers=_error_headers(text, rid)
        )


class DeepgramQueryError(InputValidationError):
    """A query parameter Deepgram would refuse; the upgrade is refused with 400 and Deepgram's body."""

    code = "INVALID_QUERY_PARAMETER"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        rid = request_id or str(uuid.uuid4())
        super().__init__(message, detail=_error_body(message, rid), headers=_error_headers(message, rid))


class DeepgramAuthError(UnauthenticatedError):
    code = "INVALID_AUTH"

    def __init__(self, message: str) -> None:
        rid = str(uuid.uuid4())
        super().__init__(
            message,
            detail={"err_code": "INVALID_AUTH", "err_msg": message, "request_id": rid},
            headers=_error_headers(message, rid),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenOptions:
    model: str = "nova-3"
    profile: str = "default"
    language: str = "en"
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int = 1
    interim_results: bool = False
    punctuate: bool = False
    smart_format: bool = False
    endpointing_ms: int | None = 10  # Deepgram's default; the endpointer floors it (min_endpoint_ms)
    utterance_end_ms: int | None = None
    vad_events: bool = False
    numerals: bool = False
    diarize: bool = False
    tags: tuple[str, ...] = field(default=())

    @property
    def formatted(self) -> bool:
        return self.punctuate or self.smart_format


def parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise DeepgramQueryError(f"Invalid value for {name}: {value!r} is not a boolean (true or false)")


def _parse_int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise DeepgramQueryError(f"Invalid value for {name}: {value!r} is not an integer") from None
    if not lo <= number <= hi:
        raise DeepgramQueryError(f"Invalid value for {name}: {number} is outside {lo}..{hi}")
    return number


def resolve_profile(model: str, profiles: Mapping[str, str]) -> str:
    """Deepgram names map to the default profile; our own names (and aliases) pick one."""
    key = model.strip().lower()
    if key in profiles:
        return profiles[key]
    if key in DEEPGRAM_DEFAULT_MODELS or key.startswith(_DEEPGRAM_MODEL_PREFIXES):
        return "default"
    known = ", ".join(sorted({*profiles, "nova-3", "nova-2"}))
    raise DeepgramQueryError(
        f"No such model/language/tier combination found: model {model!r} (known: {known})"
    )


def parse_listen_query(
    pairs: Iterable[tuple[str, str]],
    profiles: Mapping[str, str],
    *,
    strict: bool = True,
    default_endpointing_ms: int = 10,
) -> ListenOptions:
    """Validate Deepgram's query; raise DeepgramQueryError with the first problem found."""
    values: dict[str, str] = {}
    tags: list[str] = []
    flags: dict[str, bool] = {}
    for raw_key, value in pairs:
        key = raw_key.split("[", 1)[0]
        if key == "tag":
            tags.append(value)
        elif key in _BOOL_PARAMS:
            flags[key] = parse_bool(key, value)
        elif key in _KNOWN:
            values[key] = value
        elif key in _IGNORED_PARAMS or key == "language_hint":
            continue
        elif strict:
            raise DeepgramQueryError(f"Unsupported query parameter: {raw_key!r}")
    model = values.get("model", "nova-3")
    profile = resolve_profile(model, profiles)
    language = values.get("language", "en").strip()
    if language.lower() not in SUPPORTED_LANGUAGES:
        raise DeepgramQueryError(
            f"No such model/language/tier combination found: language {language!r} "
            "(this model is English only)"
        )
    encoding = values.get("encoding")
    if encoding is not None:
        encoding = encoding.strip().lower()
        if encoding not in SUPPORTED_ENCODINGS:
            raise DeepgramQueryError(
                f"Invalid value for encoding: {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
            )
    sample_rate = None
    if "sample_rate" in values:
        sample_rate = _parse_int("sample_rate", values["sample_rate"], 4000, 192000)
    if encoding is not None and sample_rate is None:
        raise DeepgramQueryError("sample_rate is required when encoding is given")
    channels = _parse_int("channels", values["channels"], 1, 8) if "channels" in values else 1
    endpointing: int | None = default_endpointing_ms
    if "endpointing" in values:
        raw = values["endpointing"].strip().lower()
        if raw == "false":
            endpointing = None
        elif raw == "true":
            endpointing = default_endpointing_ms
        else:
            endpointing = _parse_int("endpointing", raw, 10, 60000)
    utterance_end = None
    if "utterance_end_ms" in values:
        utterance_end = _parse_int("utterance_end_ms", values["utterance_end_ms"], 1000, 60000)
    interim = flags.get("interim_results", False)
    if utterance_end is not None and not interim:
        raise DeepgramQueryError("utterance_end_ms requires interim_results=true")
    return ListenOptions(
        model=model,
        profile=profile,
        language=language,
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        interim_results=interim,
        punctuate=flags.get("punctuate", False),
        smart_format=flags.get("smart_format", False),
        endpointing_ms=endpointing,
        utterance_end_ms=utterance_end,
        vad_events=flags.get("vad_events", False),
        numerals=flags.get("numerals", False),
        diarize=flags.get("diarize", False),
        tags=tuple(tags),
    )


def check_auth(headers: Mapping[str, str], keys: frozenset[str]) -> None:
    """``Authorization: Token K`` / ``Bearer K`` or ``Sec-WebSocket-Protocol: token, K``."""
    if not keys:
        return
    lower = {k.lower(): v for k, v in headers.items()}
    presented: list[str] = []
    auth = lower.get("authorization", "")
    scheme, _, credential = auth.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and credential.strip():
        presented.append(credential.strip())
    protocols = [p.strip() for p in lower.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if len(protocols) >= 2 and protocols[0].lower() == "token":
        presented.extend(protocols[1:])
    if not presented:
        raise DeepgramAuthError("Invalid credentials: no Authorization header or token subprotocol")
    if not any(p in keys for p in presented):
        raise DeepgramAuthError("Invalid credentials")


# --------------------------------------------------------------------------- client messages
@dataclass(frozen=True, slots=True)
class ControlMessage:
    type: str  # KeepAlive, Finalize, CloseStream
    raw: str


CONTROL_TYPES = frozenset({"KeepAlive", "Finalize", "CloseStream"})


def parse_control(text: str) -> ControlMessage:
    """A client text message; raises ValueError with Deepgram's description if not a known one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"Could not parse client message as JSON: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ValueError("Client message must be a JSON object with a string 'type'")
    kind = value["type"]
    if kind not in CONTROL_TYPES:
        raise ValueError(f"Unknown message type {kind!r}; expected KeepAlive, Finalize or CloseStream")
    return ControlMessage(kind, text)


def sniff_control(data: bytes) -> ControlMessage | None:
    """JSON control message arriving in a binary frame (SageMaker parts without DataType=UTF8)."""
    stripped = data.lstrip()
    if not stripped.startswith(b"{") or len(data) > 4096:
        return None
    try:
        return parse_control(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


# --------------------------------------------------------------------------- server messages
def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    arch: str
    uuid: str


def _words(transcript: Transcript, offset: float, formatted: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in transcript.words:
        # Unpunctuated output has no hyphens, so a compound becomes its parts, sharing
        # the compound's time span in proportion to their lengths (the transcript agrees).
        parts = [w.word] if formatted else plain_parts(w.word) or [w.word]
        total = sum(len(p) for p in parts)
        start = w.start
        for i, part in enumerate(parts):
            end = w.end if i == len(parts) - 1 else start + (w.end - w.start) * len(part) / total
            out.append(
                {
                    "word": part,
                    "start": round(start + offset, 3),
                    "end": round(end + offset, 3),
                    "confidence": w.confidence,
                    "punctuated_word": w.punctuated_word if formatted else part,
                }
            )
            start = end
    return out


_DIGIT_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_DIGIT_RUN = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine)(?:[ ,-]+(?:zero|one|two|three|four|five|six"
    r"|seven|eight|nine)\b)+",
    re.IGNORECASE,
)


def numerals(transcript: Transcript) -> Transcript:
    """``numerals`` / ``smart_format``: a run of two or more spoken digits becomes one numeral.

    The engine decodes digits spelled out (every digit survives that way, see
    engines.WhisperEngine), so the numerals are made here, from words the model
    did produce, instead of trusting the model's own digit strings.
    """
    text = _DIGIT_RUN.sub(
        lambda m: "".join(_DIGIT_WORDS[w.lower()] for w in re.findall(r"[A-Za-z]+", m.group())),
        transcript.text,
    )
    if text == transcript.text:
        return transcript
    words: list[Word] = []
    run: list[Word] = []

    def close_run() -> None:
        if len(run) >= 2:
            digits = "".join(_DIGIT_WORDS[w.word] for w in run)
            tail = run[-1].punctuated_word[len(run[-1].punctuated_word.rstrip(".,?!;:")) :]
            words.append(
                Word(digits, run[0].start, run[-1].end, min(w.confidence for w in run), digits + tail)
            )
        else:
            words.extend(run)
        run.clear()

    for w in transcript.words:
        if run and (w.word not in _DIGIT_WORDS or run[-1].punctuated_word.endswith((".", "?", "!"))):
            close_run()
        if w.word in _DIGIT_WORDS:
            run.append(w)
        else:
            words.append(w)
    close_run()
    return Transcript(text, transcript.confidence, tuple(words))


def format_transcript(transcript: Transcript, formatted: bool) -> str:
    if formatted:
        return transcript.text
    return " ".join(p for t in transcript.text.split() for p in plain_parts(t))


def results_message(
    transcript: Transcript,
    *,
    start: float,
    duration: float,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
    request_id: str,
    info: ModelInfo,
    formatted: bool,
    channels: int = 1,
    numerals: bool = False,
) -> dict[str, Any]:
    if numerals:
        transcript = _numerals(transcript)
    return {
        "type": "Results",
        "channel_index": [0, channels],
        "duration": round(duration, 3),
        "start": round(start, 3),
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": format_transcript(transcript, formatted),
                    "confidence": transcript.confidence,
                    "words": _words(transcript, start, formatted),
                }
            ]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": {"name": info.name, "version": info.version, "arch": info.arch},
            "model_uuid": info.uuid,
        },
    }


def speech_started_message(timestamp: float) -> dict[str, Any]:
    return {"type": "SpeechStarted", "channel": [0], "timestamp": round(timestamp, 3)}


def utterance_end_message(last_word_end: float, channels: int = 1) -> dict[str, Any]:
    return {"type": "UtteranceEnd", "channel": [0, channels], "last_word_end": round(last_word_end, 3)}


def error_message(description: str, message: str = "", variant: str = "SchemaError") -> dict[str, Any]:
    return {"type": "Error", "variant": variant, "description": description, "message": message}


def _now() -> str:
    return (
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{dt.datetime.now(dt.UTC).microsecond // 1000:03d}Z"
    )


def metadata_message(
    *, request_id: str, sha256: str, duration: float, channels: int, info: ModelInfo
) -> dict[str, Any]:
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": _now(),
        "duration": round(duration, 3),
        "channels": channels,
        "models": [info.uuid],
        "model_info": {info.uuid: {"name": info.name, "version": info.version, "arch": info.arch}},
    }


def prerecorded_response(
    segments: list[tuple[float, Transcript]],
    *,
    request_id: str,
    sha256: str,
    duration: float,
    info: ModelInfo,
    formatted: bool,
    numerals: bool = False,
) -> dict[str, Any]:
    """Deepgram's pre-recorded (``POST /v1/listen``) body for a whole file."""
    words: list[dict[str, Any]] = []
    texts: list[str] = []
    confs: list[float] = []
    utterances: list[dict[str, Any]] = []
    for offset, tr in segments:
        if not tr.text:
            continue
        if numerals:
            tr = _numerals(tr)
        seg_words = _words(tr, offset, formatted)
        words.extend(seg_words)
        text = format_transcript(tr, formatted)
        texts.append(text)
        confs.append(tr.confidence)
        utterances.append(
            {
                "start": seg_words[0]["start"] if seg_words else round(offset, 3),
                "end": seg_words[-1]["end"] if seg_words else round(offset, 3),
                "confidence": tr.confidence,
                "channel": 0,
                "transcript": text,
                "words": seg_words,
                "id": str(uuid.uuid4()),
            }
        )
    confidence = round(sum(confs) / len(confs), 4) if confs else 0.0
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": sha256,
            "created": _now(),
            "duration": round(duration, 3),
            "channels": 1,
            "models": [info.uuid],
            "model_info": {info.uuid: {"name": info.name, "version": info.version, "arch": info.arch}},
        },
        "results": {
            "channels": [
                {"alternatives": [{"transcript": " ".join(texts), "confidence": confidence, "words": words}]}
            ],
            "utterances": utterances,
        },
    }


_numerals = numerals  # results_message's parameter of the same name shadows the function
