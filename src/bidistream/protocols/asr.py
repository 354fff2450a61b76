"""The neutral result of transcribing a whole file, which every ASR face renders.

The speech model fills these from its engine's transcripts; the OpenAI, NIM
and Riva faces turn them into their own shapes.  Times are float seconds from
the start of the file (each face converts: Riva wants integer milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FileTranscript", "Segment", "TimedWord"]


@dataclass(frozen=True, slots=True)
class TimedWord:
    """One word: ``word`` is lower case without punctuation, ``punctuated`` as decoded."""

    word: str
    punctuated: str
    start: float
    end: float
    confidence: float
    speaker: int | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    """One utterance found by the VAD; ``text`` is the decoder's punctuated text."""

    start: float
    end: float
    text: str
    confidence: float
    words: tuple[TimedWord, ...] = field(default=())

    def plain_text(self) -> str:
        return " ".join(w.word for w in self.words) if self.words else self.text.lower()


@dataclass(frozen=True, slots=True)
class FileTranscript:
    duration: float
    language: str
    segments: tuple[Segment, ...]
    model: str = "bidistream"

    @property
    def words(self) -> list[TimedWord]:
        return [w for s in self.segments for w in s.words]

    def text(self, *, punctuated: bool = True) -> str:
        parts = [s.text.strip() if punctuated else s.plain_text() for s in self.segments]
        return " ".join(p for p in parts if p)
