"""``make bench-speech``: live speech-to-text measured the way a voice agent feels it.

The unmodified ``deepgram-sdk`` streams at 1x real time to ``bidistream serve
speech`` (a separate process, so its CPU is measured alone).  Each stream is a
conversation: utterances of the evaluation set with silence between them.
Latencies are measured from the speaker's clock: chunk ``i`` covering audio
``[t, t + d)`` is sent at ``start + t + d`` (when it has been spoken), and

- final latency = arrival of the utterance's last non-empty ``is_final`` result
  minus the wall time of the **end of speech** (the last audible 10 ms frame of
  the utterance, found from the audio), not of the end of the stream;
- first partial = arrival of the first non-empty interim minus the onset time.

So a 100 ms chunk size costs up to 100 ms of latency, as it does for a caller.
Reported: final p50/p90, first partial p50, utterances without a final or
(2+ words) without an interim, WER of the finals, spurious finals over
silence and pink noise; 100 ms and 20 ms chunks and 8 kHz mu-law; N = 1, 2, 4,
8 concurrent streams with each stream's p90 and the server's CPU per audio
second.  The machine is shared: CPU model and load average are printed and
stored beside the figures.  ``--quick`` is the reduced form for development.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

from benchmarks.machine import cpu_model
from bidistream import ports

ROOT = Path(__file__).resolve().parent.parent
MAKE_SET = ROOT / "benchmarks" / "speech_eval" / "make_set.sh"
RESULTS = Path(__file__).resolve().parent / "results" / "speech.json"
# issue 13's bars (1x real time, from the end of speech)
BARS = {"final_p50": 0.30, "final_p90": 0.45, "first_partial_p50": 0.50, "stream_p90": 1.0, "streams": 4}
GAP = 1.5  # silence between utterances of a conversation (s)
_DIGITS = "zero one two three four five six seven eight nine".split()
_TENS = {"10": "ten", "20": "twenty", "30": "thirty", "40": "forty", "50": "fifty", "15": "fifteen"}


def normalise(text: str) -> str:
    text = text.lower().replace("%", " percent")
    text = re.sub(r"\(\d\)", "", text)
    text = re.sub(r"\d+", lambda m: _TENS.get(m.group(), " ".join(_DIGITS[int(d)] for d in m.group())), text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    return " ".join(w for w in text.split() if w not in ("<sil>", "[noise]"))


def build_set(out: Path) -> dict[str, str]:
    if not (out / "ref.tsv").exists():
        subprocess.run(["bash", str(MAKE_SET), str(out), "--real"], check=True, stdout=subprocess.DEVNULL)
    return dict(line.rstrip("\n").split("\t", 1) for line in (out / "ref.tsv").read_text().splitlines())


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- audio
def read_pcm16(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").copy()


def speech_edges(samples: np.ndarray, rate: int = 16000) -> tuple[float, float]:
    """First and last audible 10 ms frame (RMS within 30 dB of the loudest frame), seconds."""
    hop = rate // 100
    n = len(samples) // hop
    frames = samples[: n * hop].astype(np.float64).reshape(n, hop)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms >= max(rms.max() * 10 ** (-30 / 20), 30.0))
    return float(loud[0]) / 100, float(loud[-1] + 1) / 100


@dataclass
class Utterance:
    id: str
    ref: str
    onset: float  # stream seconds
    end: float  # stream seconds: the end of speech


@dataclass
class Conversation:
    pcm16: np.ndarray  # 16 kHz
    utterances: list[Utterance]

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 16000


def conversation(wavs: Path, refs: dict[str, str], ids: list[str], lead: float = 0.5) -> Conversation:
    parts = [np.zeros(int(lead * 16000), np.int16)]
    at = lead
    utts: list[Utterance] = []
    for uid in ids:
        audio = read_pcm16(wavs / f"{uid}.wav")
        on, off = speech_edges(audio)
        utts.append(Utterance(uid, refs[uid], at + on, at + off))
        parts += [audio, np.zeros(int(GAP * 16000), np.int16)]
        at += len(audio) / 16000 + GAP
    parts.append(np.zeros(16000, np.int16))
    return Conversation(np.concatenate(parts), utts)


def to_mulaw_8k(pcm16: np.ndarray, scratch: Path) -> bytes:
    """Telephony's format, made by sox (band-limited resampling, G.711 mu-law)."""
    src, dst = scratch / "conv16.raw", scratch / "conv8.ulaw"
    src.write_bytes(pcm16.astype("<i2").tobytes())
    subprocess.run(
        [
            # -R -D: the same bytes every run (sox dithers with a random seed by default).
            *("sox", "-R", "-D", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", str(src)),
            *("-t", "raw", "-r", "8000", "-e", "mu-law", "-b", "8", "-c", "1", str(dst)),
        ],
        check=True,
    )
    return dst.read_bytes()


def pink_noise(seconds: float, volume: float, scratch: Path) -> np.ndarray:
    out = scratch / f"pink-{volume}.wav"
    subprocess.run(
        [
            *("sox", "-R", "-D", "-n", "-r", "16000", "-b", "16", "-c", "1", str(out)),
            *("synth", str(seconds), "pinknoise", "vol", str(volume)),
        ],
        check=True,
    )
    return read_pcm16(out)


# --------------------------------------------------------------------------- server
def free_port() -> int:
    return ports.free_port("127.0.0.1")  # below the ephemeral range: no client connection takes it first


class Server:
    """``bidistream serve speech`` in its own process (its CPU is read from /proc)."""

    def __init__(self, sets: list[str]) -> None:
        self.port = free_port()
        args = ["serve", "speech", "--port", str(self.port), "--log-level", "warning"]
        for kv in sets:
            args += ["--set", kv]
        code = "import sys; from bidistream.cli import main; sys.exit(main())"
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"speech server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError("speech server did not answer /ping within 120 s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --------------------------------------------------------------------------- one stream
@dataclass
class Received:
    at: float  # wall clock
    is_final: bool
    speech_final: bool
    start: float
    end: float
    text: str


@dataclass
class StreamResult:
    received: list[Received] = field(default_factory=list)
    start: float = 0.0
    error: str | None = None  # the stream ended abnormally (kept: an overloaded run still reports)


def client(port: int) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(
        base=f"http://127.0.0.1:{port}",
        production=f"ws://127.0.0.1:{port}",
        agent=f"ws://127.0.0.1:{port}",
        agent_rest=f"http://127.0.0.1:{port}",
    )
    return AsyncDeepgramClient(api_key="bench", environment=env)


async def _stream(
    result: StreamResult,
    port: int,
    audio: bytes,
    *,
    encoding: str,
    sample_rate: int,
    chunk_ms: int,
    delay: float = 0.0,
) -> None:
    await asyncio.sleep(delay)
    bytes_per_s = sample_rate * (2 if encoding == "linear16" else 1)
    step = bytes_per_s * chunk_ms // 1000
    async with client(port).listen.v1.connect(
        model="nova-3",
        encoding=encoding,
        sample_rate=sample_rate,
        interim_results=True,
        punctuate=True,
    ) as sock:

        async def send() -> None:
            result.start = start = time.monotonic()
            for i in range(0, len(audio), step):
                target = start + (i + step) / bytes_per_s
                await asyncio.sleep(max(0.0, target - time.monotonic()))
                await sock.send_media(audio[i : i + step])
            await sock.send_close_stream()

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(len(audio) / bytes_per_s + 60):
                async for msg in sock:
                    if getattr(msg, "type", None) != "Results":
                        continue
                    alt = msg.channel.alternatives[0]
                    result.received.append(
                        Received(
                            time.monotonic(),
                            bool(msg.is_final),
                            bool(msg.speech_final),
                            float(msg.start),
                            float(msg.start) + float(msg.duration),
                            alt.transcript,
                        )
                    )
            await sender
        finally:
            sender.cancel()


async def stream(
    port: int,
    audio: bytes,
    *,
    encoding: str,
    sample_rate: int,
    chunk_ms: int,
    delay: float = 0.0,
) -> StreamResult:
    """Send ``audio`` at 1x real time (each chunk once it has been spoken); collect Results.

    A stream that ends abnormally keeps what it received and says why (``error``):
    an overloaded run still reports.
    """
    result = StreamResult()
    try:
        await _stream(
            result, port, audio, encoding=encoding, sample_rate=sample_rate, chunk_ms=chunk_ms, delay=delay
        )
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


@dataclass
class Scored:
    finals: list[float] = field(default_factory=list)
    firsts: list[float] = field(default_factory=list)
    no_final: int = 0
    no_interim: int = 0
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)


