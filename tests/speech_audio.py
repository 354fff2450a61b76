"""Test audio made at test time (espeak-ng + sox) and one shared speech server per test run.

The speech model takes ~2 s and ~300 MB to load, so every speech test talks to
one ``bidistream serve speech`` process started on first use and ended (by
PID) when the test process exits.  Audio is synthesised once per run into a
temporary directory, the same way ../shared/speech_eval/make_set.sh does.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import subprocess
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

from tests.conftest import BIN, ROOT, free_port
from tests.support.waiting import scaled

_AUDIO_DIR: Path | None = None
_SERVER: tuple[subprocess.Popen[bytes], int] | None = None
_GRPC_PORT: int | None = None

# The shared server closes sessions after this many idle seconds (Deepgram: 10 s),
# short so the idle test is quick.
SERVER_IDLE_TIMEOUT = 3.0


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"speech tests need {', '.join(missing)}: run `make sysdeps`")


def audio_dir() -> Path:
    global _AUDIO_DIR
    if _AUDIO_DIR is None:
        _AUDIO_DIR = Path(tempfile.mkdtemp(prefix="bidistream-speech-audio-"))
        atexit.register(shutil.rmtree, _AUDIO_DIR, True)
    return _AUDIO_DIR


def synth(
    text: str,
    *,
    voice: str = "en-us",
    speed: int = 165,
    rate: int = 16000,
    lead: float = 0.25,
    tail: float = 0.5,
) -> Path:
    """A mono 16-bit WAV of ``text`` at ``rate`` Hz with silence around it (cached)."""
    require_tools()
    key = hashlib.sha1(f"{text}|{voice}|{speed}|{rate}|{lead}|{tail}".encode()).hexdigest()[:16]
    out = audio_dir() / f"{key}.wav"
    if not out.exists():
        raw = audio_dir() / f"{key}.raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
        subprocess.run(
            # -D: no dither.  sox dithers by default with a random seed, so every fresh run
            # synthesised slightly different audio and borderline words flipped between runs
            # ("account balance" / "account melon"): test audio must be the same every time.
            [
                "sox",
                "-D",
                str(raw),
                "-r",
                str(rate),
                "-c",
                "1",
                "-b",
                "16",
                str(out),
                "pad",
                str(lead),
                str(tail),
            ],
            check=True,
        )
        raw.unlink()
    return out


def pcm(path: Path) -> tuple[bytes, int]:
    """Raw little-endian PCM frames and sample rate of a WAV file."""
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


def silence(seconds: float, rate: int = 16000) -> bytes:
    return b"\0\0" * int(seconds * rate)


def speech_grpc_port() -> int:
    """The shared speech server's gRPC port (V2 and Riva ASR), starting the server if needed."""
    speech_server()
    assert _GRPC_PORT is not None
    return _GRPC_PORT


def speech_server() -> int:
    """Port of the shared ``bidistream serve speech`` process (started on first call)."""
    global _SERVER
    if _SERVER is not None and _SERVER[0].poll() is None:
        return _SERVER[1]
    global _GRPC_PORT
    port = free_port()
    _GRPC_PORT = free_port()  # never the default 8081: other servers may hold it
    cmd = [
        str(BIN / "bidistream"),
        "serve",
        "speech",
        "--port",
        str(port),
        "--grpc-port",
        str(_GRPC_PORT),
        "--set",
        f"idle_timeout={SERVER_IDLE_TIMEOUT}",
        "--log-level",
        "warning",
    ]
    log = open(audio_dir() / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + scaled(90)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"speech server exited with {proc.returncode}: {(audio_dir() / 'server.log').read_text()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=scaled(1)) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        proc.terminate()
        raise TimeoutError(f"speech server did not answer /ping 200 within {scaled(90):g} s")
    _SERVER = (proc, port)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                proc.kill()

    atexit.register(stop)
    return port


# Two voices for diarization tests: the male/female pair of ../shared/speech_eval (conv_mf).
CONVERSATION_VOICES = (("en-us", 165), ("en-us+f3", 140))
CONVERSATION_TURNS = (
    "hello thank you for calling how can i help you today",
    "i need help with my account balance please",
    "of course can you tell me your account number",
    "yes it is four five six seven eight nine",
    "thank you one moment while i look that up",
    "sure i can wait no problem at all",
)


def conversation(gap: float = 0.6) -> tuple[Path, list[tuple[float, float, int, str]]]:
    """A WAV of alternating turns and its reference: (start, end, speaker, text) per turn."""
    out = audio_dir() / f"conversation-{gap}.wav"
    turns: list[tuple[float, float, int, str]] = []
    frames = b""
    rate = 16000
    for i, text in enumerate(CONVERSATION_TURNS):
        voice, speed = CONVERSATION_VOICES[i % 2]
        data, rate = pcm(synth(text, voice=voice, speed=speed, lead=0.0, tail=0.0))
        start = len(frames) / (2 * rate)
        frames += data
        turns.append((start, len(frames) / (2 * rate), i % 2, text))
        frames += silence(gap, rate)
    if not out.exists():
        with wave.open(str(out), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(silence(0.3, rate) + frames)
    return out, [(a + 0.3, b + 0.3, s, t) for a, b, s, t in turns]


def speaker_accuracy(
    words: list[tuple[float, float, int]], turns: list[tuple[float, float, int, str]]
) -> float:
    """Share of words (start, end, speaker) whose speaker matches the reference turn, best mapping."""
    import itertools

    ref: list[int] = []
    hyp: list[int] = []
    for start, end, speaker in words:
        mid = (start + end) / 2
        turn = min(turns, key=lambda t: 0.0 if t[0] <= mid <= t[1] else min(abs(mid - t[0]), abs(mid - t[1])))
        ref.append(turn[2])
        hyp.append(speaker)
    if not ref:
        return 0.0
    labels = sorted(set(hyp) | set(ref))
    best = 0
    for perm in itertools.permutations(labels):
        mapping = dict(zip(labels, perm, strict=True))
        best = max(best, sum(mapping[h] == r for h, r in zip(hyp, ref, strict=True)))
    return best / len(ref)
