"""Who spoke each word: resemblyzer's GE2E speaker encoder run in numpy, plus clustering.

specs/speech-models.md §3.5 measured this recipe: Silero VAD finds speech,
1.5 s windows every 0.75 s are embedded by the GE2E d-vector encoder that
``resemblyzer==0.1.4`` ships (a 3-layer LSTM 40→256 and a 256→256 projection,
identical embeddings to the torch package), windows are clustered with
average-linkage cosine AHC, and the number of speakers is chosen by the
silhouette criterion up to ``max_speakers`` (a fixed distance cannot count
two close voices), each word takes the speaker of the window nearest its
midpoint, and one-word islands are smoothed away.

The weights file is a legacy torch pickle; it is read by a restricted
unpickler that builds only an OrderedDict of float arrays (no torch, no code
from the file), after checking its SHA-256.  The resemblyzer package itself is
never imported (it imports torch).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import pickle
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bidistream.errors import ModelError
from bidistream.models.speech.engines import SAMPLE_RATE
from bidistream.models.speech.vad import FRAME_SAMPLES, SileroVad
from bidistream.protocols.asr import FileTranscript

__all__ = [
    "LiveDiarizer",
    "SpeakerEncoder",
    "assign_speakers",
    "choose_clusters",
    "diarize_words",
    "speakers_for",
]

WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
WINDOW_S = 1.5
HOP_S = 0.75
# A window counts if at least this share of its VAD frames is speech.
MIN_SPEECH_SHARE = 0.5
VAD_THRESHOLD = 0.5
# AHC is cubic in the window count; past this many windows, cluster an even subsample
# and give the others the nearest centroid's speaker (one hour = 4800 windows).
MAX_CLUSTER_WINDOWS = 600
# resemblyzer's front end: 25 ms / 10 ms mel frames, 40 bands, volume normalised to -30 dBFS.
N_FFT = 400
HOP = 160
N_MELS = 40
TARGET_DBFS = -30.0
# Speech-only clips are cut to a multiple of this many samples (0.25 s) so they batch.
LENGTH_STEP = 4000
# Below this silhouette, splitting the windows explains them no better than one speaker.
MIN_SILHOUETTE = 0.1
# Fewer windows than this (about 4.5 s of speech) are one speaker: a silhouette over a handful of
# windows rewards splitting one voice's noise, and a live session's first final (its tags are
# final once sent) often sees only its own speaker's first few windows.
MIN_WINDOWS_TO_SPLIT = 6

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# ----------------------------------------------------------------------------- weights
@dataclass(frozen=True, slots=True)
class _StorageRef:
    kind: str
    key: str


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Unpickler(pickle.Unpickler):
    """Allows exactly the names a legacy torch state dict needs, as inert placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"weights file refers to {module}.{name}: refused")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(pid[1]), str(pid[2]))


def _rebuild_tensor(storage: _StorageRef, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _locate_weights() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "speaker diarization needs the resemblyzer==0.1.4 wheel (installed with --no-deps, "
            "see requirements-models.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def load_state(path: Path | None = None, sha256: str | None = WEIGHTS_SHA256) -> dict[str, np.ndarray]:
    """The model_state arrays of resemblyzer's legacy torch checkpoint, without torch."""
    data = (path or _locate_weights()).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError("resemblyzer pretrained.pt does not match its pinned SHA-256")
    f = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        _Unpickler(f).load()
    root = _Unpickler(f).load()
    keys = _Unpickler(f).load()
    if not isinstance(root, dict) or not isinstance(root.get("model_state"), dict):
        raise ModelError("resemblyzer weights: no model_state in the checkpoint")
    kinds: dict[str, str] = {}
    for value in _tensors(root):
        kinds[value.storage.key] = value.storage.kind
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(_DTYPES[kinds.get(key, "FloatStorage")])
        storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    state: dict[str, np.ndarray] = {}
    for name, ref in root["model_state"].items():
        flat = storages[ref.storage.key]
        itemsize = flat.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(
            flat[ref.offset :], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride)
        )
        state[name] = np.array(arr, dtype=np.float32)
    return state


