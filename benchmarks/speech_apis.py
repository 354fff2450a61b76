"""``make bench-speech`` (second part): the speech model measured through each ASR API face.

Per API (OpenAI transcriptions, NIM HTTP and gRPC styles, Riva Recognize,
Deepgram pre-recorded): WER on the evaluation set (conditions ``a`` every other
utterance and ``r``), the time to answer a 60 s file (median of ``--runs``),
its real-time factor, and the ratio to the floor measured in the same run (the
model's own ``transcribe_file`` on the decoded audio, no API at all).  Then
diarization word-speaker accuracy (NIM gRPC style) on conv_mf and conv_mm, and
Riva streaming final latency beside Deepgram's live API (real-time paced
100 ms chunks; latency from the last chunk sent to the last final).

CPU model and load average are printed beside the figures: other engineers
share this 2-core machine.  Results: benchmarks/results/speech_apis.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jiwer
import openai
import riva.client

from benchmarks.machine import cpu_model
from benchmarks.speech import build_set, normalise
from bidistream.container.server import ModelServer
from bidistream.models.speech import SpeechModel
from bidistream.models.speech.files import decode_file

RESULTS = Path(__file__).resolve().parent / "results" / "speech_apis.json"
APIS = ("openai", "nim_http", "nim_grpc", "riva", "deepgram")
LONG_FILE_S = 60.0


def seed_body(audio: bytes, diarize: bool) -> tuple[bytes, str]:
    boundary = "----WebKitFormBoundary" + uuid.uuid4().hex
    fields = {
        "language_code": "en-US",
        "speaker_diarization": "true" if diarize else "false",
        "max_speakers": "4",
    }
    out = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'.encode()
    out += b"Content-Type: audio/wav\r\n\r\n" + audio
    for name, value in fields.items():
        out += f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
    return out + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Apis:
    """One call per API face, each returning the transcript text (and the raw answer)."""

    def __init__(self, http_port: int, riva_port: int, session: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{http_port}"
        self.http = session
        self.oai = openai.AsyncOpenAI(base_url=f"{self.base}/v1", api_key="bench", max_retries=0, timeout=600)
        self.riva = riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{riva_port}"))

    async def openai(self, wav: bytes) -> str:
        result = await self.oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
        return result.text

    async def nim(self, wav: bytes, route: str, diarize: bool = False) -> dict[str, Any]:
        body, ctype = seed_body(wav, diarize)
        async with self.http.post(
            f"{self.base}/invocations/{route}", data=body, headers={"Content-Type": ctype}
        ) as r:
            r.raise_for_status()
            return await r.json()  # type: ignore[no-any-return]

    async def nim_http(self, wav: bytes) -> str:
        return str((await self.nim(wav, "http"))["text"])

    async def nim_grpc(self, wav: bytes) -> str:
        doc = await self.nim(wav, "grpc")
        return " ".join(r["alternatives"][0]["transcript"] for r in doc["predictions"][0]["results"])

    async def riva_offline(self, wav: bytes) -> str:
        config = riva.client.RecognitionConfig(language_code="en-US", enable_automatic_punctuation=True)
        response = await asyncio.to_thread(self.riva.offline_recognize, wav, config)
        return "".join(r.alternatives[0].transcript for r in response.results)

    async def deepgram(self, wav: bytes) -> str:
        async with self.http.post(
            f"{self.base}/v1/listen", data=wav, headers={"Content-Type": "audio/wav"}
        ) as r:
            r.raise_for_status()
            doc = await r.json()
        return str(doc["results"]["channels"][0]["alternatives"][0]["transcript"])

    def call(self, api: str) -> Any:
        return {
            "openai": self.openai,
            "nim_http": self.nim_http,
            "nim_grpc": self.nim_grpc,
            "riva": self.riva_offline,
            "deepgram": self.deepgram,
        }[api]


def wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def long_file(wavs: Path, refs: dict[str, str]) -> tuple[bytes, str, float]:
    """Whole utterances of condition ``a`` (then ``b``) until at least 60 s: (wav, reference, seconds)."""
    pcm, texts = b"", []
    for utt in sorted(u for u in refs if u[:2] in ("a_", "b_")):
        pcm += pcm_of(wavs / f"{utt}.wav")
        texts.append(refs[utt])
        if len(pcm) / 32000 >= LONG_FILE_S:
            break
    return wav_bytes(pcm), " ".join(texts), len(pcm) / 32000


async def wer_per_api(apis: Apis, wavs: Path, refs: dict[str, str]) -> dict[str, float]:
    utts = [u for u in sorted(refs) if u.startswith("a_")][::2] + [
        u for u in sorted(refs) if u.startswith("r_")
    ]
    out: dict[str, float] = {}
    for api in APIS:
        hyps = [normalise(await apis.call(api)((wavs / f"{u}.wav").read_bytes())) for u in utts]
        out[api] = round(float(jiwer.wer([normalise(refs[u]) for u in utts], hyps)), 4)
    return out


async def long_file_times(
    apis: Apis, model: SpeechModel, wav: bytes, ref: str, seconds: float, runs: int
) -> dict[str, Any]:
    audio, _ = decode_file(wav)
    # Round-robin (floor, then every API, per run) so a change in machine load hits all alike.
    floor: list[float] = []
    times: dict[str, list[float]] = {api: [] for api in APIS}
    texts: dict[str, str] = {}
    for _ in range(runs):
        began = time.perf_counter()
        await model.transcribe_file(audio)
        floor.append(time.perf_counter() - began)
        for api in APIS:
            began = time.perf_counter()
            texts[api] = await apis.call(api)(wav)
            times[api].append(time.perf_counter() - began)
    floor_s = statistics.median(floor)
    rows: dict[str, Any] = {"audio_s": round(seconds, 2), "floor_transcribe_file_s": round(floor_s, 3)}
    for api in APIS:
        t = statistics.median(times[api])
        rows[api] = {
            "seconds": round(t, 3),
            "rtf": round(t / seconds, 4),
            "ratio_to_floor": round(t / floor_s, 3),
            "wer": round(float(jiwer.wer(normalise(ref), normalise(texts[api]))), 4),
        }
    return rows


def accuracy(words: list[tuple[float, float, int]], turns: list[tuple[float, float, str]]) -> float:
    import itertools

    ref, hyp = [], []
    for start, end, speaker in words:
        mid = (start + end) / 2
        turn = min(turns, key=lambda t: 0.0 if t[0] <= mid <= t[1] else min(abs(mid - t[0]), abs(mid - t[1])))
        ref.append(turn[2])
        hyp.append(speaker)
    labels = sorted(set(hyp))
    refs = sorted(set(ref))
    best = 0
    for perm in itertools.permutations(refs + [None] * max(0, len(labels) - len(refs)), len(labels)):
        mapping = dict(zip(labels, perm, strict=True))
        best = max(best, sum(mapping[h] == r for h, r in zip(hyp, ref, strict=True)))
    return best / max(len(ref), 1)


async def diarization(apis: Apis, wavs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("conv_mf", "conv_mm"):
        turns = []
        for line in (wavs / f"{name}.ref.tsv").read_text().splitlines():
            start, end, speaker, _text = line.split("\t", 3)
            turns.append((float(start), float(end), speaker))
        began = time.perf_counter()
        doc = await apis.nim((wavs / f"{name}.wav").read_bytes(), "grpc", diarize=True)
        seconds = time.perf_counter() - began
        words = [
            (w["start_time"], w["end_time"], w["speaker_tag"])
            for r in doc["predictions"][0]["results"]
            for w in r["alternatives"][0]["words"]
        ]
        out[name] = {
            "word_speaker_accuracy": round(accuracy(words, turns), 4),
            "speakers_found": len({w[2] for w in words}),
            "seconds": round(seconds, 3),
        }
    return out


async def deepgram_latency(port: int, pcm: bytes) -> float:
    url = f"ws://127.0.0.1:{port}/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000"
    last_final = 0.0
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:

        async def read() -> None:
            nonlocal last_final
            async for msg in ws:
                doc = json.loads(msg.data)
                if (
                    doc.get("type") == "Results"
                    and doc["is_final"]
                    and doc["channel"]["alternatives"][0]["transcript"]
                ):
                    last_final = time.perf_counter()

        reader = asyncio.create_task(read())
        for i in range(0, len(pcm), 3200):
            await ws.send_bytes(pcm[i : i + 3200])
            await asyncio.sleep(0.1)
        sent = time.perf_counter()
        await ws.send_str('{"type":"CloseStream"}')
        await reader
    return last_final - sent


def riva_latency(riva_port: int, pcm: bytes) -> float:
    service = riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{riva_port}"))
    sent = [0.0]

    def chunks() -> Any:
        for i in range(0, len(pcm), 3200):
            yield pcm[i : i + 3200]
            time.sleep(0.1)
        sent[0] = time.perf_counter()

    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000, language_code="en-US"
        ),
        interim_results=False,
    )
    last = 0.0
    for response in service.streaming_response_generator(chunks(), config):
        if any(r.is_final and r.alternatives and r.alternatives[0].transcript for r in response.results):
            last = time.perf_counter()
    return last - sent[0]


async def streaming_latency(
    http_port: int, riva_port: int, wavs: Path, refs: dict[str, str]
) -> dict[str, Any]:
    utts = [u for u in sorted(refs) if u.startswith("a_")][::7]
    dg, rv = [], []
    for utt in utts:
        pcm = pcm_of(wavs / f"{utt}.wav")
        dg.append(await deepgram_latency(http_port, pcm))
        rv.append(await asyncio.to_thread(riva_latency, riva_port, pcm))
    return {
        "utterances": len(utts),
        "deepgram_final_after_last_chunk_p50_s": round(statistics.median(dg), 3),
        "riva_final_after_last_chunk_p50_s": round(statistics.median(rv), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set-dir", default=os.path.join(tempfile.gettempdir(), "bidistream-speech-eval"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    wavs = Path(args.set_dir)
    refs = build_set(wavs)
    load0 = os.getloadavg()
    model = SpeechModel()
    server = ModelServer(model, port=0)
    await server.start()
    await server.wait_loaded(timeout=300)
    services = model.grpc_services()
    grpc_server = grpc.aio.server(options=[o for s in services for o in getattr(s, "server_options", ())])
    for svc in services:
        svc.add_to_server(grpc_server)
    riva_port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    report: dict[str, Any] = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "profile": "default"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            apis = Apis(server.port, riva_port, http)
            report["wer"] = await wer_per_api(apis, wavs, refs)
            print("WER per API:", json.dumps(report["wer"]), flush=True)
            wav, ref, seconds = long_file(wavs, refs)
            report["file_60s"] = await long_file_times(apis, model, wav, ref, seconds, args.runs)
            print("60 s file:", json.dumps(report["file_60s"], indent=2), flush=True)
            report["diarization"] = await diarization(apis, wavs)
            print("diarization:", json.dumps(report["diarization"]), flush=True)
            report["streaming"] = await streaming_latency(server.port, riva_port, wavs, refs)
            print("streaming:", json.dumps(report["streaming"]), flush=True)
            await apis.oai.close()
    finally:
        await grpc_server.stop(grace=0)
        await server.stop(drain_timeout=0)
    report["load_average"] = {
        "start": [round(x, 2) for x in load0],
        "end": [round(x, 2) for x in os.getloadavg()],
    }
    print("cpu:", report["cpu_model"], "load average:", report["load_average"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    asyncio.run(main())
