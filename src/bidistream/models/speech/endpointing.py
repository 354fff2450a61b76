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

``speculate_after_ms`` into HANGOVER the endpointer says ``SpeechPaused``, and
on HANGOVER -> SPEECH after that ``SpeechResumed``: the live session starts
the final decode speculatively at the pause, so that when the endpoint window
has passed the final is ready.

The length cap cuts at the quietest frame of the last ``cap_search_ms`` (the
VAD minimum, nearly always a gap between words) rather than where the count
ran out, and the next utterance starts ``cap_overlap_ms`` before the cut so
the decoder hears the context; words before the cut are the first half's
(``UtteranceDone.words_from``), so none is lost or doubled.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bidistream.models.speech.vad import FRAME_SAMPLES

__all__ = [
    "EndpointConfig",
    "Endpointer",
    "SpeechBegan",
    "SpeechPaused",
    "SpeechResumed",
    "State",
    "UtteranceDone",
]


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
    # Silence that ends an utterance (Deepgram's ``endpointing``, default 10 ms).  None:
    # never by silence.
    endpoint_ms: int | None = 300
    # A shorter ``endpoint_ms`` acts as this: below it the VAD cannot tell a pause from
    # the closure of a stop consonant.  Measured on the 142-utterance set (one sentence
    # per file): 10-64 ms split 57 sentences inside, 100 ms 9, 160 ms 2, 200 ms none.
    min_endpoint_ms: int = 160
    # Say SpeechPaused (start the speculative final) after this much silence.  Most
    # pauses inside speech are short: of 113 that resumed in the 142-utterance set, 54
    # lasted 32 ms, 37 64 ms, 14 96 ms, 8 128 ms.  At 32 ms every one starts a decode;
    # under load a false start that already runs holds a slot the real final then waits
    # for (seen: 1.5 s at load 12), so wait one more frame: 59 false starts, 32 ms later.
    speculate_after_ms: int = 64
    # With endpointing disabled, utterances still end after this much silence, but
    # without speech_final (Deepgram keeps finalising long streams too).
    fallback_end_ms: int = 1000
    # Longest utterance before a forced final: Whisper's window is 30 s, and long
    # utterances delay finals and make interims expensive.
    max_utterance_ms: int = 15000
    # The cap looks this far back for the quietest frame to cut at ...
    cap_search_ms: int = 3000
    # ... and the next utterance re-reads this much audio before the cut (context).
    cap_overlap_ms: int = 300
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
    # Words whose middle lies before this sample belong to the previous utterance (the
    # overlap carried over a length-cap cut); equal to ``start`` otherwise.
    words_from: int = 0
    # The length cap cut here, mid-speech: the text goes on in the next utterance.
    cut: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechPaused:
    at: int  # sample where the VAD first heard silence: the speculative final covers up to here
    start: int  # first sample of the open utterance


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechResumed:
    at: int


Event = SpeechBegan | SpeechPaused | SpeechResumed | UtteranceDone


class Endpointer:
    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        c = self.config
        ms = c.sample_rate // 1000
        self._min_speech = max(1, c.min_speech_ms * ms // FRAME_SAMPLES)
        end_ms = c.endpoint_ms if c.endpoint_ms is not None else c.fallback_end_ms
        end_ms = max(end_ms, c.min_endpoint_ms)
        self._end_frames = max(1, -(-end_ms * ms // FRAME_SAMPLES))
        self._speculate_frames = max(1, -(-c.speculate_after_ms * ms // FRAME_SAMPLES))
        self._paused = False
        self._max_samples = c.max_utterance_ms * ms
        self._preroll = c.preroll_ms * ms
        self._overlap = c.cap_overlap_ms * ms
        # (position, probability) of recent frames: where the cap may cut
        self._recent: deque[tuple[int, float]] = deque(maxlen=max(1, c.cap_search_ms * ms // FRAME_SAMPLES))
        self._words_from = 0
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
        (State.SPEECH, Input.ENDPOINT): ("_endpoint", State.SILENCE),
        (State.SPEECH, Input.CAP): ("_cap", State.SPEECH),
        (State.SPEECH, Input.FLUSH): ("_finalize", State.SILENCE),
        (State.HANGOVER, Input.VOICE): ("_resume", State.SPEECH),
        (State.HANGOVER, Input.QUIET): ("_count_quiet", State.HANGOVER),
        (State.HANGOVER, Input.ENDPOINT): ("_endpoint", State.SILENCE),
        (State.HANGOVER, Input.CAP): ("_cap", State.SPEECH),
        (State.HANGOVER, Input.FLUSH): ("_finalize", State.SILENCE),
    }

    # ------------------------------------------------------------------ inputs
    def feed(self, probabilities: Iterable[float]) -> list[Event]:
        """One probability per FRAME_SAMPLES of audio, in order."""
        for prob in probabilities:
            p = float(prob)
            self._recent.append((self.position, p))
            self._step(self._classify(p))
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
        if self.state is State.SPEECH and not voice and self._end_frames <= 1:
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
        self._words_from = self.utterance_start
        self._quiet_frames = 0
        self._events.append(SpeechBegan(at=self._onset_at))

    def _begin_hangover(self) -> None:
        self._quiet_frames = 1
        self._speech_end = self.position
        self._paused = False
        self._maybe_pause()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._events.append(SpeechResumed(at=self.position))

    def _count_quiet(self) -> None:
        self._quiet_frames += 1
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        if not self._paused and self._quiet_frames >= self._speculate_frames:
            self._paused = True
            # the frame being classified is quiet too: the speculation covers it
            self._events.append(SpeechPaused(at=self.position + FRAME_SAMPLES, start=self.utterance_start))

    def _emit(
        self, *, speech_final: bool, from_finalize: bool, speech_end: int, end: int | None = None
    ) -> None:
        self._paused = False
        end = self.position if end is None else end
        self._events.append(
            UtteranceDone(
                start=self.utterance_start,
                end=end,
                speech_final=speech_final,
                from_finalize=from_finalize,
                speech_end=speech_end,
                words_from=max(self._words_from, self.utterance_start),
                cut=end < self.position,
            )
        )
        self.utterance_start = end

    def _endpoint(self) -> None:
        if self.state is State.SPEECH:  # a one-frame window: the pause is the endpoint
            self._speech_end = self.position
        self._emit(
            speech_final=self.config.endpoint_ms is not None,
            from_finalize=False,
            speech_end=self._speech_end,
        )

    def _cap(self) -> None:
        # Cut at the middle of the quietest recent frame, not where the count ran out.
        lo = self.utterance_start + FRAME_SAMPLES
        candidates = [(p, pos) for pos, p in self._recent if pos >= lo]
        if candidates:
            _, pos = min(candidates, key=lambda c: (c[0], -c[1]))
            cut = pos + FRAME_SAMPLES // 2
        else:
            cut = self.position
        self._emit(speech_final=False, from_finalize=False, speech_end=cut, end=cut)
        # The next utterance re-reads some audio before the cut (the decoder needs the
        # context); words_from keeps the words before the cut out of it.
        self.utterance_start = max(0, cut - self._overlap)
        self._words_from = cut
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
                words_from=self.position,
            )
        )
