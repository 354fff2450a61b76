"""The launch post's flow with the unmodified ``deepgram-sdk``: whole file at once, wait, CloseStream.

The post sends the file in 512 KB parts, sleeps 15 s (past Deepgram's 10 s
idle limit) and then sends CloseStream.  Audio sent ahead of real time is
buffered work, so the idle clock starts once it has played out; the shared
test server's idle limit is SERVER_IDLE_TIMEOUT, so the same shape is
scaled: wait three times the idle limit after a file more than four times as long
(long after the decodes are done: counting only outstanding work is not enough).
"""

from __future__ import annotations

import asyncio
import io
import time
import wave

from tests.clients.test_deepgram_sdk import async_client, collect
from tests.speech_audio import SERVER_IDLE_TIMEOUT, conversation, pcm


async def test_whole_file_then_wait_past_idle_limit_then_close_stream_gets_finals() -> None:
    path, _turns = conversation()
    data, rate = pcm(path)
    assert len(data) / (2 * rate) > 4 * SERVER_IDLE_TIMEOUT
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    wav = buf.getvalue()
    async with async_client().listen.v1.connect(model="nova-3") as socket:
        for i in range(0, len(wav), 512_000):
            await socket.send_media(wav[i : i + 512_000])
        sent = time.monotonic()
        reader = asyncio.create_task(collect(socket, timeout=60))
        await asyncio.sleep(3 * SERVER_IDLE_TIMEOUT)  # the post's sleep, scaled to this server's limit
        assert not reader.done(), "session closed while the sent audio was still being heard"
        await socket.send_close_stream()
        messages = await reader
    assert time.monotonic() - sent >= 3 * SERVER_IDLE_TIMEOUT
    finals = [m for m in messages if m.type == "Results" and m.is_final]
    text = " ".join(m.channel.alternatives[0].transcript for m in finals).lower()
    assert "account balance" in text and "no problem" in text, text
    assert messages[-1].type == "Metadata"