def _tensors(value: Any) -> list[_TensorRef]:
    if isinstance(value, _TensorRef):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


# ----------------------------------------------------------------------------- encoder
def _mel_filters() -> np.ndarray:
    """Slaney-style mel filterbank (librosa's default, which resemblyzer used), (40, 201)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        mel = f / (200.0 / 3)
        log_region = f >= 1000.0
        return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        f = m * (200.0 / 3)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), f)

    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_pts = mel_to_hz(
        np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    )
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : N_MELS + 2] - mel_pts[:N_MELS]))[:, None]
    return weights.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class SpeakerEncoder:
    """GE2E d-vectors for batches of equal-length windows; thread-safe (no mutable state)."""

    def __init__(self, state: dict[str, np.ndarray] | None = None) -> None:
        self.state = state or load_state()
        self.layers = [
            (
                self.state[f"lstm.weight_ih_l{i}"].T.copy(),
                self.state[f"lstm.weight_hh_l{i}"].T.copy(),
                self.state[f"lstm.bias_ih_l{i}"] + self.state[f"lstm.bias_hh_l{i}"],
            )
            for i in range(3)
        ]
        self.linear_w = self.state["linear.weight"].T.copy()
        self.linear_b = self.state["linear.bias"]
        self.mel = _mel_filters()
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)

    def mels(self, wav: np.ndarray) -> np.ndarray:
        """(frames, 40) power mel spectrogram, centred frames with zero padding."""
        padded = np.pad(wav.astype(np.float32), N_FFT // 2)
        n = 1 + (len(padded) - N_FFT) // HOP
        idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
        spec = np.abs(np.fft.rfft(padded[idx] * self.window, axis=1)) ** 2
        return (spec @ self.mel.T).astype(np.float32)

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 256) unit vectors, one per window; windows of equal length share one batch."""
        out = np.zeros((len(windows), 256), dtype=np.float32)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(len(w), []).append(i)
        for idx in groups.values():
            out[idx] = self._embed_batch([windows[i] for i in idx])
        return out

    def _embed_batch(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        x = np.stack([self.mels(_normalise(w)) for w in windows])  # (B, T, 40)
        for w_ih, w_hh, bias in self.layers:
            batch, steps, _ = x.shape
            hidden = w_hh.shape[0]
            h = np.zeros((batch, hidden), dtype=np.float32)
            c = np.zeros((batch, hidden), dtype=np.float32)
            pre = x @ w_ih + bias  # (B, T, 4H): input projections for every step at once
            out = np.empty((batch, steps, hidden), dtype=np.float32)
            for t in range(steps):
                gates = pre[:, t] + h @ w_hh
                i = _sigmoid(gates[:, :hidden])
                f = _sigmoid(gates[:, hidden : 2 * hidden])
                g = np.tanh(gates[:, 2 * hidden : 3 * hidden])
                o = _sigmoid(gates[:, 3 * hidden :])
                c = f * c + i * g
                h = o * np.tanh(c)
                out[:, t] = h
            x = out
        raw = np.maximum(x[:, -1] @ self.linear_w + self.linear_b, 0.0)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-8)


def _normalise(wav: np.ndarray) -> np.ndarray:
    """Raise (never lower) the level to -30 dBFS, as resemblyzer's preprocessing does."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
    if rms <= 1e-6:
        return wav
    change = TARGET_DBFS - 20 * np.log10(rms)
    return wav * (10 ** (change / 20)) if change > 0 else wav


_ENCODER: SpeakerEncoder | None = None
_ENCODER_LOCK = threading.Lock()


def single_blas_thread() -> bool:
    """Ask numpy's bundled OpenBLAS for one thread per call (process-wide); False if not found.

    The encoder makes 450 small matrix products per batch.  OpenBLAS threads
    each one, which on a loaded 2-core machine made a 40 s conversation take
    10-25 s to embed instead of 0.6 s (measured, load average 9-12).  The
    speech model runs several decodes in parallel already, so one BLAS thread
    per call is also what the rest of the process wants.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line and ".so" in line})
    except OSError:
        return False
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in (
            "scipy_openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads",
            "openblas_set_num_threads",
        ):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(1))
                return True
    return False


