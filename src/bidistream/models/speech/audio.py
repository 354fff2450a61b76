"""Incoming audio to 16 kHz mono float32, chunk by chunk (sans-I/O).

Deepgram clients send raw PCM (``linear16``, ``mulaw``, ``alaw``, with a
declared ``sample_rate``) or a container whose header says the format (WAV
here).  Chunks split samples and headers anywhere, so the decoder keeps the
leftover bytes and the resampler keeps its filter history between calls:
decoding chunk by chunk gives the same samples as decoding the whole file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from bidistream.errors import UnsupportedDataError

__all__ = [
    "SUPPORTED_ENCODINGS",
    "AudioDecoder",
    "AudioFormatError",
    "Resampler",
    "looks_like_wav",
]

TARGET_RATE = 16000
SUPPORTED_ENCODINGS = ("linear16", "linear32", "mulaw", "alaw")
_BYTES_PER_SAMPLE = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1, "float32": 4}
# A WAV header larger than this is not a WAV header we will wait for.
MAX_HEADER_BYTES = 64 * 1024


class AudioFormatError(UnsupportedDataError):
    """The bytes are not audio in the declared (or detected) format (Deepgram's DATA-0000)."""

    code = "UnsupportedAudio"


def _mulaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    value = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return (value / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    value = np.where(sign != 0, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()


def looks_like_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


class Resampler:
    """Streaming band-limited resampler to 16 kHz.

    Windowed-sinc interpolation evaluated at the output instants; the last
    few input samples are kept so chunk boundaries are seamless.  When
    downsampling the sinc cut-off is lowered to the output Nyquist, which is
    the anti-aliasing filter.  numpy only: no resampling library is pinned.
    """

    HALF_TAPS = 16

    def __init__(self, src_rate: int, dst_rate: int = TARGET_RATE) -> None:
        if src_rate <= 0:
            raise ValueError("sample rate must be positive")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self.step = src_rate / dst_rate
        self.cutoff = min(1.0, dst_rate / src_rate)
        # history holds input samples; position of the next output, in input samples,
        # relative to history[0]
        self._history = np.zeros(self.HALF_TAPS, dtype=np.float32)
        self._pos = float(self.HALF_TAPS)

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.src_rate == self.dst_rate:
            return samples.astype(np.float32, copy=False)
        buf = np.concatenate([self._history, samples.astype(np.float32, copy=False)])
        last_usable = len(buf) - self.HALF_TAPS - 1
        if self._pos > last_usable:
            self._history = buf
            return np.zeros(0, dtype=np.float32)
        positions = np.arange(self._pos, last_usable + 1e-9, self.step)
        base = np.floor(positions).astype(np.int64)
        frac = positions - base
        offsets = np.arange(-self.HALF_TAPS + 1, self.HALF_TAPS + 1)
        idx = base[:, None] + offsets[None, :]
        dist = frac[:, None] - offsets[None, :]
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(dist / self.HALF_TAPS, -1.0, 1.0))
        kernel = self.cutoff * np.sinc(self.cutoff * dist) * window
        out = (buf[idx] * kernel).sum(axis=1).astype(np.float32)
        next_pos = positions[-1] + self.step
        keep_from = max(int(np.floor(next_pos)) - self.HALF_TAPS, 0)
        self._history = buf[keep_from:]
        self._pos = next_pos - keep_from
        return out


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: str  # one of _BYTES_PER_SAMPLE
    sample_rate: int
    channels: int


class AudioDecoder:
    """Bytes in, 16 kHz mono float32 out.  ``encoding=None`` means: read a WAV header first."""

    def __init__(
        self, encoding: str | None = None, sample_rate: int | None = None, channels: int = 1
    ) -> None:
        self.format: AudioFormat | None = None
        self._resampler: Resampler | None = None
        if encoding is not None:
            if encoding not in SUPPORTED_ENCODINGS:
                raise AudioFormatError(f"unsupported encoding {encoding!r}")
            self._set_format(AudioFormat(encoding, sample_rate or TARGET_RATE, max(1, channels)))
        self._pending = b""
        self.bytes_in = 0
        self.samples_out = 0

    def _set_format(self, fmt: AudioFormat) -> None:
        if fmt.sample_rate < 4000 or fmt.sample_rate > 192000:
            raise AudioFormatError(f"unsupported sample rate {fmt.sample_rate} Hz")
        if fmt.channels > 8:
            raise AudioFormatError(f"unsupported channel count {fmt.channels}")
        self.format = fmt
        self._resampler = Resampler(fmt.sample_rate)

    def feed(self, data: bytes) -> np.ndarray:
        self.bytes_in += len(data)
        buf = self._pending + data
        if self.format is None:
            if len(buf) >= 12 and not looks_like_wav(buf):
                raise AudioFormatError(
                    "audio is not a WAV container and no encoding was given; "
                    "set encoding and sample_rate for raw audio"
                )
            parsed = _parse_wav_header(buf)
            if parsed is None:
                if len(buf) > MAX_HEADER_BYTES:
                    raise AudioFormatError("no WAV data chunk within the first 64 KiB")
                self._pending = buf
                return np.zeros(0, dtype=np.float32)
            fmt, offset = parsed
            self._set_format(fmt)
            buf = buf[offset:]
        assert self.format is not None and self._resampler is not None
        frame = _BYTES_PER_SAMPLE[self.format.encoding] * self.format.channels
        usable = len(buf) - len(buf) % frame
        self._pending = buf[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        samples = _to_float(buf[:usable], self.format.encoding)
        if self.format.channels > 1:
            samples = samples.reshape(-1, self.format.channels).mean(axis=1)
        out = self._resampler.process(samples)
        self.samples_out += len(out)
        return out


def _to_float(data: bytes, encoding: str) -> np.ndarray:
    if encoding == "linear16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "linear32":
        return (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    if encoding == "float32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if encoding == "mulaw":
        return _MULAW[np.frombuffer(data, dtype=np.uint8)]
    if encoding == "alaw":
        return _ALAW[np.frombuffer(data, dtype=np.uint8)]
    raise AudioFormatError(f"unsupported encoding {encoding!r}")


# WAV format tags we decode; WAVE_FORMAT_EXTENSIBLE carries the real tag in its sub-format.
_WAV_TAGS = {1: "pcm", 3: "float", 6: "alaw", 7: "mulaw"}


def _parse_wav_header(buf: bytes) -> tuple[AudioFormat, int] | None:
    """The format and the offset of the first data byte, or None if more bytes are needed."""
    if len(buf) < 12:
        return None
    pos = 12
    fmt: AudioFormat | None = None
    while pos + 8 <= len(buf):
        chunk_id = buf[pos : pos + 4]
        (size,) = struct.unpack_from("<I", buf, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise AudioFormatError("WAV data chunk before its fmt chunk")
            return fmt, body
        if body + size > len(buf):
            return None
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(buf[body : body + size])
        pos = body + size + (size & 1)
    return None


def _parse_fmt(body: bytes) -> AudioFormat:
    if len(body) < 16:
        raise AudioFormatError("WAV fmt chunk too short")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == 0xFFFE and len(body) >= 26:
        (tag,) = struct.unpack_from("<H", body, 24)
    kind = _WAV_TAGS.get(tag)
    encoding = None
    if kind == "pcm" and bits == 16:
        encoding = "linear16"
    elif kind == "pcm" and bits == 32:
        encoding = "linear32"
    elif kind == "float" and bits == 32:
        encoding = "float32"
    elif kind in ("alaw", "mulaw") and bits == 8:
        encoding = kind
    if encoding is None:
        raise AudioFormatError(f"unsupported WAV format (tag {tag}, {bits} bits)")
    if channels < 1:
        raise AudioFormatError("WAV header says 0 channels")
    return AudioFormat(encoding, rate, channels)
