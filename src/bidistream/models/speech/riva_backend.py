"""The speech model as the Riva face's backend: decode by the face's AudioSpec, transcribe, stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import numpy as np

from bidistream.frames import Frame
from bidistream.model import Session
from bidistream.models.speech.audio import AudioDecoder, AudioFormatError
from bidistream.models.speech.files import decode_file
from bidistream.protocols.asr import FileTranscript
from bidistream.protocols.riva import AudioSpec

if TYPE_CHECKING:
    from bidistream.models.speech.model import SpeechModel

__all__ = ["RivaBackend"]


class RivaBackend:
    def __init__(self, model: SpeechModel) -> None:
        self.model = model

    def decode(self, audio: bytes, spec: AudioSpec) -> np.ndarray:
        if spec.encoding is None:
            samples, _ = decode_file(audio)
            return samples
        decoder = AudioDecoder(spec.encoding, spec.sample_rate, spec.channels)
        samples = decoder.feed(audio)
        if not len(samples) and audio:
            raise AudioFormatError("audio too short to hold one sample")
        return samples

    async def transcribe(
        self, audio: np.ndarray, *, diarize: bool, max_speakers: int | None
    ) -> FileTranscript:
        return await self.model.transcribe_file(audio, diarize=diarize, max_speakers=max_speakers)

    def live(self, frames: AsyncIterator[Frame], query: str) -> AsyncIterator[Frame]:
        session = Session(id=uuid.uuid4().hex, path="v1/listen", raw_query=query, headers={})
        self.model.check_session(session)
        return self.model.stream(frames, session)