def encoder() -> SpeakerEncoder:
    """One encoder per process, loaded on first diarization (about 17 MB of weights)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            single_blas_thread()
            _ENCODER = SpeakerEncoder()
        return _ENCODER


# ----------------------------------------------------------------------------- clustering
def _average_linkage(dist: np.ndarray) -> list[tuple[int, int, int]]:
    """Merges (a, b, new_id) of average-linkage AHC on a distance matrix (naive, vectorised)."""
    n = len(dist)
    d = dist.astype(np.float64).copy()
    np.fill_diagonal(d, np.inf)
    sizes = np.ones(n)
    ids = list(range(n))
    alive = np.ones(n, dtype=bool)
    merges: list[tuple[int, int, int]] = []
    next_id = n
    for _ in range(n - 1):
        masked = np.where(alive[:, None] & alive[None, :], d, np.inf)
        a, b = divmod(int(np.argmin(masked)), n)
        if a > b:
            a, b = b, a
        merged = (d[a] * sizes[a] + d[b] * sizes[b]) / (sizes[a] + sizes[b])
        d[a, :] = merged
        d[:, a] = merged
        d[a, a] = np.inf
        alive[b] = False
        d[b, :] = np.inf
        d[:, b] = np.inf
        sizes[a] += sizes[b]
        merges.append((ids[a], ids[b], next_id))
        ids[a] = next_id
        next_id += 1
    return merges


def _cut(merges: list[tuple[int, int, int]], n: int, k: int) -> np.ndarray:
    """Labels for k clusters: replay all but the last k-1 merges."""
    parent = list(range(n + len(merges)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, new in merges[: n - k]:
        parent[find(a)] = new
        parent[find(b)] = new
    roots = [find(i) for i in range(n)]
    order = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return np.array([order[r] for r in roots])


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    k = labels.max() + 1
    if k < 2:
        return -1.0
    scores = []
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() <= 1:
            scores.append(0.0)
            continue
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == j].mean() for j in range(k) if j != labels[i])
        scores.append((b - a) / max(a, b, 1e-9))
    return float(np.mean(scores))


def choose_clusters(embeddings: np.ndarray, max_speakers: int | None) -> np.ndarray:
    """Window labels: the AHC cut with the best silhouette for 2..max_speakers, or one speaker."""
    n = len(embeddings)
    if n < MIN_WINDOWS_TO_SPLIT or (max_speakers is not None and max_speakers <= 1):
        return np.zeros(n, dtype=int)
    dist = np.clip(1.0 - embeddings @ embeddings.T, 0.0, 2.0)
    merges = _average_linkage(dist)
    upper = min(max_speakers or 8, n - 1) if n > 2 else 2
    best, best_score = np.zeros(n, dtype=int), MIN_SILHOUETTE
    for k in range(2, max(upper, 2) + 1):
        labels = _cut(merges, n, k)
        score = _silhouette(dist, labels)
        if score > best_score:
            best, best_score = labels, score
    return best


# ----------------------------------------------------------------------------- words
def speech_only(audio: np.ndarray, speech: np.ndarray, start: int, end: int, origin: int = 0) -> np.ndarray:
    """The samples of [start, end) that lie in VAD speech frames (indices absolute; audio[0] is origin).

    Embedding the pauses too blurred two close voices (two male espeak voices:
    62 % of words right with pauses kept, 100 % without, conv_mm), as
    resemblyzer's own preprocessing trims silence before embedding.
    """
    first, last = start // FRAME_SAMPLES, -(-end // FRAME_SAMPLES)
    keep = [
        audio[max(f * FRAME_SAMPLES, start) - origin : min((f + 1) * FRAME_SAMPLES, end) - origin]
        for f in range(first, min(last, len(speech)))
        if speech[f]
    ]
    clip = np.concatenate(keep) if keep else audio[start - origin : end - origin]
    # Lengths cut to a multiple of LENGTH_STEP so windows fall into a few equal-length batches;
    # the cut is taken from the start: the LSTM's last state, the embedding, weighs the end most
    # (cutting the end instead dropped conv_mm from 100 % to 52 %: close voices are fragile).
    return clip[len(clip) % LENGTH_STEP if len(clip) > LENGTH_STEP else 0 :]


def speech_windows(audio: np.ndarray, speech: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of 1.5 s windows every 0.75 s that are mostly speech (per VAD frame)."""
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    total = len(audio) / SAMPLE_RATE
    out: list[tuple[float, float]] = []
    start = 0.0
    while start + WINDOW_S <= total + 1e-9 or (not out and start == 0.0 and total > 0.5):
        end = min(start + WINDOW_S, total)
        lo, hi = int(start / frame_s), max(int(end / frame_s), int(start / frame_s) + 1)
        if speech[lo:hi].size and speech[lo:hi].mean() >= MIN_SPEECH_SHARE:
            out.append((start, end))
        start += HOP_S
        if end >= total:
            break
    return out


