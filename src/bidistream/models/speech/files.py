"""Whole audio files to 16 kHz mono float32: sniff the container, then decode it.

Uploads arrive with a content type guessed from a file name (the ``openai``
SDK sends ``audio/x-wav`` for any ``.wav`` and ``text/plain`` for ``.txt``),
so the bytes decide.  WAV goes through our own streaming decoder (the one
live sessions use, so both paths give the same samples); every other
container goes through PyAV (FFmpeg), which faster-whisper already brings.
"""

from __future__ import annotations

import io

import numpy as np

from bidistream.models.speech.audio import AudioDecoder, AudioFormatError, looks_like_wav

__all__ = ["ACCEPTED_CONTAINERS", "decode_file", "sniff_container"]

ACCEPTED_CONTAINERS = ("wav", "flac", "mp3", "ogg", "webm", "mp4")
# Longest file decoded: past this a request holds too much memory (16 kHz float32 = 64 KiB/s).
MAX_FILE_SECONDS = 3 * 3600.0


def sniff_container(data: bytes) -> str | None:
    """The container named by the first bytes, or None if they are not one we decode."""
    if looks_like_wav(data):
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:3] == b"ID3":
        return "mp3"
    # An MPEG audio frame: 11 sync bits, a valid layer, bitrate and sample-rate index.
    if len(data) >= 4 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:
        layer = (data[1] >> 1) & 0x03
        bitrate = data[2] >> 4
        rate = (data[2] >> 2) & 0x03
        if layer != 0 and bitrate not in (0, 15) and rate != 3:
            return "mp3"
    return None


def decode_file(data: bytes) -> tuple[np.ndarray, str]:
    """``(samples, container)``; AudioFormatError if the bytes are no audio file we decode."""
    if not data:
        raise AudioFormatError("the audio file is empty")
    kind = sniff_container(data)
    if kind is None:
        raise AudioFormatError(
            f"the file is not audio in a supported container ({', '.join(ACCEPTED_CONTAINERS)})"
        )
    if kind == "wav":
        decoder = AudioDecoder()
        samples = decoder.feed(data)
        if decoder.format is None:
            raise AudioFormatError("truncated WAV file: no data chunk")
        return samples, kind
    return _decode_av(data, kind), kind


def _decode_av(data: bytes, kind: str) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFormatError(f"the {kind} file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    chunks.append(arr)
                    total += len(arr)
                if total > MAX_FILE_SECONDS * 16000:
                    raise AudioFormatError(f"audio longer than {MAX_FILE_SECONDS:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioFormatError:
        raise
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise AudioFormatError(f"could not decode the {kind} file: {exc}") from exc
    if not chunks:
        raise AudioFormatError(f"the {kind} file holds no audio samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)
