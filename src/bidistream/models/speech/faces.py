"""The speech model's API faces, wired: decode the upload, transcribe, render (the I/O side).

The faces themselves are sans-I/O in :mod:`bidistream.protocols`; this module
is the thin async glue between them and :class:`SpeechModel`, so the model
keeps one routing table and no API's shapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bidistream.errors import BidistreamError, InternalError
from bidistream.frames import Frame
from bidistream.model import Request, Response
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.audio import AudioDecoder, AudioFormatError
from bidistream.models.speech.endpointing import EndpointConfig, UtteranceDone
from bidistream.models.speech.engines import SAMPLE_RATE, Transcript, clamp_start
from bidistream.models.speech.files import decode_file
from bidistream.protocols import nim, openai
from bidistream.protocols.asr import FileTranscript, Segment, TimedWord

if TYPE_CHECKING:
    from bidistream.models.speech.model import SpeechModel
    from bidistream.models.speech.vad import SileroVad

__all__ = [
    "INVOCATIONS_FACES",
    "NIM_PATHS",
    "OPENAI_PATHS",
    "diarize_transcript",
    "file_transcript",
    "nim_invoke",
    "openai_invoke",
    "riva_service",
]

log = logging.getLogger("bidistream.speech")

OPENAI_PATHS = openai.PATHS
NIM_PATHS = nim.PATHS
# ``--set invocations=deepgram`` puts Deepgram's pre-recorded shape back on POST /invocations.
INVOCATIONS_FACES = ("nim", "deepgram")


def file_transcript(
    audio: np.ndarray, segments: Sequence[UtteranceDone], transcripts: Sequence[Transcript], *, label: str
) -> FileTranscript:
    """Engine transcripts of VAD segments → the neutral file transcript (absolute times)."""
    preroll = EndpointConfig().preroll_ms / 1000
    out: list[Segment] = []
    for seg, raw in zip(segments, transcripts, strict=True):
        if not raw.text:
            continue
        offset = seg.start / SAMPLE_RATE
        tr = clamp_start(raw, preroll if seg.start > 0 else 0.0)
        words = tuple(
            TimedWord(
                w.word, w.punctuated_word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence
            )
            for w in tr.words
        )
        start = words[0].start if words else offset
        end = words[-1].end if words else seg.end / SAMPLE_RATE
        out.append(Segment(start, end, tr.text, tr.confidence, words))
    return FileTranscript(len(audio) / SAMPLE_RATE, "en", tuple(out), model=f"bidistream-{label}")


def diarize_transcript(
    audio: np.ndarray, result: FileTranscript, vad: SileroVad, max_speakers: int | None
) -> FileTranscript:
    from bidistream.models.speech.diarize import diarize_words

    return diarize_words(audio, result, vad, max_speakers)


def _profile(model: SpeechModel, name: str) -> str | None:
    """Our own profile names pick a profile; any other model name (``whisper-1``) is the default."""
    from bidistream.models.speech.model import PROFILE_ALIASES

    profile = PROFILE_ALIASES.get(name.strip().lower())
    return profile if profile and model.available(profile) else None


# ----------------------------------------------------------------------------- Deepgram diarize=true
def deepgram_speakers(body: dict[str, Any], audio: np.ndarray, vad: SileroVad) -> None:
    """Pre-recorded ``diarize=true``: ``speaker`` on every word and utterance (in place)."""
    from bidistream.models.speech.diarize import speakers_for

    words = body["results"]["channels"][0]["alternatives"][0]["words"]
    tags = speakers_for(audio, [(w["start"], w["end"]) for w in words], vad, None)
    for word, tag in zip(words, tags, strict=True):
        word["speaker"] = tag
        word["speaker_confidence"] = 1.0
    for utterance in body["results"].get("utterances", []):
        spoken = [w["speaker"] for w in utterance["words"] if "speaker" in w]
        utterance["speaker"] = max(set(spoken), key=spoken.count) if spoken else 0


async def deepgram_diarized_live(
    model: SpeechModel,
    frames: AsyncIterator[Frame],
    options: dg.ListenOptions,
    run: Callable[[AsyncIterator[Frame]], AsyncIterator[Frame]],
) -> AsyncIterator[Frame]:
    """Live ``diarize=true``: the session's audio is also embedded; each final's words get speakers.

    A wrapper around the live transcriber (its input teed, its finals
    annotated), so live.py needs no diarization code.
    """
    from bidistream.models.speech.diarize import LiveDiarizer

    assert model.vad is not None
    diarizer = LiveDiarizer(model.vad)
    decoder = AudioDecoder(options.encoding, options.sample_rate, options.channels)
    lock = asyncio.Lock()  # the diarizer is fed and asked from worker threads, one at a time

    async def tee() -> AsyncIterator[Frame]:
        async for frame in frames:
            if not frame.is_text and frame.data and dg.sniff_control(frame.data) is None:
                try:
                    samples = decoder.feed(frame.data)
                except AudioFormatError:
                    samples = np.zeros(0, dtype=np.float32)  # the transcriber reports bad audio
                if len(samples):
                    async with lock:
                        await asyncio.to_thread(diarizer.feed, samples)
            yield frame

    async for out in run(tee()):
        if out.is_text and b'"type":"Results"' in out.data and b'"is_final":true' in out.data:
            message = json.loads(out.data)
            words = message["channel"]["alternatives"][0]["words"]
            async with lock:
                tags = await asyncio.to_thread(diarizer.speakers, [(w["start"], w["end"]) for w in words])
            for word, tag in zip(words, tags, strict=True):
                word["speaker"] = tag
            out = Frame.text(dg.dumps(message))
        yield out


# ----------------------------------------------------------------------------- OpenAI
async def openai_invoke(model: SpeechModel, request: Request) -> Response:
    try:
        req = openai.parse_request(request.body, request.content_type)
        audio, _ = await asyncio.to_thread(decode_file, req.file)
        profile = _profile(model, req.model)
        if req.stream:
            return Response(_openai_events(model, audio, profile), "text/event-stream")
        result = await model.transcribe_file(audio, profile=profile)
    except BidistreamError as exc:
        raise openai.translate_error(exc) from exc
    except Exception as exc:
        log.exception("OpenAI transcription failed")
        raise openai.translate_error(InternalError(f"transcription failed: {type(exc).__name__}")) from exc
    body, ctype = openai.render(req, result)
    return Response(body, ctype)


async def _openai_events(model: SpeechModel, audio: np.ndarray, profile: str | None) -> AsyncIterator[bytes]:
    """SSE: one delta per utterance as it is decoded, then the done event with the whole text."""
    try:
        result = await model.transcribe_file(audio, profile=profile)
    except BidistreamError as exc:
        yield openai.error_event(exc.message)
        return
    except Exception as exc:  # headers are sent: the error travels as an event the SDK raises
        log.exception("OpenAI streamed transcription failed")
        yield openai.error_event(f"transcription failed: {type(exc).__name__}")
        return
    texts: list[str] = []
    for seg in result.segments:
        text = seg.text.strip()
        if text:
            yield openai.delta_event(text if not texts else " " + text)
            texts.append(text)
    yield openai.done_event(" ".join(texts))


# ----------------------------------------------------------------------------- NIM
async def nim_invoke(model: SpeechModel, request: Request) -> Response:
    try:
        req = nim.parse_request(
            request.body, request.content_type, request.path, request.raw_query, request.headers
        )
        audio, _ = await asyncio.to_thread(decode_file, req.audio)
        diarize = req.diarize and req.route == "grpc"
        result = await model.transcribe_file(audio, diarize=diarize, max_speakers=req.max_speakers)
    except BidistreamError as exc:
        raise nim.translate_error(exc) from exc
    except Exception as exc:
        log.exception("NIM invocation failed")
        raise nim.translate_error(InternalError(f"transcription failed: {type(exc).__name__}")) from exc
    body: dict[str, Any] = (
        nim.grpc_answer(result, diarized=diarize) if req.route == "grpc" else nim.http_answer(result)
    )
    return Response.json(body)


# ----------------------------------------------------------------------------- Riva
def riva_service(model: SpeechModel) -> Any:
    from bidistream.models.speech.riva_backend import RivaBackend
    from bidistream.protocols.riva import RivaAsrService

    return RivaAsrService(RivaBackend(model))
