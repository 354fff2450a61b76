"""One live ``/v1/listen`` session: audio and control messages in, Deepgram messages out.

Everything cheap runs inline as frames arrive (decode to 16 kHz, VAD at
3.4 ms CPU per audio second, endpointing); decodes go to the shared
scheduler.  Output keeps the order events happened in: each event is queued
as a ready message or as the task that will produce it, and the writer
awaits them in order, so an utterance's interims always precede its final.

Latency: the final decode starts when the VAD first hears silence (the
endpointer's ``SpeechPaused``), so when the endpoint window has passed the
final is ready or nearly; if speech resumes, a decode that has not started is
withdrawn and one already running is sent as an interim (its CPU is spent and
its text is news).  The first interim is asked for ``first_interim`` after the
onset, and again soon after if it came back empty.

Backpressure: the output queue holds at most ``max_queued_messages``; when a
client does not read, the reader stops taking frames, so the socket read
pauses.  A session whose audio waiting to be decoded exceeds
``max_backlog_seconds`` (a client sending far faster than real time) is
refused with Deepgram's ``Error`` message and close 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bidistream.errors import IdleTimeoutError, ServiceUnavailableError
from bidistream.frames import Frame
from bidistream.models.speech import protocol as dg
from bidistream.models.speech.audio import AudioDecoder
from bidistream.models.speech.endpointing import (
    EndpointConfig,
    Endpointer,
    Event,
    SpeechBegan,
    SpeechPaused,
    SpeechResumed,
    State,
    UtteranceDone,
)
from bidistream.models.speech.engines import SAMPLE_RATE, Transcript, clamp_start, drop_words_before
from bidistream.models.speech.scheduler import DecodeScheduler
from bidistream.models.speech.vad import VadStream

if TYPE_CHECKING:
    from bidistream.metrics import SpeechMeter

__all__ = ["BacklogExceededError", "LiveConfig", "LiveTranscriber"]

# The API face a live session came in by, for the speech metrics' ``face`` label (Deepgram's by
# default; the Riva face marks its sessions with this header).
FACE_HEADER = "x-bidistream-face"

# Arrival times kept for timing results: at 20 ms chunks, 2000 cover 40 s of audio, longer than
# any utterance (the length cap is 15 s) plus its endpointing wait.
ARRIVALS_KEPT = 2000

# How often the idle clock looks again while decodes or messages are outstanding.
IDLE_POLL_SECONDS = 0.25

# A ready message, or a decode that will give one, none, or several (a final and its
# UtteranceEnd); None ends the stream.
_Item = dict[str, Any] | Awaitable[dict[str, Any] | list[dict[str, Any]] | None] | None


class BacklogExceededError(ServiceUnavailableError):
    """A session sent audio far faster than it can be transcribed: refused, not queued forever."""

    code = "SpeechBacklogExceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveConfig:
    # Re-decode the open utterance this often (audio seconds) for interims.
    interim_interval: float = 1.0
    # The first interim comes sooner: latency to first words is what callers notice.  At
    # 0.25 s the first partial arrives 0.46 s after onset (p50, quiet 2-core run, 100 ms
    # chunks); at 0.3 s it was 0.52 s.  Earlier still hears too little to name a word.
    first_interim: float = 0.25
    # An interim that heard no words yet is asked again this soon, not a full interval on.
    interim_retry: float = 0.3
    # No audio and no KeepAlive for this long closes with 1011 NET-0001, as Deepgram does;
    # audio still waiting to be transcribed counts as activity.
    idle_timeout: float = 10.0
    max_utterance_ms: int = 15000
    # Messages (or decodes that will produce one) waiting while the client is slow to
    # take them; then the session stops reading audio, so the socket read pauses.
    max_queued_messages: int = 64
    # Audio of this session waiting in the decode queue; beyond it the session is refused.
    max_backlog_seconds: float = 60.0


class _Outbox:
    """Output in event order; its producer waits only while the *client* is the bottleneck.

    The writer sets ``delivering`` while a message is out with the client (the
    container is sending it).  With ``limit`` items waiting and a delivery
    outstanding, ``put`` waits: the session stops reading and the socket read
    pauses.  While the writer waits for a decode instead, reading goes on (the
    client must keep being read, or its pings go unanswered and a real-time client
    is dropped for the server's slowness); the per-session backlog limit bounds that.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._delivering = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    @property
    def delivering(self) -> bool:
        return self._delivering

    @delivering.setter
    def delivering(self, value: bool) -> None:
        self._delivering = value
        self._update()

    async def put(self, item: _Item) -> None:
        await self._room.wait()
        self._items.append(item)
        self._ready.set()
        self._update()

    async def get(self) -> _Item:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self._update()
        return item

    def _update(self) -> None:
        if len(self._items) < self.limit or not self._delivering:
            self._room.set()
        else:
            self._room.clear()


@dataclass(slots=True)
class _Speculation:
    """The final decode started at the pause, reused if the pause becomes the endpoint."""

    future: asyncio.Future[Transcript]
    start: int
    end: int


class LiveTranscriber:
    def __init__(
        self,
        options: dg.ListenOptions,
        scheduler: DecodeScheduler,
        vad: VadStream,
        info: dg.ModelInfo,
        request_id: str,
        config: LiveConfig | None = None,
        meter: SpeechMeter | None = None,
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
        self._ready: list[_Item] = []  # produced by the handlers, queued by the reader
        self._spec: _Speculation | None = None
        self._backlog = 0  # samples of this session's finals not decoded yet
        self._outstanding: set[asyncio.Future[Transcript]] = set()
        self._abort: asyncio.Future[BaseException] | None = None
        self._sha = hashlib.sha256()
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of _buffer[0]
        self._received = 0  # samples received (16 kHz)
        # Idle clock (issue 12): monotonic times of the last frame, the first audio, the last work.
        self._last_frame_at = time.monotonic()
        self._first_audio_at: float | None = None
        self._last_busy_at = 0.0
        self._out = _Outbox(self.config.max_queued_messages)
        self._interim_busy = False
        self._interim_job: asyncio.Future[Transcript] | None = None
        self._next_interim = 0
        self._last_word_end: float | None = None
        self._utterance_end_due = False
        self._closing = False
        self._onset = 0  # sample where the open utterance's speech began
        # Metrics (issue 14): when each received sample arrived, so a result can be timed from the
        # wall-clock moment its speech ended (or began), not from the end of the stream.
        self.meter = meter
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._interim_timed_for = -1  # onset whose first interim has been timed

    # ------------------------------------------------------------------ driving
    async def run(self, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        self._abort = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(self._read(frames))
        try:
            while True:
                item = await self._out.get()
                if item is None:
                    break
                if isinstance(item, dict):
                    message: dict[str, Any] | list[dict[str, Any]] | None = item
                else:
                    future = asyncio.ensure_future(item)
                    await asyncio.wait((future, self._abort), return_when=asyncio.FIRST_COMPLETED)
                    if not future.done():
                        future.cancel()
                        break  # refused: do not wait for the backlog to be decoded
                    message = future.result()
                for one in [] if message is None else message if isinstance(message, list) else [message]:
                    self._out.delivering = True
                    try:
                        yield Frame.text(dg.dumps(one))
                    finally:
                        self._out.delivering = False
            if self._abort.done():
                error = self._abort.result()
                yield Frame.text(dg.dumps(dg.error_message(str(error), variant="BacklogExceeded")))
                raise error
            await reader  # re-raises the reader's error (idle, bad audio)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            for job in list(self._outstanding):
                self.scheduler.withdraw(job)
            if self.meter is not None:
                self.meter.close()

    async def _read(self, frames: AsyncIterator[Frame]) -> None:
        try:
            await self._pull(frames)
        except asyncio.CancelledError:
            # The writer is gone (client vanished): no end marker, and never wait on a
            # full queue nobody drains.
            raise
        except BaseException:
            await self._out.put(None)
            raise
        await self._out.put(None)

    async def _pull(self, frames: AsyncIterator[Frame]) -> None:
        iterator = frames.__aiter__()
        while not self._closing:
            try:
                frame = await self._next_frame(iterator)
            except StopAsyncIteration:
                break
            try:
                self.on_frame(frame)
            except BacklogExceededError as exc:
                assert self._abort is not None
                self._abort.set_result(exc)
                return
            finally:
                ready, self._ready = self._ready, []
                for item in ready:  # waits while the client is not reading: backpressure
                    await self._out.put(item)

    async def _next_frame(self, iterator: AsyncIterator[Frame]) -> Frame:
        """The next frame; idle means no frame *and* nothing of ours still being transcribed.

        The pending ``anext`` is waited on, never cancelled, while work is outstanding:
        cancelling it would finish the client's frame iterator.

        Idle clock (issue 12): audio sent ahead of real time (a whole file at once, as
        the launch post's example does before waiting 15 s) is buffered work, not
        silence.  A live model hears it at speaking pace, so the clock starts at the
        latest of: the last frame, the moment the audio received has played out, and
        the moment the last decode or queued message was done.
        """
        task: asyncio.Future[Frame] = asyncio.ensure_future(anext(iterator))
        try:
            while True:
                now = time.monotonic()
                busy = bool(self._outstanding or len(self._out))
                if busy:
                    self._last_busy_at = now
                remaining = self._idle_deadline() - now
                if remaining <= 0:
                    raise IdleTimeoutError(
                        f"NET-0001 no audio or KeepAlive received for {self.config.idle_timeout:g} s"
                    )
                # While busy, look again soon: the clock starts when the work is done.
                timeout = min(remaining, IDLE_POLL_SECONDS) if busy else remaining
                done, _ = await asyncio.wait((task,), timeout=timeout)
                if done:
                    self._last_frame_at = time.monotonic()
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    def _idle_deadline(self) -> float:
        played_out = 0.0
        if self._first_audio_at is not None:
            played_out = self._first_audio_at + self._received / SAMPLE_RATE
        return max(self._last_frame_at, played_out, self._last_busy_at) + self.config.idle_timeout

    def _emit(self, item: _Item) -> None:
        self._ready.append(item)

    def _submit(self, audio: np.ndarray, *, final: bool) -> asyncio.Future[Transcript]:
        if final:
            waiting = (self._backlog + len(audio)) / SAMPLE_RATE
            if waiting > self.config.max_backlog_seconds:
                raise BacklogExceededError(
                    f"audio arrives faster than it can be transcribed: {waiting:.1f} s waiting "
                    f"(limit {self.config.max_backlog_seconds:g} s); stream at real time"
                )
        job = self.scheduler.submit(audio, final=final)
        size = len(audio) if final else 0
        self._backlog += size
        self._outstanding.add(job)

        def done(_: asyncio.Future[Transcript]) -> None:
            self._backlog -= size
            self._outstanding.discard(job)

        job.add_done_callback(done)
        return job

    # ------------------------------------------------------------------ inputs
    def on_frame(self, frame: Frame) -> None:
        if frame.is_text:
            try:
                control = dg.parse_control(frame.as_text())
            except (ValueError, UnicodeDecodeError) as exc:
                self._emit(dg.error_message(str(exc), frame.data.decode("utf-8", "replace")[:512]))
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
            self._emit(self._metadata())
            self._closing = True

    def on_audio(self, data: bytes) -> None:
        self._sha.update(data)
        samples = self.decoder.feed(data)
        if not len(samples):
            return
        self._buffer = np.concatenate([self._buffer, samples])
        if self._first_audio_at is None:
            self._first_audio_at = time.monotonic()  # idle clock (issue 12)
        self._received += len(samples)
        if self.meter is not None:
            self._arrivals.append((self._received, time.monotonic()))
            self.meter.received(len(samples) / SAMPLE_RATE)
            self.meter.backlog(self._backlog / SAMPLE_RATE)
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

    def _handle(self, events: list[Event], closing: bool = False) -> None:
        for event in events:
            if isinstance(event, SpeechBegan):
                self._onset = event.at
                self._next_interim = event.at + int(self.config.first_interim * SAMPLE_RATE)
                self._utterance_end_due = False
                if self.options.vad_events:
                    self._emit(dg.speech_started_message(event.at / SAMPLE_RATE))
            elif isinstance(event, SpeechPaused):
                self._speculate(event)
            elif isinstance(event, SpeechResumed):
                self._drop_speculation(as_interim=True)
            else:
                self._final(event, closing)

    def _speculate(self, event: SpeechPaused) -> None:
        """Start the final decode now: if the pause holds, the final is ready at the endpoint."""
        self._drop_speculation(as_interim=False)
        if event.at <= event.start:
            return
        if self._interim_job is not None:
            # The speculative final re-reads the same audio: a queued interim is superseded.
            self.scheduler.withdraw(self._interim_job)
            self._interim_job = None
        audio = self._audio(event.start, event.at)
        self._spec = _Speculation(self._submit(audio, final=True), event.start, event.at)

    def _drop_speculation(self, *, as_interim: bool) -> None:
        spec, self._spec = self._spec, None
        if spec is None or self.scheduler.withdraw(spec.future):
            return
        # Already decoding (or done): it serves as this moment's interim, so the next
        # regular one is a whole interval away.
        self._next_interim = max(
            self._next_interim, self.endpointer.position + int(self.config.interim_interval * SAMPLE_RATE)
        )
        if as_interim and self.options.interim_results:
            # The CPU is spent and the text is news.
            start_s = spec.start / SAMPLE_RATE
            duration = (spec.end - spec.start) / SAMPLE_RATE
            onset = max(0, self._onset - spec.start) / SAMPLE_RATE
            future = spec.future

            async def interim() -> dict[str, Any] | None:
                try:
                    transcript = await future
                except asyncio.CancelledError:
                    if not future.cancelled():
                        raise
                    return None
                if not transcript.text:
                    return None
                self._first_interim_timed()
                return self._results(clamp_start(transcript, onset), start_s, duration, False, False, False)

            self._emit(asyncio.ensure_future(interim()))

    def _final(self, event: UtteranceDone, closing: bool = False) -> None:
        if self._interim_job is not None:
            # The final re-reads the same audio: an interim still queued is superseded.
            self.scheduler.withdraw(self._interim_job)
            self._interim_job = None
        spec, self._spec = self._spec, None
        start_s = event.start / SAMPLE_RATE
        duration = (event.end - event.start) / SAMPLE_RATE
        if event.end <= event.start:
            if spec is not None:
                self.scheduler.withdraw(spec.future)
            if closing:
                return  # CloseStream with nothing buffered: Metadata follows directly
            self._emit(self._results(Transcript.empty(), start_s, 0.0, True, False, True))
            return
        if spec is not None and spec.start == event.start and not event.cut:
            # The pause became the endpoint: what follows spec.end is silence the VAD heard.
            job = spec.future
        else:
            if spec is not None:
                self.scheduler.withdraw(spec.future)
            job = self._submit(self._audio(event.start, event.end), final=True)
        onset = max(0, self._onset - event.start) / SAMPLE_RATE
        words_from = max(0, event.words_from - event.start) / SAMPLE_RATE
        cut = event.cut

        async def decode() -> list[dict[str, Any]]:
            transcript = await job
            transcript = clamp_start(drop_words_before(transcript, words_from), onset)
            if cut:
                transcript = transcript.without_final_stop()
            out = [
                self._results(transcript, start_s, duration, True, event.speech_final, event.from_finalize)
            ]
            if self.meter is not None:
                self.meter.decoded(duration)
                self.meter.backlog(self._backlog / SAMPLE_RATE)
                if transcript.words and not cut:
                    self._time_since(event.speech_end, self.meter.end_of_speech_to_final)
            if transcript.words:
                self._last_word_end = start_s + transcript.words[-1].end
                resumed = self._onset >= event.end  # the next utterance has begun meanwhile
                if self._utterance_end_now(self._onset if resumed else self.endpointer.position):
                    out.append(dg.utterance_end_message(self._last_word_end, self.options.channels))
                elif not resumed:
                    self._utterance_end_due = True
            return out

        self._emit(asyncio.ensure_future(decode()))

    def _maybe_interim(self) -> None:
        if not self.options.interim_results or self._interim_busy:
            return
        if self.endpointer.state is not State.SPEECH:
            return  # in a pause the speculative final is running; it serves as the interim
        position = self.endpointer.position
        if position < self._next_interim:
            return
        start = self.endpointer.utterance_start
        audio = self._audio(start, position)
        self._interim_busy = True
        self._next_interim = position + int(self.config.interim_interval * SAMPLE_RATE)

        job = self._interim_job = self._submit(audio, final=False)

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
            if not transcript.text:
                # Nothing heard yet: ask again soon rather than a whole interval later.
                retry = self.endpointer.position + int(self.config.interim_retry * SAMPLE_RATE)
                self._next_interim = min(self._next_interim, retry)
                return None
            self._first_interim_timed()
            return self._results(
                transcript, start / SAMPLE_RATE, len(audio) / SAMPLE_RATE, False, False, False
            )

        self._emit(asyncio.ensure_future(decode()))

    def _first_interim_timed(self) -> None:
        """The first interim of the open utterance is on its way: time it from the onset, once."""
        if self.meter is not None and self._interim_timed_for != self._onset:
            self._interim_timed_for = self._onset
            self._time_since(self._onset, self.meter.onset_to_first_interim)

    def _time_since(self, sample: int, observe: Callable[[float], None]) -> None:
        """Observe the wall time since ``sample`` arrived (found among the recent arrivals)."""
        for end, at in self._arrivals:
            if end >= sample:
                observe(max(0.0, time.monotonic() - at))
                return

    def _maybe_utterance_end(self) -> None:
        if (
            self.options.utterance_end_ms is None
            or not self._utterance_end_due
            or self._last_word_end is None
            or self.endpointer.in_speech
        ):
            return
        if self._utterance_end_now(self.endpointer.position):
            self._utterance_end_due = False
            self._emit(dg.utterance_end_message(self._last_word_end, self.options.channels))

    def _utterance_end_now(self, horizon: int) -> bool:
        """The word gap up to ``horizon`` (samples) reached ``utterance_end_ms``.

        Also asked when a final's decode completes: audio sent faster than real time
        may all have arrived by then, and no later audio would ask again.
        """
        if self.options.utterance_end_ms is None or self._last_word_end is None:
            return False
        gap_ms = (horizon / SAMPLE_RATE - self._last_word_end) * 1000
        return gap_ms >= self.options.utterance_end_ms

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
            numerals=self.options.numerals or self.options.smart_format,
        )

    def _metadata(self) -> dict[str, Any]:
        return dg.metadata_message(
            request_id=self.request_id,
            sha256=self._sha.hexdigest(),
            duration=self._received / SAMPLE_RATE,
            channels=self.options.channels,
            info=self.info,
        )