def assign_speakers(
    spans: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]], labels: np.ndarray
) -> list[int]:
    """Each word gets the label of the window whose centre is nearest its midpoint, then smoothed."""
    if not windows:
        return [0] * len(spans)
    centres = np.array([(a + b) / 2 for a, b in windows])
    raw = [int(labels[int(np.argmin(np.abs(centres - (a + b) / 2)))]) for a, b in spans]
    return smooth(raw)


def smooth(labels: list[int]) -> list[int]:
    """A one-word run between two runs of one same speaker joins them (a window straddling a turn)."""
    out = list(labels)
    for i in range(1, len(out) - 1):
        if out[i - 1] == out[i + 1] != out[i]:
            out[i] = out[i - 1]
    return out


def speakers_for(
    audio: np.ndarray, spans: Sequence[tuple[float, float]], vad: SileroVad, max_speakers: int | None
) -> list[int]:
    """A speaker per (start, end) span of a whole file, 0-based in order of first appearance."""
    if not spans:
        return []
    speech = vad.stream().feed(audio) >= VAD_THRESHOLD
    windows = speech_windows(audio, speech)
    clips = [speech_only(audio, speech, int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)) for a, b in windows]
    embeddings = encoder().embed(clips) if clips else np.zeros((0, 256), dtype=np.float32)
    if len(embeddings) > MAX_CLUSTER_WINDOWS:
        pick = np.linspace(0, len(embeddings) - 1, MAX_CLUSTER_WINDOWS).astype(int)
        sub = choose_clusters(embeddings[pick], max_speakers)
        centroids = np.stack([embeddings[pick][sub == j].mean(axis=0) for j in range(sub.max() + 1)])
        labels = np.argmax(embeddings @ centroids.T, axis=1)
    else:
        labels = choose_clusters(embeddings, max_speakers)
    speakers = assign_speakers(spans, windows, labels)
    order = {s: i for i, s in enumerate(dict.fromkeys(speakers))}
    return [order[s] for s in speakers]


def diarize_words(
    audio: np.ndarray, result: FileTranscript, vad: SileroVad, max_speakers: int | None
) -> FileTranscript:
    """The transcript with ``speaker`` set on every word."""
    words = result.words
    if not words:
        return result
    it = iter(speakers_for(audio, [(w.start, w.end) for w in words], vad, max_speakers))
    segments = tuple(
        replace(seg, words=tuple(replace(w, speaker=next(it)) for w in seg.words)) for seg in result.segments
    )
    return replace(result, segments=segments)


