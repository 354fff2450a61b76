"""NVIDIA Riva's ``nvidia.riva.asr.RivaSpeechRecognition`` gRPC service over the speech model.

The request side (which audio, which model, which options) is plain functions
over the protobuf messages; the servicer only moves messages between grpc.aio
and a :class:`RivaBackend` (the speech model).  Stubs are the ones shipped in
``nvidia-riva-client`` (``riva.client.proto``); nothing is vendored.

What the real clients send (specs/asr-api-wire-facts.md): the python-clients
scripts send whole WAV files with no encoding, rate or language, and the
streaming iterator's first chunk starts with the 44-byte RIFF header, so a
RIFF header is detected, its rate taken, and the header dropped.  Nothing but
RIFF is sniffed in audio declared ``LINEAR_PCM``: raw PCM can begin with
``ff ff``, which looks like an MP3 frame.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_audio_pb2 as raudio

from bidistream.errors import BidistreamError, InputValidationError, wire_form
from bidistream.frames import Frame
from bidistream.protocols.asr import FileTranscript, TimedWord

__all__ = [
    "MAX_RECEIVE_BYTES",
    "AudioSpec",
    "RivaAsrService",
    "RivaBackend",
    "RivaRequestError",
    "audio_spec",
    "check_model",
    "recognize_response",
]

# gRPC's default 4 MiB receive limit is too small for a long Recognize call (a 25 MB
# file is 13 min of 16 kHz PCM); the server hosting this service must allow this much.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# The models GetRivaSpeechRecognitionConfig lists: ``--list-models`` reads type and language_code.
OFFLINE_MODEL = "bidistream-whisper-en-US-asr-offline"
ONLINE_MODEL = "bidistream-whisper-en-US-asr-streaming"
LANGUAGE = "en-US"
SUPPORTED_RATES = (8000, 96000)
DEFAULT_MAX_SPEAKERS = 8
# Interim hypotheses of a re-decoded Whisper window are about half stable.
INTERIM_STABILITY = 0.5


class RivaRequestError(InputValidationError):
    """INVALID_ARGUMENT with Riva's own wording where Riva has one."""


@dataclass(frozen=True, slots=True)
class AudioSpec:
    """How to read the audio: ``encoding`` None means a container file to sniff and decode."""

    encoding: str | None  # linear16 | mulaw | alaw | None
    sample_rate: int
    channels: int = 1


def _unavailable(config: Any, kind: str, rate: int) -> RivaRequestError:
    return RivaRequestError(
        "Error: Unavailable model requested given these parameters: "
        f"language_code={config.language_code}; sample_rate={rate}; type={kind}; "
        + (f"model={config.model}; " if config.model else "")
    )


def check_model(config: Any, kind: str, rate: int) -> None:
    """English only (``en``, ``en-US``, empty = the default); a named model must be ours."""
    lang = config.language_code.strip().lower().replace("_", "-")
    if lang and lang != "en" and not lang.startswith("en-"):
        raise _unavailable(config, kind, rate)
    if config.model and config.model not in (OFFLINE_MODEL, ONLINE_MODEL):
        raise _unavailable(config, kind, rate)


