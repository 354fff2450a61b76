"""``bidistream serve speech``: offline speech-to-text speaking Deepgram's ``/v1/listen``.

Profiles (``model=`` in the query, or ``--set profile=`` for the default):

- ``default``: Whisper tiny.en (faster-whisper, int8); Deepgram names such as
  ``nova-3`` map here.
- ``accurate``: Whisper base (multilingual weights, English decoding); loaded on
  first use unless preloaded.
- ``light``: pocketsphinx en-us; cheap and weak.
- ``custom``: any CTranslate2 Whisper directory (``--set model_dir=DIR`` or
  ``$BIDISTREAM_SPEECH_MODEL_DIR``).

Each profile is loaded once per process and shared by every session through
its :class:`DecodeScheduler`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar

import numpy as np

from bidistream.errors import InputValidationError
from bidistream.frames import Frame
from bidistream.metrics import InstanceIdentity, SpeechMeter
from bidistream.model import GrpcService, Model, Request, Response, Session
from bidistream.models.speech import faces
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.audio import AudioDecoder, AudioFormatError
from bidistream.models.speech.endpointing import EndpointConfig, Endpointer, UtteranceDone
from bidistream.models.speech.engines import (
    SAMPLE_RATE,
    Engine,
    PocketsphinxEngine,
    WhisperEngine,
    clamp_start,
)
from bidistream.models.speech.live import FACE_HEADER, LiveConfig, LiveTranscriber
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.vad import SileroVad
from bidistream.models.speech.weights import locate_base, locate_model_dir, locate_tiny_en
from bidistream.protocols.asr import FileTranscript

__all__ = ["PROFILE_ALIASES", "SpeechModel"]

# Our own model names (and Deepgram's Whisper names) -> profile.
PROFILE_ALIASES: dict[str, str] = {
    "default": "default",
    "tiny.en": "default",
    "whisper-tiny": "default",
    "whisper-tiny.en": "default",
    "accurate": "accurate",
    "whisper-base": "accurate",
    "light": "light",
    "pocketsphinx": "light",
    "custom": "custom",
}
PROFILES = ("default", "accurate", "light", "custom")


def _bool(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


class SpeechModel(Model):
    name = "speech"
    invocation_paths: ClassVar[tuple[str, ...]] = ("v1/listen",)
    # Deepgram's pre-recorded API, OpenAI's transcriptions and NIM's forced routes
    # (``invocations`` itself is always routed; see :meth:`invoke`).
    http_paths: ClassVar[tuple[str, ...]] = ("v1/listen", *faces.OPENAI_PATHS, *faces.NIM_PATHS)
    live_paths: ClassVar[tuple[str, ...]] = ("v1/health/live",)
    ready_paths: ClassVar[tuple[str, ...]] = ("v1/health/ready",)
    subprotocols: ClassVar[tuple[str, ...]] = ("token",)

    def __init__(
        self,
        profile: str = "default",
        model_dir: str | None = None,
        model_sha256: str | None = None,
        preload: str = "",
        interim_interval: str | float = 1.0,
        first_interim: str | float = 0.25,
        endpointing: str | int = 10,
        max_utterance: str | float = 15.0,
        idle_timeout: str | float = 10.0,
        batching: str | bool = True,
        max_batch: str | int = 8,
        max_interim_batch: str | int = 2,
        max_final_batch: str | int = 2,
        slots: str | int | None = None,
        cpu_threads: str | int = 1,
        beam_size: str | int = 5,
        window: str | float = 10.0,
        interim_window: str | float = 10.0,
        api_keys: str | None = None,
        strict_query: str | bool = True,
        verify_weights: str | bool = True,
        reserve_final_slot: str | bool = True,
        invocations: str | None = None,
        beam_below: str | float = -0.45,
    ) -> None:
        self.default_profile = PROFILE_ALIASES.get(profile.strip().lower(), "")
        if not self.default_profile:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
        self.model_dir = model_dir or os.environ.get("BIDISTREAM_SPEECH_MODEL_DIR") or None
        self.model_sha256 = model_sha256
        self.preload = tuple(PROFILE_ALIASES[p.strip().lower()] for p in preload.split(",") if p.strip())
        self.live_config = LiveConfig(
            interim_interval=float(interim_interval),
            first_interim=float(first_interim),
            idle_timeout=float(idle_timeout),
            max_utterance_ms=int(float(max_utterance) * 1000),
        )
        self.default_endpointing = int(endpointing)
        self.batching = _bool("batching", batching)
        self.max_batch = int(max_batch)
        self.max_interim_batch = int(max_interim_batch)
        self.max_final_batch = int(max_final_batch)
        self.slots = int(slots) if slots else (os.cpu_count() or 1)
        self.cpu_threads = int(cpu_threads)
        self.beam_size = int(beam_size)
        self.beam_below = float(beam_below)
        self.window: float | None = None if str(window).lower() in ("full", "30", "none") else float(window)
        self.interim_window = float(interim_window)
        keys = api_keys if api_keys is not None else os.environ.get("BIDISTREAM_SPEECH_API_KEYS", "")
        self.api_keys = frozenset(k.strip() for k in keys.split(",") if k.strip())
        self.strict_query = _bool("strict_query", strict_query)
        self.verify_weights = _bool("verify_weights", verify_weights)
        # Keep one decode slot for finals (see DecodeScheduler); false lets interims use all.
        self.reserve_final_slot = _bool("reserve_final_slot", reserve_final_slot)
        # Which API answers POST /invocations: NIM's (default) or Deepgram's pre-recorded;
        # the environment variable lets CreateModel's Environment choose it too.
        face = invocations or os.environ.get("BIDISTREAM_SPEECH_INVOCATIONS") or "nim"
        self.invocations = face.strip().lower()
        if self.invocations not in faces.INVOCATIONS_FACES:
            raise ValueError(f"invocations must be one of {', '.join(faces.INVOCATIONS_FACES)}")
        if self.live_config.interim_interval <= 0:
            raise ValueError("interim_interval must be > 0 seconds")
        self.vad: SileroVad | None = None
        self._schedulers: dict[str, DecodeScheduler] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------------ loading
    def _profile_map(self) -> dict[str, str]:
        # Deepgram's names resolve to "default" in protocol.resolve_profile; point that at ours.
        mapping = dict(PROFILE_ALIASES)
        mapping["default"] = self.default_profile
        return mapping

    def available(self, profile: str) -> bool:
        return profile != "custom" or self.model_dir is not None

    def _build_engine(self, profile: str) -> Engine:
        def whisper(spec: object, label: str) -> Engine:
            from bidistream.models.speech.weights import WeightsSpec

            assert isinstance(spec, WeightsSpec)
            return WhisperEngine(
                spec,
                label=label,
                parallelism=self.slots,
                cpu_threads=self.cpu_threads,
                beam_size=self.beam_size,
                batch_limit=self.max_batch,
                window_pad=None if self.window is None else 1.0,
                min_window=self.window or 30.0,
                interim_window=self.interim_window,
                beam_below=self.beam_below,
            )

        factories: dict[str, Callable[[], Engine]] = {
            "default": lambda: whisper(locate_tiny_en(self.verify_weights), "tiny.en"),
            "accurate": lambda: whisper(locate_base(self.verify_weights), "base"),
            "light": lambda: PocketsphinxEngine(parallelism=self.slots),
            "custom": lambda: whisper(
                locate_model_dir(self.model_dir or "", self.model_sha256), f"custom:{self.model_dir}"
            ),
        }
        return factories[profile]()

    async def scheduler(self, profile: str) -> DecodeScheduler:
        """The profile's shared scheduler, loading its engine on first use (once)."""
        if profile in self._schedulers:
            return self._schedulers[profile]
        lock = self._locks.setdefault(profile, asyncio.Lock())
        async with lock:
            if profile not in self._schedulers:
                engine = await asyncio.to_thread(self._build_engine, profile)
                # Warm up: the first CTranslate2 call allocates its buffers (~1 s).
                await asyncio.to_thread(engine.decode, [np.zeros(SAMPLE_RATE, dtype=np.float32)], final=True)
                self._schedulers[profile] = DecodeScheduler(
                    engine,
                    slots=self.slots,
                    batching=self.batching,
                    max_batch=self.max_batch,
                    max_interim_batch=self.max_interim_batch,
                    max_final_batch=self.max_final_batch,
                    reserve_final_slot=self.reserve_final_slot,
                    metric_labels=InstanceIdentity.from_env().labels,
                )
        return self._schedulers[profile]

    async def load(self) -> None:
        self.vad = await asyncio.to_thread(SileroVad)
        for profile in dict.fromkeys((self.default_profile, *self.preload)):
            await self.scheduler(profile)

    def model_info(self, profile: str) -> dg.ModelInfo:
        sched = self._schedulers.get(profile)
        engine = sched.engine if sched else None
        label = getattr(engine, "label", profile) if engine else profile
        arch = engine.arch if engine else "whisper"
        name = f"bidistream-{profile}"
        return dg.ModelInfo(name, str(label), arch, str(uuid.uuid5(uuid.NAMESPACE_URL, f"bidistream/{name}")))

    # ------------------------------------------------------------------ sessions
    def options_for(self, raw_query: str, pairs: list[tuple[str, str]]) -> dg.ListenOptions:
        options = dg.parse_listen_query(
            pairs,
            self._profile_map(),
            strict=self.strict_query,
            default_endpointing_ms=self.default_endpointing,
        )
        if not self.available(options.profile):
            raise dg.DeepgramQueryError(
                f"model {options.model!r} needs a model directory: start with --set model_dir=DIR"
            )
        return options

    def check_session(self, session: Session) -> None:
        dg.check_auth(session.headers, self.api_keys)
        self.options_for(session.raw_query, session.query)

    async def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        options = self.options_for(session.raw_query, session.query)
        scheduler = await self.scheduler(options.profile)
        assert self.vad is not None, "load() not called"
        request_id = str(uuid.UUID(hex=session.id)) if _is_hex_uuid(session.id) else session.id
        live = LiveTranscriber(
            options,
            scheduler,
            self.vad.stream(),
            self.model_info(options.profile),
            request_id,
            self.live_config,
            meter=SpeechMeter(
                InstanceIdentity.from_env(), session.headers.get(FACE_HEADER, "deepgram"), session.id
            ),
        )
        run = (
            live.run
            if not options.diarize
            else functools.partial(faces.deepgram_diarized_live, self, options=options, run=live.run)
        )
        async for frame in run(frames):
            yield frame

    def grpc_services(self) -> Sequence[GrpcService]:
        from bidistream.models.speech.faces import riva_service

        return (riva_service(self),)

    # ------------------------------------------------------------------ whole files
    async def transcribe_file(
        self,
        audio: np.ndarray,
        *,
        profile: str | None = None,
        endpoint_ms: int = 1000,
        diarize: bool = False,
        max_speakers: int | None = None,
    ) -> FileTranscript:
        """The neutral transcript of a whole file, which the OpenAI, NIM and Riva faces render."""
        profile = profile or self.default_profile
        scheduler = await self.scheduler(profile)
        assert self.vad is not None, "load() not called"
        segments = segment_ms(audio, self.vad, endpoint_ms, self.live_config.max_utterance_ms)
        transcripts = await asyncio.gather(
            *(scheduler.decode(audio[s.start : s.end], final=True) for s in segments)
        )
        result = faces.file_transcript(
            audio, segments, transcripts, label=str(self.model_info(profile).version)
        )
        if diarize:
            result = await asyncio.to_thread(faces.diarize_transcript, audio, result, self.vad, max_speakers)
        return result

    # ------------------------------------------------------------------ pre-recorded
    async def invoke(self, request: Request) -> Response:
        """Route by path: OpenAI's and NIM's faces, else Deepgram's pre-recorded API."""
        path = request.path.strip("/")
        if path in faces.OPENAI_PATHS:
            return await faces.openai_invoke(self, request)
        if path in faces.NIM_PATHS or (path == "invocations" and self.invocations == "nim"):
            return await faces.nim_invoke(self, request)
        return await self._deepgram_invoke(request)

    async def _deepgram_invoke(self, request: Request) -> Response:
        pairs = request_query(request)
        dg.check_auth(request.headers, self.api_keys)
        options = self.options_for(request.raw_query, pairs)
        ctype = (request.content_type or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            raise InputValidationError("this server has no network access: send the audio bytes, not a URL")
        if not request.body:
            raise InputValidationError(
                "empty body: send a WAV file (or raw audio with encoding and sample_rate)"
            )
        audio = decode_whole(request.body, options)
        scheduler = await self.scheduler(options.profile)
        assert self.vad is not None, "load() not called"
        segments = segment(audio, self.vad, options, self.live_config.max_utterance_ms)
        transcripts = await asyncio.gather(
            *(scheduler.decode(audio[s.start : s.end], final=True) for s in segments)
        )
        preroll = EndpointConfig().preroll_ms / 1000
        body = dg.prerecorded_response(
            [
                (s.start / SAMPLE_RATE, clamp_start(t, preroll if s.start > 0 else 0.0))
                for s, t in zip(segments, transcripts, strict=True)
            ],
            request_id=str(uuid.uuid4()),
            sha256=hashlib.sha256(request.body).hexdigest(),
            duration=len(audio) / SAMPLE_RATE,
            info=self.model_info(options.profile),
            formatted=options.formatted,
            numerals=options.numerals or options.smart_format,
        )
        if options.diarize:
            await asyncio.to_thread(faces.deepgram_speakers, body, audio, self.vad)
        return Response(dg.dumps(body).encode(), "application/json")


def _is_hex_uuid(value: str) -> bool:
    try:
        uuid.UUID(hex=value)
    except ValueError:
        return False
    return True


def request_query(request: Request) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(request.raw_query, keep_blank_values=True)


def decode_whole(body: bytes, options: dg.ListenOptions) -> np.ndarray:
    decoder = AudioDecoder(options.encoding, options.sample_rate, options.channels)
    try:
        audio = decoder.feed(body)
    except AudioFormatError as exc:  # one error shape per API face: Deepgram's, with status 400
        raise dg.DeepgramAudioError(exc.message) from exc
    if decoder.format is None:
        raise dg.DeepgramAudioError("body is not a WAV file; for raw audio set encoding and sample_rate")
    return audio


def segment(
    audio: np.ndarray, vad: SileroVad, options: dg.ListenOptions, max_utterance_ms: int
) -> list[UtteranceDone]:
    """Utterances of a whole file, by the same VAD and endpointer as live sessions."""
    endpoint_ms = options.endpointing_ms if options.endpointing_ms is not None else 1000
    return segment_ms(audio, vad, endpoint_ms, max_utterance_ms)


def segment_ms(
    audio: np.ndarray, vad: SileroVad, endpoint_ms: int, max_utterance_ms: int
) -> list[UtteranceDone]:
    endpointer = Endpointer(
        EndpointConfig(endpoint_ms=max(endpoint_ms, 500), max_utterance_ms=max_utterance_ms)
    )
    events = endpointer.feed(vad.stream().feed(audio).tolist())
    events += endpointer.flush()
    return [e for e in events if isinstance(e, UtteranceDone) and e.end > e.start]
