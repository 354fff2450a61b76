"""Where utterances start and end: a sans-I/O state machine over VAD frames.

Fed one speech probability per 32 ms frame (and the client's Finalize /
CloseStream), it says when speech started and when an utterance must be
finalised.  Times are sample counts from the start of the stream, so the
same input always gives the same events, with no clock involved.

States and inputs (anything missing from ``TRANSITIONS`` is a bug and raises)::

    SILENCE --voice--> ONSET --confirm--> SPEECH --quiet--> HANGOVER --endpoint--> SILENCE
       ^                 |quiet              ^  \\--cap-->SPEECH   |voice          (final,
       |_________________|                   |____________________|                speech_final)
    flush (Finalize / close): ONSET, SPEECH, HANGOVER --> SILENCE (final, from_finalize)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bidistream.models.speech.vad import FRAME_SAMPLES

__all__ = ["EndpointConfig", "Endpointer", "SpeechBegan", "State", "UtteranceDone"]


class State(enum.Enum):
    SILENCE = "silence"
    ONSET = "onset"
    SPEECH = "speech"
    HANGOVER = "hangover"


class Input(enum.Enum):
    VOICE = "voice"
    QUIET = "quiet"
    CONFIRM = "confirm"  # voice, and the onset has lasted long enough
    ENDPOINT = "endpoint"  # quiet, and the silence has lasted long enough
    CAP = "cap"  # the utterance reached its length limit
    FLUSH = "flush"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    """Named limits; defaults from specs/speech-models.md 3.4."""

    threshold: float = 0.5
    # Below this (while in speech) a frame counts as silence; the gap is hysteresis.
    neg_threshold: float = 0.35
    # Speech must last this long before it counts (filters clicks).
    min_speech_ms: int = 64
    # Silence that ends an utterance (Deepgram's ``endpointing``).  None: never by silence.
    endpoint_ms: int | None = 300
    # With endpointing disabled, utterances still end after this much silence, but
    # without speech_final (Deepgram keeps finalising long streams too).
    fallback_end_ms: int = 1000
    # Longest utterance before a forced final: Whisper's window is 30 s, and long
    # utterances delay finals and make interims expensive.
    max_utterance_ms: int = 15000
    # Audio kept before the detected onset, so the first phoneme is not cut.
    preroll_ms: int = 250
    sample_rate: int = 16000


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechBegan:
    at: int  # sample where speech started


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceDone:
    start: int  # first sample of the utterance audio (preroll included)
    end: int  # sample after the last one to decode
    speech_final: bool
    from_finalize: bool
    speech_end: int  # sample where speech stopped (for UtteranceEnd bookkeeping)


Event = SpeechBegan | UtteranceDone


class Endpointer:
    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        c = self.config
        ms = c.sample_rate // 1000
        self._min_speech = max(1, c.min_speech_ms * ms // FRAME_SAMPLES)
        end_ms = c.endpoint_ms if c.endpoint_ms is not None else c.fallback_end_ms
        self._end_frames = max(1, -(-end_ms * ms // FRAME_SAMPLES))
        self._max_samples = c.max_utterance_ms * ms
        self._preroll = c.preroll_ms * ms
        self.state = State.SILENCE
        self.position = 0  # samples consumed so far
        self.utterance_start = 0
        self._onset_frames = 0
        self._onset_at = 0
        self._quiet_frames = 0
        self._speech_end = 0
        self._events: list[Event] = []

    # (state, input) -> (action, next state).  Actions are methods that may emit events.
    TRANSITIONS: dict[tuple[State, Input], tuple[str | None, State]] = {
        (State.SILENCE, Input.VOICE): ("_begin_onset", State.ONSET),
        (State.SILENCE, Input.QUIET): (None, State.SILENCE),
        (State.SILENCE, Input.FLUSH): ("_flush_empty", State.SILENCE),
        (State.ONSET, Input.VOICE): ("_count_onset", State.ONSET),
        (State.ONSET, Input.CONFIRM): ("_start_speech", State.SPEECH),
        (State.ONSET, Input.QUIET): (None, State.SILENCE),
        (State.ONSET, Input.FLUSH): ("_finalize", State.SILENCE),
        (State.SPEECH, Input.VOICE): (None, State.SPEECH),
        (State.SPEECH, Input.QUIET): ("_begin_hangover", State.HANGOVER),
        (State.SPEECH, Input.CAP): ("_cap", State.SPEECH),
        (State.SPEECH, Input.FLUSH): ("_finalize", State.SILENCE),
        (State.HANGOVER, Input.VOICE): (None, State.SPEECH),
        (State.HANGOVER, Input.QUIET): ("_count_quiet", State.HANGOVER),
        (State.HANGOVER, Input.ENDPOINT): ("_endpoint", State.SILENCE),
        (State.HANGOVER, Input.CAP): ("_cap", State.SPEECH),
        (State.HANGOVER, Input.FLUSH): ("_finalize", State.SILENCE),
    }

    # ------------------------------------------------------------------ inputs
    def feed(self, probabilities: Iterable[float]) -> list[Event]:
        """One probability per FRAME_SAMPLES of audio, in order."""
        for prob in probabilities:
            self._step(self._classify(float(prob)))
            self.position += FRAME_SAMPLES
            if self.state in (State.SPEECH, State.HANGOVER) and (
                self.position - self.utterance_start >= self._max_samples
            ):
                self._step(Input.CAP)
        return self._drain()

    def flush(self) -> list[Event]:
        """Finalize / CloseStream: whatever is open becomes final now."""
        self._step(Input.FLUSH)
        return self._drain()

    @property
    def in_speech(self) -> bool:
        return self.state in (State.SPEECH, State.HANGOVER)

    @property
    def ending(self) -> bool:
        """Speech has paused for at least half the endpoint window: a final is likely due.

        An interim started now would finish about when the final is queued, spending a
        decode on audio the final re-reads and, under load, delaying that final.
        """
        return self.state is State.HANGOVER and 2 * self._quiet_frames >= self._end_frames

    def keep_from(self) -> int:
        """Earliest sample the caller still needs to keep buffered."""
        if self.state is State.SILENCE:
            return max(0, self.position - self._preroll)
        return self.utterance_start

    # ----------------------------------------------------------------- machine
    def _classify(self, prob: float) -> Input:
        c = self.config
        if self.state in (State.SPEECH, State.HANGOVER):
            voice = prob >= c.neg_threshold
        else:
            voice = prob >= c.threshold
        if self.state is State.ONSET and voice and self._onset_frames + 1 >= self._min_speech:
            return Input.CONFIRM
        if self.state is State.HANGOVER and not voice and self._quiet_frames + 1 >= self._end_frames:
            return Input.ENDPOINT
        return Input.VOICE if voice else Input.QUIET

    def _step(self, symbol: Input) -> None:
        try:
            action, nxt = self.TRANSITIONS[(self.state, symbol)]
        except KeyError:
            raise RuntimeError(
                f"endpointer: no transition for {symbol.value} in {self.state.value}"
            ) from None
        if action is not None:
            fn: Callable[[], None] = getattr(self, action)
            fn()
        self.state = nxt

    def _drain(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    # ----------------------------------------------------------------- actions
    def _begin_onset(self) -> None:
        self._onset_frames = 1
        self._onset_at = self.position
        if self._min_speech <= 1:
            # one frame is enough: confirm on this same frame
            self._onset_frames = 0

    def _count_onset(self) -> None:
        self._onset_frames += 1

    def _start_speech(self) -> None:
        self.utterance_start = max(0, self._onset_at - self._preroll)
        self._quiet_frames = 0
        self._events.append(SpeechBegan(at=self._onset_at))

    def _begin_hangover(self) -> None:
        self._quiet_frames = 1
        self._speech_end = self.position

    def _count_quiet(self) -> None:
        self._quiet_frames += 1

    def _emit(self, *, speech_final: bool, from_finalize: bool, speech_end: int) -> None:
        end = self.position
        self._events.append(
            UtteranceDone(
                start=self.utterance_start,
                end=end,
                speech_final=speech_final,
                from_finalize=from_finalize,
                speech_end=speech_end,
            )
        )
        self.utterance_start = end

    def _endpoint(self) -> None:
        self._emit(
            speech_final=self.config.endpoint_ms is not None,
            from_finalize=False,
            speech_end=self._speech_end,
        )

    def _cap(self) -> None:
        self._emit(speech_final=False, from_finalize=False, speech_end=self.position)
        self._quiet_frames = 0

    def _finalize(self) -> None:
        speech_end = self._speech_end if self.state is State.HANGOVER else self.position
        self._emit(speech_final=False, from_finalize=True, speech_end=speech_end)

    def _flush_empty(self) -> None:
        self._events.append(
            UtteranceDone(
                start=self.position,
                end=self.position,
                speech_final=False,
                from_finalize=True,
                speech_end=self.position,
            )
        )
