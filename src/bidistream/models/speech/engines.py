"""Speech-to-text engines behind one small interface.

An engine turns whole utterances (16 kHz mono float32) into transcripts, a
batch at a time.  Taking a batch is what lets the scheduler put utterances
from different sessions into one CTranslate2 call: Whisper pads every input
to a 30 s window, so one decode costs about the same whatever its length and
a batch of N costs much less than N single calls.

Engines are blocking and thread-safe for concurrent ``decode`` calls up to the
``parallelism`` they were built with; the scheduler runs them in a thread pool.
"""

from __future__ import annotations

import abc
import os
import re
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bidistream.models.speech.weights import WeightsSpec

__all__ = [
    "SAMPLE_RATE",
    "Engine",
    "PocketsphinxEngine",
    "Transcript",
    "WhisperEngine",
    "Word",
]

SAMPLE_RATE = 16000
HOP_SAMPLES = SAMPLE_RATE // 100  # Whisper's mel hop: one frame per 10 ms

_WORD_CHARS = re.compile(r"[^\w'-]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times in seconds from the start of the decoded audio."""

    word: str
    start: float
    end: float
    confidence: float
    punctuated_word: str


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    confidence: float
    words: tuple[Word, ...] = field(default=())

    @classmethod
    def empty(cls) -> Transcript:
        return cls("", 0.0, ())

    def without_final_stop(self) -> Transcript:
        """The first half of a length-cap cut: the sentence goes on, so no full stop."""
        text = self.text[:-1].rstrip() if self.text.endswith(".") else self.text
        words = self.words
        if words and words[-1].punctuated_word.endswith("."):
            last = words[-1]
            words = (
                *words[:-1],
                Word(last.word, last.start, last.end, last.confidence, last.punctuated_word[:-1]),
            )
        return Transcript(text, self.confidence, words)


def drop_words_before(transcript: Transcript, at: float) -> Transcript:
    """Words whose middle lies before ``at`` s: the previous utterance's (cap overlap)."""
    if at <= 0 or not transcript.words:
        return transcript
    kept = tuple(w for w in transcript.words if (w.start + w.end) / 2 >= at)
    if len(kept) == len(transcript.words):
        return transcript
    if not kept:
        return Transcript.empty()
    text = " ".join(w.punctuated_word for w in kept)
    return Transcript(text[:1].upper() + text[1:], transcript.confidence, kept)


def clamp_start(transcript: Transcript, onset: float) -> Transcript:
    """Move word starts that precede the VAD onset up to it.

    Whisper's alignment tends to start the first word at 0 s, i.e. inside the
    preroll kept before the onset; the VAD knows better where speech began.
    """
    if not transcript.words or transcript.words[0].start >= onset:
        return transcript
    words = tuple(
        Word(
            w.word,
            round(min(max(w.start, onset), max(w.end - 0.02, w.start)), 3),
            w.end,
            w.confidence,
            w.punctuated_word,
        )
        for w in transcript.words
    )
    return Transcript(transcript.text, transcript.confidence, words)


def plain_word(token: str) -> str:
    """Deepgram's ``word``: lower case without punctuation (``punctuated_word`` keeps it).

    Inner hyphens survive ("ill-disposed"): deleting them glued compounds into
    non-words ("illdisposed"), two errors per compound against any reference.
    Unpunctuated output splits them with :func:`plain_parts`.
    """
    return _WORD_CHARS.sub("", token).strip("-").lower()


def plain_parts(token: str) -> list[str]:
    """The unpunctuated words of one token: a hyphenated compound is two words."""
    return [p for p in (plain_word(t) for t in plain_word(token).split("-")) if p]


def _frames(audio: np.ndarray) -> int:
    """Mel frames (10 ms hops) of ``audio``, capped at Whisper's 30 s input."""
    return min(len(audio) // HOP_SAMPLES, 3000)


class Engine(abc.ABC):
    """One loaded model.  ``name``/``version``/``arch`` feed Deepgram's ``model_info``."""

    name: ClassVar[str] = "engine"
    arch: ClassVar[str] = "engine"
    version: str = "1"

    @abc.abstractmethod
    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        """Transcribe each utterance.  ``final`` asks for word timings and the best search."""

    @property
    def max_batch(self) -> int:
        return 1

    def batch_key(self, audio: np.ndarray, *, final: bool) -> Hashable:
        """Jobs may share one engine call only when their keys are equal.

        A batch must never change what one of its members decodes: a session's
        transcript may not depend on which other sessions happened to be waiting.
        """
        return final


class WhisperEngine(Engine):
    """Whisper on faster-whisper / CTranslate2 (int8 on CPU).

    Interims: greedy, no timestamps, no word alignment (the cheapest decode).
    Finals: greedy too, and ``beam_size`` search only for the utterances whose
    greedy result is unsure (mean log-probability below ``beam_below``), plus
    CTranslate2's cross-attention alignment for word timings and per-word
    probabilities.  Both take batches.

    Digit tokens are suppressed (``spell_digits``): Whisper writes spoken digit
    strings as numerals and drops some on the way ("four five seven two nine one
    eight" came out "45728" with every window, greedy or beam; measured), while
    spelled out every digit survives.  That is the model's habit, not a decoding
    bug; Deepgram's own default is words anyway, and ``numerals`` / ``smart_format``
    turn the spelled digits back into numerals (protocol.numerals).
    """

    name = "whisper"
    arch = "whisper"

    def __init__(
        self,
        weights: WeightsSpec,
        *,
        label: str,
        parallelism: int = 1,
        cpu_threads: int = 1,
        beam_size: int = 5,
        compute_type: str = "int8",
        batch_limit: int = 8,
        window_pad: float | None = 1.0,
        min_window: float = 10.0,
        interim_window: float | None = None,
        beam_below: float = -0.45,
        spell_digits: bool = True,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.label = label
        self.version = label
        self.beam_size = beam_size
        self._batch_limit = batch_limit
        # Encoder window: None pads every input to Whisper's 30 s; a number pads to the
        # audio plus that many seconds (rounded up to 1 s), cutting encoder cost 3-6x.
        self.window_pad = window_pad
        # Below ~10 s of context Whisper starts looping ("Goodbye Goodbye ..."), measured.
        self.min_window = min_window
        # Interims are re-decoded every second and superseded by the final, so they may use
        # a shorter window: at 10 s the encoder costs ~60% of the 15 s one (measured).
        self.interim_window = min_window if interim_window is None else min(interim_window, min_window)
        self.model = WhisperModel(
            str(weights.path),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=parallelism,
            local_files_only=True,
        )
        multilingual = bool(self.model.model.is_multilingual)
        self.tokenizer = Tokenizer(
            self.model.hf_tokenizer, multilingual, task="transcribe", language="en" if multilingual else None
        )
        self._prompt_interim = self.model.get_prompt(self.tokenizer, [], without_timestamps=True)
        # Greedy finals scoring under this (length-normalised log-probability) get beam search.
        self.beam_below = beam_below
        self._suppress = [-1]
        if spell_digits:
            self._suppress += [
                i for i in range(self.tokenizer.eot) if any(ch.isdigit() for ch in self.tokenizer.decode([i]))
            ]
        self._lock = threading.Lock()
        self.beam_reruns = 0

    @property
    def max_batch(self) -> int:
        return self._batch_limit

    def _max_length(self, frames: int) -> int:
        # Speech runs at most ~6 tokens per second; a bound proportional to the audio
        # stops a looping decode early instead of running to 448 tokens.
        return min(self.model.max_length, len(self._prompt_interim) + 16 + int(frames / 100 * 8))

    def _generate(self, encoded: Any, n: int, beam: int, frames: int) -> list[Any]:
        return list(
            self.model.model.generate(
                encoded,
                [list(self._prompt_interim) for _ in range(n)],
                beam_size=beam,
                max_length=self._max_length(frames),
                suppress_blank=True,
                suppress_tokens=self._suppress,
                return_scores=True,
                return_no_speech_prob=True,
            )
        )

    def batch_key(self, audio: np.ndarray, *, final: bool) -> Hashable:
        """The encoder window: Whisper's output depends on how far its input is padded.

        Measured: espeak's "goodbye" alone (10 s window) decoded as "Goodbye Goodbye",
        batched with a 13.5 s utterance (15 s window) as "Goodbye!".  Same-window
        batches decode each member exactly as alone (same text, same confidence).
        """
        return (final, self._window(_frames(audio), final))

    def _window(self, frames: int, final: bool = True) -> int:
        if self.window_pad is None:
            return 3000
        floor = self.min_window if final else self.interim_window
        want = max(frames + int(self.window_pad * 100), int(floor * 100))
        return min(3000, -(-want // 100) * 100)

    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        from faster_whisper.audio import pad_or_trim

        if not batch:
            return []
        feats = [self.model.feature_extractor(a) for a in batch]
        num_frames = [min(int(f.shape[-1]), 3000) for f in feats]
        # From the sample count, exactly as batch_key computes it: a batch has one window.
        window = self._window(max(_frames(a) for a in batch), final)
        features = np.stack([pad_or_trim(f, window) for f in feats]).astype(np.float32)
        encoder_output = self.model.encode(features)
        results = list(self._generate(encoder_output, len(batch), 1, max(num_frames)))
        if final and self.beam_size > 1:
            unsure = [
                i for i, r in enumerate(results) if (r.scores[0] if r.scores else -9.0) < self.beam_below
            ]
            if unsure:
                self.beam_reruns += len(unsure)
                sub_enc = encoder_output
                if len(unsure) != len(batch):
                    sub_enc = self.model.encode(np.stack([features[i] for i in unsure]))
                for i, r in zip(
                    unsure, self._generate(sub_enc, len(unsure), self.beam_size, max(num_frames)), strict=True
                ):
                    results[i] = r
        eot = self.tokenizer.eot
        tokens = [[t for t in r.sequences_ids[0] if t < eot] for r in results]
        out: list[Transcript] = []
        if not final:
            for r, toks in zip(results, tokens, strict=True):
                out.append(self._transcript(r, toks, None))
            return out
        alignable = [i for i, t in enumerate(tokens) if t]
        alignments: dict[int, list[dict[str, Any]]] = {}
        if alignable:
            import ctranslate2

            sub = encoder_output
            if len(alignable) != len(batch):
                sub_np = np.stack([features[i] for i in alignable])
                sub = self.model.encode(sub_np)
            else:
                sub = encoder_output
            assert isinstance(sub, ctranslate2.StorageView)
            aligned = self.model.find_alignment(
                self.tokenizer, [tokens[i] for i in alignable], sub, [num_frames[i] for i in alignable]
            )
            for i, words in zip(alignable, aligned, strict=True):
                alignments[i] = words
        for i, (r, toks) in enumerate(zip(results, tokens, strict=True)):
            out.append(self._transcript(r, toks, alignments.get(i, [])))
        return out

    def _transcript(
        self, result: Any, tokens: list[int], alignment: list[dict[str, Any]] | None
    ) -> Transcript:
        from faster_whisper.transcribe import merge_punctuations

        text = self.tokenizer.decode(tokens).strip()
        no_speech = float(getattr(result, "no_speech_prob", 0.0))
        score = float(result.scores[0]) if result.scores else 0.0
        # scores are length-normalised log-probabilities
        confidence = float(np.exp(min(score, 0.0)))
        if not text or (no_speech > 0.6 and score < -1.0):
            return Transcript.empty()
        if alignment is None:
            return Transcript(text, round(confidence, 4), ())
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        words: list[Word] = []
        for item in alignment:
            token = str(item["word"]).strip()
            plain = plain_word(token)
            if not plain:
                continue
            words.append(
                Word(
                    word=plain,
                    start=round(float(item["start"]), 3),
                    end=round(float(item["end"]), 3),
                    confidence=round(float(item["probability"]), 4),
                    punctuated_word=token,
                )
            )
        if words:
            confidence = float(np.mean([w.confidence for w in words]))
        return Transcript(text, round(confidence, 4), tuple(words))


class PocketsphinxEngine(Engine):
    """CMU pocketsphinx with the en-us model its wheel ships: cheap, weak, deterministic.

    Decoders cost ~90 MB each and are not thread-safe, so a small pool is kept
    (one per parallel slot); each utterance starts from fresh feature and CMN
    state so nothing leaks between sessions.
    """

    name = "pocketsphinx"
    arch = "pocketsphinx"
    version = "5.1.1"

    def __init__(self, *, parallelism: int = 1) -> None:
        from pocketsphinx import Decoder

        self._pool: list[Any] = []
        self._cmn0: list[str] = []
        for _ in range(max(1, parallelism)):
            dec = Decoder(samprate=SAMPLE_RATE, loglevel="ERROR")
            self._pool.append(dec)
            self._cmn0.append(dec.get_cmn())
        self._free = list(range(len(self._pool)))
        self._cond = threading.Condition()

    def _acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def _release(self, idx: int) -> None:
        with self._cond:
            self._free.append(idx)
            self._cond.notify()

    def decode(self, batch: Sequence[np.ndarray], *, final: bool) -> list[Transcript]:
        return [self._decode_one(a, final) for a in batch]

    def _decode_one(self, audio: np.ndarray, final: bool) -> Transcript:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        idx = self._acquire()
        dec = self._pool[idx]
        try:
            dec.reinit_feat()
            dec.set_cmn(self._cmn0[idx])
            dec.start_utt()
            dec.process_raw(pcm, full_utt=final)
            dec.end_utt()
            hyp = dec.hyp()
            if hyp is None or not hyp.hypstr:
                return Transcript.empty()
            words: list[Word] = []
            if final:
                for seg in dec.seg():
                    token = seg.word
                    if token.startswith(("<", "[")):
                        continue
                    token = token.split("(")[0]
                    words.append(
                        Word(
                            word=token,
                            start=round(seg.start_frame / 100, 3),
                            end=round((seg.end_frame + 1) / 100, 3),
                            confidence=round(float(seg.prob), 4),
                            punctuated_word=token,
                        )
                    )
            text = " ".join(w.word for w in words) if final else hyp.hypstr
            conf = float(np.mean([w.confidence for w in words])) if words else 0.5
            return Transcript(text, round(conf, 4), tuple(words))
        finally:
            self._release(idx)
