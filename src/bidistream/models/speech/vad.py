"""Silero VAD v6 through onnxruntime, one small state per session.

The ONNX file is the one faster-whisper ships (``assets/silero_vad_v6.onnx``),
so no extra package is needed.  It was the only VAD measured to stay usable
in noise (specs/speech-models.md 3.4).  One InferenceSession is shared by all
sessions (it is thread-safe for ``run``); each session keeps its own LSTM
state and 64-sample context so streams never leak into each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FRAME_SAMPLES", "SileroVad", "VadStream"]

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the window the model was trained on
CONTEXT_SAMPLES = 64


def default_model_path() -> Path:
    import faster_whisper

    return Path(os.path.dirname(faster_whisper.__file__)) / "assets" / "silero_vad_v6.onnx"


class SileroVad:
    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session: Any = onnxruntime.InferenceSession(
            str(path or default_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )

    def stream(self) -> VadStream:
        return VadStream(self)


class VadStream:
    """Speech probability for each complete 512-sample frame fed, in order."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        buf = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(buf) // FRAME_SAMPLES
        self._pending = buf[n * FRAME_SAMPLES :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = buf[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT_SAMPLES:]], axis=0)
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        batch = np.concatenate([contexts, frames], axis=1)
        probs, self._h, self._c = self._vad.session.run(None, {"input": batch, "h": self._h, "c": self._c})
        return np.asarray(probs, dtype=np.float32).reshape(-1)
