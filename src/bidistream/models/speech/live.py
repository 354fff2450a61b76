"""One live ``/v1/listen`` session: audio and control messages in, Deepgram messages out.

Everything cheap runs inline as frames arrive (decode to 16 kHz, VAD at
3.4 ms CPU per audio second, endpointing); decodes go to the shared
scheduler.  Output keeps the order events happened in: each event is queued
as a ready message or as the task that will produce it, and the writer
awaits them in order, so an utterance's interims always precede its final.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bidistream.errors import IdleTimeoutError
from bidistream.frames import Frame
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.audio import AudioDecoder
from bidistream.models.speech.endpointing import EndpointConfig, Endpointer, SpeechBegan, UtteranceDone
from bidistream.models.speech.engines import SAMPLE_RATE, Transcript, clamp_start
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.vad import VadStream

__all__ = ["LiveConfig", "LiveTranscriber"]

_Item = dict[str, Any] | Awaitable[dict[str, Any] | None] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveConfig:
    # Re-decode the open utterance this often (audio seconds) for interims.
    interim_interval: float = 1.0
    # The first interim comes sooner: latency to first words is what callers notice.
    first_interim: float = 0.6
    # No audio and no KeepAlive for this long closes with 1011 NET-0001, as Deepgram does.
    idle_timeout: float = 10.0
    max_utterance_ms: int = 15000


class LiveTranscriber:
    def __init__(
        self,
        options: dg.ListenOptions,
        scheduler: DecodeScheduler,
        vad: VadStream,
        info: dg.ModelInfo,
        request_id: str,
        config: LiveConfig | None = None,
    ) -> None:
        self.options = options
        self.scheduler = scheduler
        self.vad = vad
        self.info = info
        self.request_id = request_id
        self.config = config or LiveConfig()
        self.decoder = AudioDecoder(options.encoding, options.sample_rate, options.channels)
        self.endpointer = Endpointer(
            EndpointConfig(endpoint_ms=options.endpointing_ms, max_utterance_ms=self.config.max_utterance_ms)
        )
        self._sha = hashlib.sha256()
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._received = 0  # samples received (16 kHz)
        self._out: asyncio.Queue[_Item] = asyncio.Queue()
        self._interim_busy = False
        self._interim_job: asyncio.Future[Transcript] | None = None
        self._next_interim = 0
        self._last_word_end: float | None = None
        self._utterance_end_due = False
        self._closing = False
        self._onset = 0  # sample where the open utterance's speech began
        # Idle clock (issue 12): monotonic times of the last frame in, the first audio, the last output.
        self._last_frame_at = time.monotonic()
        self._first_audio_at: float | None = None
        self._last_output_at = self._last_frame_at

    # ------------------------------------------------------------------ driving
    async def run(self, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        reader = asyncio.create_task(self._read(frames))
        try:
            while True:
                item = await self._out.get()
                if item is None:
                    break
                message = item if isinstance(item, dict) else await item
                if message is not None:
                    self._last_output_at = time.monotonic()  # idle clock (issue 12)
                    yield Frame.text(dg.dumps(message))
            await reader  # re-raises the reader's error (idle, bad audio)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, frames: AsyncIterator[Frame]) -> None:
        iterator = frames.__aiter__()
        try:
            while not self._closing:
                try:
                    frame = await self._next_frame(iterator)
                except StopAsyncIteration:
                    break
                self._last_frame_at = time.monotonic()
                self.on_frame(frame)
        finally:
            await self._out.put(None)

    # ------------------------------------------------------------------ idle clock (issue 12)
    # Kept apart from the transcription logic on purpose: the only change to this file
    # for issue 12.  Audio sent ahead of real time (a whole file at once, as the launch
    # post's example does before waiting 15 s) is buffered work, not silence: a live
    # model hears it at speaking pace, so the idle clock starts once that audio has
    # "played out" and the last result has been sent, not at the last frame.
    def _idle_deadline(self) -> float:
        played_out = self._last_frame_at
        if self._first_audio_at is not None:
            played_out = self._first_audio_at + self._received / SAMPLE_RATE
        return max(self._last_frame_at, played_out, self._last_output_at) + self.config.idle_timeout

    async def _next_frame(self, iterator: AsyncIterator[Frame]) -> Frame:
        pending = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                remaining = self._idle_deadline() - time.monotonic()
                if remaining <= 0:
                    raise IdleTimeoutError(
                        f"NET-0001 no audio or KeepAlive received for {self.config.idle_timeout:g} s"
                    )
                done, _ = await asyncio.wait({pending}, timeout=remaining)
                if done:
                    return pending.result()
        finally:
            if not pending.done():
                pending.cancel()

    # ------------------------------------------------------------------ inputs
    def on_frame(self, frame: Frame) -> None:
        if frame.is_text:
            try:
                control = dg.parse_control(frame.as_text())
            except (ValueError, UnicodeDecodeError) as exc:
                self._out.put_nowait(dg.error_message(str(exc), frame.data.decode("utf-8", "replace")[:512]))
                return
            self.on_control(control.type)
            return
        if not frame.data:
            # legacy close signal (an empty binary message)
            self.on_control("CloseStream")
            return
        sniffed = dg.sniff_control(frame.data)
        if sniffed is not None:
            self.on_control(sniffed.type)
            return
        self.on_audio(frame.data)

    def on_control(self, kind: str) -> None:
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            self._handle(self.endpointer.flush())
            return
        if kind == "CloseStream":
            self._handle(self.endpointer.flush(), closing=True)
            self._out.put_nowait(self._metadata())
            self._closing = True

    def on_audio(self, data: bytes) -> None:
        self._sha.update(data)
        samples = self.decoder.feed(data)
        if not len(samples):
            return
        if self._first_audio_at is None:
            self._first_audio_at = time.monotonic()  # idle clock (issue 12)
        self._buffer = np.concatenate([self._buffer, samples])
        self._received += len(samples)
        self._handle(self.endpointer.feed(self.vad.feed(samples).tolist()))
        self._maybe_interim()
        self._maybe_utterance_end()
        keep = self.endpointer.keep_from()
        if keep > self._buffer_start:
            self._buffer = self._buffer[keep - self._buffer_start :]
            self._buffer_start = keep

    # ------------------------------------------------------------------ events
    def _audio(self, start: int, end: int) -> np.ndarray:
        return self._buffer[max(0, start - self._buffer_start) : max(0, end - self._buffer_start)].copy()

    def _handle(self, events: list[SpeechBegan | UtteranceDone], closing: bool = False) -> None:
        for event in events:
            if isinstance(event, SpeechBegan):
                self._onset = event.at
                self._next_interim = event.at + int(self.config.first_interim * SAMPLE_RATE)
                self._utterance_end_due = False
                if self.options.vad_events:
                    self._out.put_nowait(dg.speech_started_message(event.at / SAMPLE_RATE))
            else:
                self._final(event, closing)

    def _final(self, event: UtteranceDone, closing: bool = False) -> None:
        if self._interim_job is not None:
            # The final re-reads the same audio: an interim still queued is superseded.
            self.scheduler.withdraw(self._interim_job)
            self._interim_job = None
        start_s = event.start / SAMPLE_RATE
        duration = (event.end - event.start) / SAMPLE_RATE
        if event.end <= event.start:
            if closing:
                return  # CloseStream with nothing buffered: Metadata follows directly
            self._out.put_nowait(self._results(Transcript.empty(), start_s, 0.0, True, False, True))
            return
        audio = self._audio(event.start, event.end)
        onset = max(0, self._onset - event.start) / SAMPLE_RATE

        async def decode() -> dict[str, Any]:
            transcript = clamp_start(await self.scheduler.decode(audio, final=True), onset)
            if transcript.words:
                self._last_word_end = start_s + transcript.words[-1].end
                self._utterance_end_due = True
            return self._results(transcript, start_s, duration, True, event.speech_final, event.from_finalize)

        self._out.put_nowait(asyncio.ensure_future(decode()))

    def _maybe_interim(self) -> None:
        if not self.options.interim_results or self._interim_busy or not self.endpointer.in_speech:
            return
        if self.endpointer.ending:
            return
        position = self.endpointer.position
        if position < self._next_interim:
            return
        start = self.endpointer.utterance_start
        audio = self._audio(start, position)
        self._interim_busy = True
        self._next_interim = position + int(self.config.interim_interval * SAMPLE_RATE)

        job = self._interim_job = self.scheduler.submit(audio, final=False)

        async def decode() -> dict[str, Any] | None:
            try:
                transcript = await job
            except asyncio.CancelledError:
                if not job.cancelled():
                    raise
                return None  # withdrawn: superseded by the utterance's final (see _final)
            finally:
                self._interim_busy = False
                if self._interim_job is job:
                    self._interim_job = None
            return self._results(
                transcript, start / SAMPLE_RATE, len(audio) / SAMPLE_RATE, False, False, False
            )

        self._out.put_nowait(asyncio.ensure_future(decode()))

    def _maybe_utterance_end(self) -> None:
        if (
            self.options.utterance_end_ms is None
            or not self._utterance_end_due
            or self._last_word_end is None
            or self.endpointer.in_speech
        ):
            return
        gap_ms = (self.endpointer.position / SAMPLE_RATE - self._last_word_end) * 1000
        if gap_ms >= self.options.utterance_end_ms:
            self._utterance_end_due = False
            self._out.put_nowait(dg.utterance_end_message(self._last_word_end, self.options.channels))

    # ------------------------------------------------------------------ messages
    def _results(
        self,
        transcript: Transcript,
        start: float,
        duration: float,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        return dg.results_message(
            transcript,
            start=start,
            duration=duration,
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
            request_id=self.request_id,
            info=self.info,
            formatted=self.options.formatted,
            channels=self.options.channels,
        )

    def _metadata(self) -> dict[str, Any]:
        return dg.metadata_message(
            request_id=self.request_id,
            sha256=self._sha.hexdigest(),
            duration=self._received / SAMPLE_RATE,
            channels=self.options.channels,
            info=self.info,
        )
