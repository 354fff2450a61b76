"""Stream a WAV file to a speech endpoint's Deepgram API through the official bidi client.

The launch post's Deepgram flow: ``v1/listen`` as ModelInvocationPath, ``model=nova-3`` in the
ModelQueryString, the file sent in chunks, then ``CloseStream``; transcripts and Metadata come back
as JSON payload parts.  Usage: python deepgram_stream_file.py ENDPOINT_NAME FILE.wav
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)
from bidi_client import make_client

CHUNK = 8192


async def run(endpoint: str, audio: bytes, realtime: bool) -> int:
    client = await make_client()
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(
            endpoint_name=endpoint,
            model_invocation_path="v1/listen",
            model_query_string="model=nova-3&punctuate=true&interim_results=false",
        )
    )
    finals: list[str] = []
    metadata = False

    async def read() -> None:
        nonlocal metadata
        _, output = await stream.await_output()
        while (event := await output.receive()) is not None:
            part = getattr(event, "value", None)
            if part is None or not part.bytes_:
                continue
            message = json.loads(part.bytes_)
            if message.get("type") == "Results" and message.get("is_final"):
                text = message["channel"]["alternatives"][0]["transcript"]
                if text:
                    finals.append(text)
                    print(f"transcript: {text}", flush=True)
            elif message.get("type") == "Metadata":
                metadata = True
                print(f"metadata: duration {message.get('duration')} s", flush=True)

    reader = asyncio.create_task(read())
    seconds_per_chunk = CHUNK / 32000  # 16 kHz, 16-bit mono
    for start in range(0, len(audio), CHUNK):
        await stream.input_stream.send(
            RequestStreamEventPayloadPart(value=RequestPayloadPart(bytes_=audio[start : start + CHUNK]))
        )
        if realtime:
            await asyncio.sleep(seconds_per_chunk)
    close = json.dumps({"type": "CloseStream"}).encode()
    await stream.input_stream.send(RequestStreamEventPayloadPart(value=RequestPayloadPart(bytes_=close)))
    await stream.input_stream.close()
    await reader
    return 0 if finals and metadata else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Transcribe a WAV file through a Deepgram-API endpoint.")
    parser.add_argument("ENDPOINT_NAME")
    parser.add_argument("FILE", type=Path)
    parser.add_argument("--realtime", action="store_true", help="pace the audio at 1x real time")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.ENDPOINT_NAME, args.FILE.read_bytes(), args.realtime))
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
