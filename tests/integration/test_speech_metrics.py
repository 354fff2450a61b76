"""The speech model's metrics after a session of known audio, scraped from the instance's /metrics
and read with prometheus-client's own parser (issue 14)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.speech_audio import pcm, silence, speech_server, synth
from tests.support.waiting import eventually, scaled

TEXT = "i need help with my account balance"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=scaled(10)) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


async def test_speech_metrics_after_a_session_of_known_audio() -> None:
    port = await asyncio.to_thread(speech_server)
    audio, _ = pcm(await asyncio.to_thread(synth, TEXT))
    audio += silence(1.0)
    seconds = len(audio) / 32000
    before = await asyncio.to_thread(scrape, port)
    url = f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true"
    messages: list[dict[str, object]] = []
    async with websockets.connect(url) as ws:

        async def read() -> None:
            async for raw in ws:
                messages.append(json.loads(raw))

        reader = asyncio.create_task(read())
        chunk = 3200  # 100 ms at 16 kHz, sent at real time so interims come while speaking
        for start in range(0, len(audio), chunk):
            await ws.send(audio[start : start + chunk])
            await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, scaled(60))
    finals = [m for m in messages if m.get("type") == "Results" and m.get("is_final")]
    interims = [m for m in messages if m.get("type") == "Results" and not m.get("is_final")]
    assert finals and interims, messages

    async def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        after = await asyncio.to_thread(scrape, port)
        backlog_series = [k for k in after if k[0] == "bidistream_speech_backlog_seconds"]
        return None if backlog_series else after  # the session's gauge goes when it ends

    after = await eventually(settled, timeout=10)
    assert isinstance(after, dict)

    def delta(name: str) -> float:
        return total(after, name, face="deepgram") - total(before, name, face="deepgram")

    # every byte of audio sent is counted, to the sample
    assert abs(delta("bidistream_speech_audio_received_seconds_total") - seconds) < 1e-6
    decoded = delta("bidistream_speech_audio_decoded_seconds_total")
    assert 0 < decoded <= seconds + 1e-6
    # one utterance: one end-of-speech-to-final observation, one first-interim observation
    assert delta("bidistream_speech_end_of_speech_to_final_seconds_count") >= 1
    assert delta("bidistream_speech_onset_to_first_interim_seconds_count") == 1
    final_s = delta("bidistream_speech_end_of_speech_to_final_seconds_sum")
    assert 0 < final_s < scaled(20)
    # the decode scheduler's own gauges: every decode went through a batch, nothing is left queued
    batches = total(after, "bidistream_speech_batch_size_count") - total(
        before, "bidistream_speech_batch_size_count"
    )
    assert batches >= 2  # at least one interim and one final
    assert total(after, "bidistream_speech_decode_queue_depth") == 0
    # histograms are consistent: +Inf bucket equals count
    inf = total(after, "bidistream_speech_end_of_speech_to_final_seconds_bucket", face="deepgram", le="+Inf")
    count = total(after, "bidistream_speech_end_of_speech_to_final_seconds_count", face="deepgram")
    assert inf == count