def score(conv: Conversation, res: StreamResult, into: Scored | None = None) -> Scored:
    out = into or Scored()
    for u in conv.utterances:
        lo, hi = u.onset - 0.05, u.end + 0.05
        mine = [r for r in res.received if r.text and r.start < hi and r.end > lo]
        finals = [r for r in mine if r.is_final]
        interims = [r for r in mine if not r.is_final]
        if finals:
            out.finals.append(max(r.at for r in finals) - (res.start + u.end))
        else:
            out.no_final += 1
        if interims:
            out.firsts.append(min(r.at for r in interims) - (res.start + u.onset))
        elif len(u.ref.split()) >= 2:
            out.no_interim += 1
        out.refs.append(normalise(u.ref))
        out.hyps.append(normalise(" ".join(r.text for r in sorted(finals, key=lambda r: r.start))))
    return out


def summary(s: Scored) -> dict[str, Any]:
    import jiwer

    return {
        "utterances": len(s.refs),
        "final_p50": pct(s.finals, 0.5),
        "final_p90": pct(s.finals, 0.9),
        "final_max": pct(s.finals, 1.0),
        "first_partial_p50": pct(s.firsts, 0.5),
        "first_partial_p90": pct(s.firsts, 0.9),
        "without_final": s.no_final,
        "without_interim_2plus_words": s.no_interim,
        "wer": round(jiwer.wer(s.refs, [h or "<none>" for h in s.hyps]), 4) if s.refs else None,
    }


