"""The speech model over real sockets: POST pre-recorded, live WebSocket, errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.speech_audio import SERVER_IDLE_TIMEOUT, pcm, silence, speech_server, synth
from tests.support.waiting import scaled

SENTENCE = "i need help with my account balance"


def url(path: str, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or speech_server()}/{path}"


async def stream_pcm(
    ws: aiohttp.ClientWebSocketResponse, data: bytes, chunk: int = 3200, pace: float = 0.0
) -> None:
    for i in range(0, len(data), chunk):
        await ws.send_bytes(data[i : i + chunk])
        if pace:
            await asyncio.sleep(pace)


async def read_all(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(timeout)):
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, f"server sent {msg.type}"
            out.append(json.loads(msg.data))
    return out


def finals(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "Results" and m["is_final"]]


def text_of(messages: list[dict[str, Any]]) -> str:
    return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals(messages)).lower()


async def test_post_wav_returns_prerecorded_json() -> None:
    body = synth(SENTENCE).read_bytes()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url("v1/listen"), data=body, headers={"Content-Type": "audio/wav"})
        assert resp.status == 200
        doc = await resp.json()
    alt = doc["results"]["channels"][0]["alternatives"][0]
    assert "help" in alt["transcript"].lower() and "balance" in alt["transcript"].lower()
    assert doc["metadata"]["duration"] == pytest.approx(len(pcm(synth(SENTENCE))[0]) / 32000, abs=0.05)
    words = alt["words"]
    assert [w["word"] for w in words][:3] == ["i", "need", "help"]
    assert all(0 <= w["start"] < w["end"] <= doc["metadata"]["duration"] + 0.05 for w in words)
    assert all(0 <= w["confidence"] <= 1 for w in words)


async def test_post_v1_listen_with_raw_mulaw_8k() -> None:
    """Raw telephone audio (mu-law, 8 kHz) declared by the query is resampled to 16 kHz."""
    import numpy as np

    data, rate = pcm(synth("please transfer me to a supervisor", rate=8000))
    assert rate == 8000
    samples = np.frombuffer(data, "<i2").astype(np.int32)
    # G.711 mu-law encode (reference algorithm) to build the test input
    sign = (samples < 0).astype(np.int32)
    mag = np.minimum(np.abs(samples), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    mulaw = (~((sign << 7) | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            url("v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000"),
            data=mulaw,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    transcript = doc["results"]["channels"][0]["alternatives"][0]["transcript"].lower()
    assert "please transfer me" in transcript


async def test_post_not_audio_is_rejected_in_deepgrams_one_shape() -> None:
    """Raw bytes and a multipart body that are not audio get the same 400 and shape (issue 15.13)."""
    async with aiohttp.ClientSession() as http:
        raw = await http.post(url("v1/listen?model=nova-3"), data=b"hello, this is not audio at all")
        form = aiohttp.FormData()
        form.add_field("file", b"not audio either", filename="x.wav", content_type="audio/wav")
        multipart = await http.post(url("v1/listen?model=nova-3"), data=form)
        for resp in (raw, multipart):
            assert resp.status == 400
            body = await resp.json()
            assert set(body) == {"err_code", "err_msg", "request_id"}, body
            assert body["err_code"] == "Bad Request" and "not a WAV" in body["err_msg"]
            assert resp.headers["dg-error"] == body["err_msg"]


async def test_live_interims_finals_utterance_end_metadata() -> None:
    data, _ = pcm(synth(SENTENCE))
    query = (
        "model=nova-3&encoding=linear16&sample_rate=16000&interim_results=True&vad_events=true"
        "&utterance_end_ms=1000&punctuate=true"
    )
    async with aiohttp.ClientSession() as http, http.ws_connect(url(f"v1/listen?{query}")) as ws:
        await stream_pcm(ws, data + silence(1.5), pace=0.1)
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        messages = await read_all(ws)
        assert ws.close_code == 1000
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "SpeechStarted" and 0.1 < messages[0]["timestamp"] < 0.5
    interims = [m for m in messages if m["type"] == "Results" and not m["is_final"]]
    assert interims, kinds
    final = finals(messages)
    assert len(final) == 1 and final[0]["speech_final"] is True and final[0]["from_finalize"] is False
    alt = final[0]["channel"]["alternatives"][0]
    assert "balance" in alt["transcript"].lower() and alt["transcript"][0].isupper()
    assert kinds.index("UtteranceEnd") > kinds.index("Results")
    ue = messages[kinds.index("UtteranceEnd")]
    assert ue["last_word_end"] == pytest.approx(alt["words"][-1]["end"], abs=0.01)
    assert kinds[-1] == "Metadata"
    assert messages[-1]["duration"] == pytest.approx((len(data) + len(silence(1.5))) / 32000, abs=0.05)
    for key in ("channel_index", "duration", "start", "metadata"):
        assert key in final[0]


async def test_wav_stream_without_encoding_and_finalize() -> None:
    body = synth("what time does the store close on sunday", tail=0.0).read_bytes()
    async with aiohttp.ClientSession() as http, http.ws_connect(url("v1/listen?model=nova-3")) as ws:
        # no trailing silence: only Finalize ends the utterance
        await stream_pcm(ws, body[: len(body) - 6000], chunk=4000)
        await ws.send_str(json.dumps({"type": "Finalize"}))
        got: dict[str, Any] = {}
        async with asyncio.timeout(scaled(20)):
            while not got:
                msg = json.loads((await ws.receive()).data)
                if msg["type"] == "Results" and msg["is_final"]:
                    got = msg
        assert got["from_finalize"] is True
        assert "store" in got["channel"]["alternatives"][0]["transcript"]
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        rest = await read_all(ws)
        assert rest[-1]["type"] == "Metadata" and ws.close_code == 1000


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("model=nova-9", "model"),
        ("model=nova-3&encoding=opus&sample_rate=48000", "encoding"),
        ("model=nova-3&encoding=linear16", "sample_rate"),
        ("model=nova-3&interim_results=maybe", "interim_results"),
        ("model=nova-3&language=fr", "language"),
        ("model=nova-3&no_such_param=1", "no_such_param"),
        ("model=nova-3&endpointing=abc", "endpointing"),
    ],
)
async def test_bad_query_refuses_upgrade_with_deepgram_json(query: str, needle: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url(f"v1/listen?{query}"))
        assert info.value.status == 400
        resp = await http.get(
            url(f"v1/listen?{query}"),
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert resp.status == 400
        body = await resp.json()
        headers = resp.headers
    assert body["err_code"] == "INVALID_QUERY_PARAMETER" and needle in body["err_msg"]
    assert body["request_id"]
    # Deepgram also says it in headers, which clients that drop the body still log.
    assert needle in headers["dg-error"] and headers["dg-request-id"] == body["request_id"]


async def test_non_audio_closes_1002_and_other_session_untouched() -> None:
    data, _ = pcm(synth(SENTENCE))
    async with aiohttp.ClientSession() as http:
        good = await http.ws_connect(url("v1/listen?model=nova-3&encoding=linear16&sample_rate=16000"))
        bad = await http.ws_connect(url("v1/listen?model=nova-3"))  # no encoding: must be a WAV
        sender = asyncio.create_task(stream_pcm(good, data + silence(1.0), pace=0.02))
        await bad.send_bytes(b"this is plainly not a RIFF header, nor audio" * 10)
        msg = await bad.receive(timeout=scaled(10))
        assert msg.type == aiohttp.WSMsgType.CLOSE and bad.close_code == 1002
        assert "WAV" in msg.extra
        await sender
        await good.send_str(json.dumps({"type": "CloseStream"}))
        messages = await read_all(good)
        assert good.close_code == 1000
    assert "balance" in text_of(messages)


async def test_unknown_text_message_gets_error_and_stream_continues() -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url("v1/listen?model=nova-3")) as ws:
        await ws.send_str("{not json")
        err = json.loads((await ws.receive(timeout=scaled(5))).data)
        assert err["type"] == "Error" and err["variant"] and "JSON" in err["description"]
        await ws.send_str(json.dumps({"type": "Bogus"}))
        err2 = json.loads((await ws.receive(timeout=scaled(5))).data)
        assert err2["type"] == "Error" and "Bogus" in err2["description"]
        # a control message in a binary frame (SageMaker parts without DataType) still works
        await ws.send_bytes(json.dumps({"type": "CloseStream"}).encode())
        rest = await read_all(ws)
        assert [m["type"] for m in rest] == ["Metadata"] and ws.close_code == 1000


async def test_idle_close_1011_and_keepalive_keeps_open() -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url("v1/listen?model=nova-3")) as ws:
        began = time.monotonic()
        while time.monotonic() - began < SERVER_IDLE_TIMEOUT + 1.5:
            await ws.send_str(json.dumps({"type": "KeepAlive"}))
            await asyncio.sleep(0.5)
        assert not ws.closed
        quiet = time.monotonic()
        msg = await ws.receive(timeout=SERVER_IDLE_TIMEOUT + scaled(5))
        waited = time.monotonic() - quiet
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1011 and "NET-0001" in msg.extra
    assert SERVER_IDLE_TIMEOUT - 0.6 < waited < SERVER_IDLE_TIMEOUT + scaled(2)


async def test_token_subprotocol_is_selected() -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url("v1/listen?model=nova-3"), protocols=("token", "secret-key")) as ws,
    ):
        assert ws.protocol == "token"
        await ws.send_str(json.dumps({"type": "CloseStream"}))
        assert (await read_all(ws))[-1]["type"] == "Metadata"


DIGITS = "my account number is four five seven two nine one eight"


async def test_spoken_digits_all_survive_and_numerals_joins_them() -> None:
    # Whisper writes spoken digit strings as numerals and drops some ("45728"); the
    # engine decodes them spelled out, and numerals / smart_format join them again.
    body = synth(DIGITS).read_bytes()
    async with aiohttp.ClientSession() as http:
        plain = await http.post(
            url("v1/listen?model=nova-3"), data=body, headers={"Content-Type": "audio/wav"}
        )
        assert plain.status == 200
        words = (await plain.json())["results"]["channels"][0]["alternatives"][0]["transcript"].split()
        joined = await http.post(
            url("v1/listen?model=nova-3&numerals=true"), data=body, headers={"Content-Type": "audio/wav"}
        )
        alt = (await joined.json())["results"]["channels"][0]["alternatives"][0]
    assert words[-7:] == "four five seven two nine one eight".split()
    assert "4572918" in alt["transcript"]
    assert "4572918" in [w["word"] for w in alt["words"]]