# ----------------------------------------------------------------------------- live sessions
class LiveDiarizer:
    """Speakers for a live session: windows are embedded as audio arrives, re-clustered per final.

    Only embeddings are kept (256 floats per 0.75 s), plus the audio of the
    window still open, so a 30-minute session holds about 2 MB.  Tags stay
    stable across finals: after each re-clustering, clusters are matched to
    the tags their windows had before, by overlap.
    """

    def __init__(self, vad: SileroVad, max_speakers: int | None = None) -> None:
        self.vad = vad.stream()
        self.max_speakers = max_speakers
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0  # absolute sample index of _audio[0]
        self._speech = np.zeros(0, dtype=bool)  # per VAD frame, from the stream start
        self._next = 0  # absolute sample index of the next window start
        self.windows: list[tuple[float, float]] = []
        self.embeddings: list[np.ndarray] = []
        self.tags: list[int | None] = []
        self._next_tag = 0

    def feed(self, samples: np.ndarray) -> None:
        self._audio = np.concatenate([self._audio, samples.astype(np.float32, copy=False)])
        self._speech = np.concatenate([self._speech, self.vad.feed(samples) >= VAD_THRESHOLD])
        win, hop = int(WINDOW_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
        clips: list[np.ndarray] = []
        while self._next + win <= self._audio_start + len(self._audio):
            lo = self._next // FRAME_SAMPLES
            hi = (self._next + win) // FRAME_SAMPLES
            if hi > len(self._speech):
                break
            if self._speech[lo:hi].mean() >= MIN_SPEECH_SHARE:
                clips.append(
                    speech_only(self._audio, self._speech, self._next, self._next + win, self._audio_start)
                )
                self.windows.append((self._next / SAMPLE_RATE, (self._next + win) / SAMPLE_RATE))
            self._next += hop
        if clips:
            self.embeddings.extend(encoder().embed(clips))
            self.tags.extend([None] * len(clips))
        drop = self._next - self._audio_start
        if drop > 0:
            self._audio = self._audio[drop:]
            self._audio_start = self._next

    def speakers(self, spans: Sequence[tuple[float, float]]) -> list[int]:
        """Tags for words given as (start, end) seconds from the stream start."""
        if not spans:
            return []
        if not self.embeddings:
            return [0] * len(spans)
        emb = np.stack(self.embeddings)
        if len(emb) > MAX_CLUSTER_WINDOWS:
            pick = np.linspace(0, len(emb) - 1, MAX_CLUSTER_WINDOWS).astype(int)
            sub = choose_clusters(emb[pick], self.max_speakers)
            centroids = np.stack([emb[pick][sub == j].mean(axis=0) for j in range(sub.max() + 1)])
            labels = np.argmax(emb @ centroids.T, axis=1)
        else:
            labels = choose_clusters(emb, self.max_speakers)
        mapping = self._stable(labels)
        self.tags = [mapping[int(label)] for label in labels]
        centres = np.array([(a + b) / 2 for a, b in self.windows])
        raw = [self.tags[int(np.argmin(np.abs(centres - (a + b) / 2)))] for a, b in spans]
        return smooth([t if t is not None else 0 for t in raw])

    def _stable(self, labels: np.ndarray) -> dict[int, int]:
        """Cluster → tag: the tag most of its windows had, greedily by overlap; else a new tag."""
        votes: dict[tuple[int, int], int] = collections.Counter(
            (int(lab), tag) for lab, tag in zip(labels, self.tags, strict=True) if tag is not None
        )
        mapping: dict[int, int] = {}
        used: set[int] = set()
        for (lab, tag), _ in sorted(votes.items(), key=lambda kv: -kv[1]):
            if lab not in mapping and tag not in used:
                mapping[lab] = tag
                used.add(tag)
        for lab in dict.fromkeys(int(x) for x in labels):
            if lab not in mapping:
                while self._next_tag in used:
                    self._next_tag += 1
                mapping[lab] = self._next_tag
                used.add(self._next_tag)
        return mapping