# --------------------------------------------------------------------------- passes
async def decode_floor(server: Server, body: bytes, runs: int = 3) -> float:
    """Wall time of one whole-utterance request (VAD + one final decode) right now.

    The floor every live latency sits on, measured in the same run: on a shared
    machine it moves with the load, and the live figures move with it.
    """
    import aiohttp

    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(runs):
            began = time.monotonic()
            async with http.post(
                f"http://127.0.0.1:{server.port}/v1/listen?model=nova-3",
                data=body,
                headers={"Content-Type": "audio/wav"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            times.append(time.monotonic() - began)
    return round(sorted(times)[len(times) // 2], 3)


async def single(
    server: Server, conv: Conversation, chunk_ms: int, mulaw: bytes | None = None
) -> dict[str, Any]:
    if mulaw is None:
        res = await stream(
            server.port,
            conv.pcm16.astype("<i2").tobytes(),
            encoding="linear16",
            sample_rate=16000,
            chunk_ms=chunk_ms,
        )
    else:
        res = await stream(server.port, mulaw, encoding="mulaw", sample_rate=8000, chunk_ms=chunk_ms)
    return summary(score(conv, res))


async def spurious(server: Server, scratch: Path, seconds: float) -> dict[str, int]:
    out: dict[str, int] = {}
    sources = {
        "silence": np.zeros(int(seconds * 16000), np.int16),
        "pink_noise_-26dB": pink_noise(seconds, 0.05, scratch),
        "pink_noise_-12dB": pink_noise(seconds, 0.25, scratch),
    }
    for name, pcm16 in sources.items():
        res = await stream(
            server.port, pcm16.astype("<i2").tobytes(), encoding="linear16", sample_rate=16000, chunk_ms=100
        )
        out[name] = sum(1 for r in res.received if r.is_final and r.text)
    return out


async def concurrent(server: Server, convs: list[Conversation], n: int) -> dict[str, Any]:
    cpu0 = server.cpu_seconds()
    chosen = [convs[i % len(convs)] for i in range(n)]
    results = await asyncio.gather(
        *(
            stream(
                server.port,
                c.pcm16.astype("<i2").tobytes(),
                encoding="linear16",
                sample_rate=16000,
                chunk_ms=100,
                delay=0.37 * i,
            )
            for i, c in enumerate(chosen)
        )
    )
    cpu = server.cpu_seconds() - cpu0
    per = [summary(score(c, r)) for c, r in zip(chosen, results, strict=True)]
    total = Scored()
    for c, r in zip(chosen, results, strict=True):
        score(c, r, total)
    audio = sum(c.seconds for c in chosen)
    p90s = [p["final_p90"] for p in per]
    errors = [r.error for r in results if r.error]
    return {
        "streams": n,
        "stream_errors": errors,
        "each_final_p90": p90s,
        "worst_final_p90": max((p for p in p90s if p is not None), default=None),
        "all": summary(total),
        "server_cpu_per_audio_s": round(cpu / audio, 3),
        "ok": all(p is not None and p < BARS["stream_p90"] for p in p90s)
        and total.no_final == 0
        and not errors,
    }


def pick(refs: dict[str, str], quick: bool) -> list[list[str]]:
    """Conversations of mixed voices: espeak a/b/c and the real recordings r."""
    by = {c: [u for u in refs if u.startswith(c + "_")] for c in "abcr"}
    k = 4 if quick else 9
    convs = []
    for shift in range(3 if quick else 4):
        ids = []
        for j in range(k):
            cond = "abcr"[(j + shift) % 4]
            pool = by[cond]
            ids.append(pool[(j * 7 + shift * 5) % len(pool)])
        convs.append(ids)
    return convs


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set-dir", default=os.path.join(tempfile.gettempdir(), "bidistream-speech-eval"))
    parser.add_argument("--quick", action="store_true", help="reduced form for development")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--parts", default="single,chunks,mulaw,spurious,concurrent")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="serve speech --set")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    wavs = Path(args.set_dir)
    refs = build_set(wavs)
    scratch = Path(tempfile.mkdtemp(prefix="bidistream-bench-speech-"))
    convs = [conversation(wavs, refs, ids) for ids in pick(refs, args.quick)]
    report: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_start": load_avg(),
        "quick": args.quick,
        "options": args.set,
        "audio_seconds_per_stream": [round(c.seconds, 1) for c in convs],
    }
    print(
        f"CPU {report['cpu_model']} x{report['cpus']}, load average {report['load_average_start']}",
        flush=True,
    )
    server = Server(args.set)
    try:
        floor_wav = (wavs / "a_u08.wav").read_bytes()
        report["decode_floor_start_s"] = await decode_floor(server, floor_wav)
        print("decode floor (one 2.8 s utterance, POST):", report["decode_floor_start_s"], "s", flush=True)
        if "single" in parts:
            total = Scored()
            for conv in convs:
                res = await stream(
                    server.port,
                    conv.pcm16.astype("<i2").tobytes(),
                    encoding="linear16",
                    sample_rate=16000,
                    chunk_ms=100,
                )
                score(conv, res, total)
            report["single_100ms"] = summary(total)
            print("1 stream, 100 ms chunks:", report["single_100ms"], "load", load_avg(), flush=True)
        if "chunks" in parts:
            report["single_20ms"] = await single(server, convs[0], 20)
            print("1 stream, 20 ms chunks:", report["single_20ms"], "load", load_avg(), flush=True)
        if "mulaw" in parts:
            report["single_mulaw_8k_20ms"] = await single(
                server, convs[0], 20, to_mulaw_8k(convs[0].pcm16, scratch)
            )
            print(
                "1 stream, 8 kHz mu-law, 20 ms:",
                report["single_mulaw_8k_20ms"],
                "load",
                load_avg(),
                flush=True,
            )
        if "spurious" in parts:
            report["spurious_finals"] = await spurious(server, scratch, 6.0 if args.quick else 15.0)
            print("spurious finals:", report["spurious_finals"], flush=True)
        if "concurrent" in parts:
            report["concurrent"] = []
            for n in (int(x) for x in args.streams.split(",")):
                row = await concurrent(server, convs, n)
                report["concurrent"].append(row)
                print(f"{n} streams:", json.dumps(row), "load", load_avg(), flush=True)
        report["decode_floor_end_s"] = await decode_floor(server, floor_wav)
        print("decode floor at the end:", report["decode_floor_end_s"], "s", flush=True)
    finally:
        server.stop()
    report["load_average_end"] = load_avg()
    single_row = report.get("single_100ms")
    floor = (
        report["decode_floor_start_s"] + report.get("decode_floor_end_s", report["decode_floor_start_s"])
    ) / 2
    if single_row and single_row["final_p50"] is not None:
        # How many one-decode floors the final takes: comparable across machine loads.
        report["final_p50_over_decode_floor"] = round(single_row["final_p50"] / floor, 2)
        print("final p50 / decode floor:", report["final_p50_over_decode_floor"])
    if single_row:
        ok_n = [r["streams"] for r in report.get("concurrent", []) if r["ok"]]
        report["bars"] = {
            "final_p50<=0.30": single_row["final_p50"] is not None
            and single_row["final_p50"] <= BARS["final_p50"],
            "final_p90<=0.45": single_row["final_p90"] is not None
            and single_row["final_p90"] <= BARS["final_p90"],
            "first_partial_p50<=0.50": single_row["first_partial_p50"] is not None
            and single_row["first_partial_p50"] <= BARS["first_partial_p50"],
            "every utterance has an interim": single_row["without_interim_2plus_words"] == 0,
            ">=4 streams with every p90<1s": max(ok_n, default=0) >= BARS["streams"],
        }
        print("bars:", json.dumps(report["bars"], indent=2))
    load = f"start {report['load_average_start']} end {report['load_average_end']}"
    print(f"CPU {report['cpu_model']}, load average {load}")
    out = Path(args.out)
    if args.quick or args.set or parts != {"single", "chunks", "mulaw", "spurious", "concurrent"}:
        out = out.with_name(out.stem + "-partial.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