def wav_header(data: bytes) -> tuple[int, int, int] | None:
    """``(sample_rate, channels, data_offset)`` of a PCM16 RIFF/WAVE header, or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    rate = channels = bits = 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt " and pos + 24 <= len(data):
            _tag, channels, rate, _br, _align, bits = struct.unpack_from("<HHIIHH", data, pos + 8)
        if chunk == b"data":
            if not rate:
                raise RivaRequestError("WAV header has no fmt chunk before its data")
            if bits != 16:
                raise RivaRequestError(f"LINEAR_PCM WAV must be 16-bit, got {bits}-bit")
            return rate, channels, pos + 8
        pos += 8 + size + (size & 1)
    return None


_ENCODINGS = {
    raudio.AudioEncoding.LINEAR_PCM: "linear16",
    raudio.AudioEncoding.MULAW: "mulaw",
    raudio.AudioEncoding.ALAW: "alaw",
}
_CONTAINERS = {
    raudio.AudioEncoding.ENCODING_UNSPECIFIED,
    raudio.AudioEncoding.FLAC,
    raudio.AudioEncoding.OGGOPUS,
}


def audio_spec(config: Any, head: bytes, *, streaming: bool) -> tuple[AudioSpec, int]:
    """The audio format and how many leading bytes to drop (a RIFF header), or RivaRequestError."""
    encoding = int(config.encoding)
    rate = int(config.sample_rate_hertz)
    channels = max(1, int(config.audio_channel_count or 1))
    if encoding in (raudio.AudioEncoding.LINEAR_PCM, raudio.AudioEncoding.ENCODING_UNSPECIFIED):
        header = wav_header(head)
        if header is not None:
            # The header is the truth (the scripts send none of rate/encoding or a stale one).
            hdr_rate, hdr_channels, offset = header
            spec = AudioSpec("linear16", hdr_rate, max(1, hdr_channels))
            _check_rate(spec.sample_rate)
            return spec, offset
    if encoding in _ENCODINGS:
        if rate <= 0:
            raise RivaRequestError(
                f"sample_rate_hertz is required for {raudio.AudioEncoding.Name(encoding)} audio "
                "without a WAV header"
            )
        _check_rate(rate)
        return AudioSpec(_ENCODINGS[encoding], rate, channels), 0
    if encoding in _CONTAINERS:
        if streaming:
            raise RivaRequestError(
                f"encoding {raudio.AudioEncoding.Name(encoding)} is not supported for streaming: "
                "send LINEAR_PCM, MULAW or ALAW (or a WAV header)"
            )
        return AudioSpec(None, rate, channels), 0
    raise RivaRequestError(f"unsupported audio encoding {encoding}")


def _check_rate(rate: int) -> None:
    lo, hi = SUPPORTED_RATES
    if not lo <= rate <= hi:
        raise RivaRequestError(f"unsupported sample_rate_hertz {rate}: use {lo}..{hi} Hz")


def _diarization(config: Any) -> tuple[bool, int | None]:
    if not config.HasField("diarization_config") or not config.diarization_config.enable_speaker_diarization:
        return False, None
    count = int(config.diarization_config.max_speaker_count)
    return True, count if count > 0 else DEFAULT_MAX_SPEAKERS


def _word_text(word: TimedWord, punctuate: bool) -> str:
    return (word.punctuated.strip() or word.word) if punctuate else word.word


def _words(words: Iterable[TimedWord], punctuate: bool, diarized: bool) -> list[Any]:
    return [
        rasr.WordInfo(
            word=_word_text(w, punctuate),
            start_time=round(w.start * 1000),
            end_time=round(w.end * 1000),
            confidence=w.confidence,
            speaker_tag=(w.speaker or 0) if diarized else 0,
        )
        for w in words
    ]


def recognize_response(result: FileTranscript, config: Any, *, diarized: bool) -> Any:
    """One SpeechRecognitionResult per utterance; integer-millisecond word times."""
    punctuate = bool(config.enable_automatic_punctuation)
    response = rasr.RecognizeResponse()
    for seg in result.segments:
        text = seg.text.strip() if punctuate else seg.plain_text()
        if not text:
            continue
        alt = rasr.SpeechRecognitionAlternative(transcript=text + " ", confidence=seg.confidence)
        if config.enable_word_time_offsets or diarized:
            alt.words.extend(_words(seg.words, punctuate, diarized))
        response.results.append(
            rasr.SpeechRecognitionResult(alternatives=[alt], channel_tag=1, audio_processed=seg.end)
        )
    return response


# ----------------------------------------------------------------------------- backend
class RivaBackend(Protocol):
    """What the Riva face needs from a speech model."""

    def decode(self, audio: bytes, spec: AudioSpec) -> np.ndarray: ...

    async def transcribe(
        self, audio: np.ndarray, *, diarize: bool, max_speakers: int | None
    ) -> FileTranscript: ...

    def live(self, frames: AsyncIterator[Frame], query: str) -> AsyncIterator[Frame]:
        """A live session speaking Deepgram's ``/v1/listen`` messages (the model's native stream)."""
        ...


def _status(exc: BidistreamError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, wire_form(exc).grpc_status, grpc.StatusCode.INTERNAL)


def live_query(spec: AudioSpec, config: Any, interim: bool) -> str:
    """The model's live-session options for a Riva stream (Deepgram's query names)."""
    punct = "true" if config.enable_automatic_punctuation else "false"
    diarize, _ = _diarization(config)
    return (
        f"encoding={spec.encoding}&sample_rate={spec.sample_rate}&channels={spec.channels}"
        f"&interim_results={'true' if interim else 'false'}&punctuate={punct}"
        + ("&diarize=true" if diarize else "")
    )


def streaming_result(message: dict[str, Any], config: Any, processed: float) -> Any | None:
    """A Deepgram ``Results`` message → a StreamingRecognitionResult, or None if empty."""
    alt = message["channel"]["alternatives"][0]
    text = str(alt["transcript"]).strip()
    if not text:
        return None
    final = bool(message["is_final"])
    out = rasr.SpeechRecognitionAlternative(transcript=text + (" " if final else ""))
    if final:
        out.confidence = float(alt["confidence"])
        if config.enable_word_time_offsets or _diarization(config)[0]:
            punctuate = bool(config.enable_automatic_punctuation)
            out.words.extend(
                rasr.WordInfo(
                    word=str(w["punctuated_word"] if punctuate else w["word"]),
                    start_time=round(float(w["start"]) * 1000),
                    end_time=round(float(w["end"]) * 1000),
                    confidence=float(w["confidence"]),
                    speaker_tag=int(w.get("speaker", 0)),
                )
                for w in alt["words"]
            )
    return rasr.StreamingRecognitionResult(
        alternatives=[out],
        is_final=final,
        stability=1.0 if final else INTERIM_STABILITY,
        channel_tag=1,
        audio_processed=processed,
    )


class RivaAsrService(rasr_grpc.RivaSpeechRecognitionServicer):
    """The servicer; ``add_to_server`` registers it on a ``grpc.aio.Server`` (Model.grpc_services)."""

    # Options the hosting server needs for this service (the receive limit above).
    server_options = (("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),)

    def __init__(self, backend: RivaBackend) -> None:
        self.backend = backend

    def add_to_server(self, server: Any) -> None:
        rasr_grpc.add_RivaSpeechRecognitionServicer_to_server(self, server)

    async def GetRivaSpeechRecognitionConfig(self, request: Any, context: Any) -> Any:
        response = rasr.RivaSpeechRecognitionConfigResponse()
        for name, kind in ((OFFLINE_MODEL, "offline"), (ONLINE_MODEL, "online")):
            if request.model_name and request.model_name != name:
                continue
            entry = response.model_config.add()
            entry.model_name = name
            entry.parameters.update(
                {
                    "type": kind,
                    "language_code": LANGUAGE,
                    "sample_rate": "16000",
                    "streaming": str(kind == "online"),
                }
            )
        return response

    async def Recognize(self, request: Any, context: Any) -> Any:
        try:
            config = request.config
            spec, skip = audio_spec(config, request.audio[:4096], streaming=False)
            check_model(config, "offline", spec.sample_rate)
            diarize, speakers = _diarization(config)
            # Up to MAX_RECEIVE_BYTES of audio: decode off the event loop.
            audio = await asyncio.to_thread(self.backend.decode, request.audio[skip:], spec)
            result = await self.backend.transcribe(audio, diarize=diarize, max_speakers=speakers)
            response = recognize_response(result, config, diarized=diarize)
        except BidistreamError as exc:
            await context.abort(_status(exc), exc.message)
        response.id.CopyFrom(request.id)
        return response

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        iterator = request_iterator.__aiter__()
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            return
        if first.WhichOneof("streaming_request") != "streaming_config":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first StreamingRecognizeRequest must carry streaming_config",
            )
        streaming = first.streaming_config
        config = streaming.config
        head = b""
        pending: list[bytes] = []
        # Read until the format is known: a RIFF header may be split over chunks.
        spec = AudioSpec("linear16", 16000)
        skip = 0
        try:
            async for request in iterator:
                if request.WhichOneof("streaming_request") == "streaming_config":
                    raise RivaRequestError("streaming_config may only be sent in the first request")
                pending.append(request.audio_content)
                head += request.audio_content
                if len(head) >= 12 and (
                    head[:4] != b"RIFF" or wav_header(head) is not None or len(head) > 65536
                ):
                    break
            if not head:
                return  # no audio at all: nothing to recognise
            spec, skip = audio_spec(config, head, streaming=True)
            check_model(config, "online", spec.sample_rate)
        except BidistreamError as exc:
            await context.abort(_status(exc), exc.message)
        query = live_query(spec, config, bool(streaming.interim_results))
        frames = _frames(b"".join(pending)[skip:], iterator)
        processed = 0.0
        try:
            async for out in self.backend.live(frames, query):
                message = json.loads(out.data)
                if message.get("type") == "Error":
                    raise RivaRequestError(str(message.get("description", "bad stream input")))
                if message.get("type") != "Results":
                    continue
                processed = max(processed, float(message["start"]) + float(message["duration"]))
                result = streaming_result(message, config, processed)
                if result is not None:
                    yield rasr.StreamingRecognizeResponse(results=[result])
        except RivaRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except BidistreamError as exc:
            await context.abort(_status(exc), exc.message)


async def _frames(first: bytes, iterator: AsyncIterator[Any]) -> AsyncIterator[Frame]:
    """The audio as the model's live input, ending with CloseStream so the last utterance is final."""
    if first:
        yield Frame.binary(first)
    async for request in iterator:
        if request.WhichOneof("streaming_request") == "streaming_config":
            raise RivaRequestError("streaming_config may only be sent in the first request")
        if request.audio_content:
            yield Frame.binary(request.audio_content)
    yield Frame.text('{"type":"CloseStream"}')
