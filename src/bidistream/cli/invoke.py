"""``bidistream invoke``: stream stdin (or a file) to an endpoint through the client SDK."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from bidistream.cli.options import add_data_dir
from bidistream.errors import BidistreamError
from bidistream.runloop import run as run_loop


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inv = sub.add_parser("invoke", help="stream stdin (or a file) to an endpoint and print the responses")
    inv.add_argument("endpoint", metavar="ENDPOINT")
    inv.add_argument("--path", default=None, help="model invocation path")
    inv.add_argument("--query", default=None, help="model query string")
    inv.add_argument("--file", default=None, help="read this file instead of stdin")
    inv.add_argument("--binary", action="store_true", help="send BINARY parts (default: UTF8 lines)")
    inv.add_argument("--chunk-bytes", type=int, default=0, help="binary chunk size (default 4096)")
    inv.add_argument("--endpoint-url", default=None)
    add_data_dir(inv)
    inv.set_defaults(handler=run_invoke)


def run_invoke(args: argparse.Namespace) -> int:
    from bidistream.client import Client

    data_dir = Path(args.data_dir).expanduser()
    local_ca = data_dir / "ca.pem"
    ca = str(local_ca) if local_ca.exists() else os.environ.get("SSL_CERT_FILE")
    source = open(args.file, "rb") if args.file else sys.stdin.buffer
    chunk = args.chunk_bytes or 4096
    code = 0

    async def main() -> None:
        nonlocal code
        async with (
            Client(args.endpoint_url, ca_file=ca) as client,
            client.session(args.endpoint, path=args.path, query=args.query) as s,
        ):

            async def feed() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    if args.binary or args.chunk_bytes:
                        data = await loop.run_in_executor(None, source.read, chunk)
                    else:
                        data = await loop.run_in_executor(None, source.readline)
                    if not data:
                        break
                    if args.binary:
                        await s.send(data)
                    else:
                        text = data.decode("utf-8", "replace")
                        await s.send(text.rstrip("\n") if not args.chunk_bytes else text)
                await s.close_input()

            sender = asyncio.create_task(feed())
            try:
                async for frame in s:
                    if frame.is_text:
                        sys.stdout.write(frame.as_text() + ("\n" if frame.complete else ""))
                    else:
                        sys.stdout.buffer.write(frame.data)
                    sys.stdout.flush()
                await sender
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    try:
        run_loop(main())
    except BidistreamError as exc:
        print(f"bidistream invoke: {exc.code}: {exc.message}", file=sys.stderr)
        code = 1
    finally:
        if args.file:
            source.close()
    return code
