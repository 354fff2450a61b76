"""Stream four phrases to an endpoint and print what comes back while still sending.

The seed's invoke script, ported to the official client 0.12 (see bidi_client.py for what changed).
Usage: python sagemaker_byo_bidi_invoke.py ENDPOINT_NAME
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aws_sdk_sagemaker_runtime_http2.models import (
    InvokeEndpointWithBidirectionalStreamInput,
    RequestPayloadPart,
    RequestStreamEventPayloadPart,
)
from bidi_client import ENDPOINT_URL, make_client

PHRASES = ["I need help with", "my account balance", "I can help with that", "and recent charges"]


async def run(endpoint: str, gap: float) -> int:
    client = await make_client()
    stream = await client.invoke_endpoint_with_bidirectional_stream(
        InvokeEndpointWithBidirectionalStreamInput(endpoint_name=endpoint)
    )
    received: list[str] = []

    async def read() -> None:
        _, output = await stream.await_output()
        while (event := await output.receive()) is not None:
            part = getattr(event, "value", None)
            if part is not None and part.bytes_:
                text = part.bytes_.decode("utf-8", "replace")
                received.append(text)
                print(f"received: {text}", flush=True)

    reader = asyncio.create_task(read())
    for phrase in PHRASES:
        print(f"sent:     {phrase}", flush=True)
        await stream.input_stream.send(
            RequestStreamEventPayloadPart(value=RequestPayloadPart(bytes_=phrase.encode(), data_type="UTF8"))
        )
        await asyncio.sleep(gap)
    await stream.input_stream.close()
    await reader
    print(f"session ended: {len(received)} responses")
    return 0 if received else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=f"Bidirectional stream to an endpoint at {ENDPOINT_URL}.")
    parser.add_argument("ENDPOINT_NAME")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between phrases (default: 1)")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args.ENDPOINT_NAME, args.gap))
    except Exception as exc:  # an example prints the one line a user needs, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
