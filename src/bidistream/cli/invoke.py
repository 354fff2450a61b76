"""``bidistream invoke``: stream stdin (or a file) to an endpoint through the client SDK."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from bidistream.cli.options import add_data_dir
from bidistream.defaults import GATEWAY_PORT
from bidistream.errors import BidistreamError
from bidistream.runloop import run as run_loop

DEFAULT_URL = f"https://127.0.0.1:{GATEWAY_PORT}"


DEFAULT_CHUNK_BYTES = 4096


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inv = sub.add_parser(
        "invoke",
        help="stream stdin (or a file) to an endpoint and print the responses",
        description="Open one InvokeEndpointWithBidirectionalStream session through the official client: "
        "each stdin line becomes a UTF8 part (or the input is sent in BINARY chunks), and every part the "
        "endpoint sends back is printed as it arrives.",
    )
    inv.add_argument("endpoint", metavar="ENDPOINT")
    inv.add_argument("--path", default=None, help="ModelInvocationPath, e.g. v1/listen")
    inv.add_argument("--query", default=None, help="ModelQueryString, e.g. model=nova-3")
    inv.add_argument("--file", default=None, help="read this file instead of stdin")
    inv.add_argument("--binary", action="store_true", help="send BINARY parts (default: UTF8 lines)")
    inv.add_argument(
        "--chunk-bytes",
        type=int,
        default=0,
        metavar="N",
        help=f"send BINARY parts of N bytes (implies --binary; default {DEFAULT_CHUNK_BYTES} with --binary)",
    )
    inv.add_argument(
        "--endpoint-url",
        default=None,
        help="the gateway (default: $AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2, https://127.0.0.1:8443)",
    )
    add_data_dir(inv)
    inv.set_defaults(handler=run_invoke)


def _quiet_orphans(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop what the official client's orphaned tasks raise at shutdown; report anything else.

    After a refused stream, awscrt leaves a body-writer task that fails with
    AWS_ERROR_HTTP_STREAM_HAS_COMPLETED when the loop closes; printing its traceback before the
    one line that matters misleads more than it tells.
    """
    task = context.get("task") or context.get("future")
    coro = getattr(task, "get_coro", lambda: None)()
    module = getattr(getattr(coro, "cr_code", None), "co_filename", "") or ""
    if "awscrt" in module or "smithy" in module:
        return
    loop.default_exception_handler(context)


def _describe(exc: BaseException, url: str) -> str:
    """One line a user can act on, for the failures that need words rather than a code."""
    text = f"{exc}"
    seen: BaseException | None = exc
    while seen is not None:
        text += f" {seen}"
        seen = seen.__cause__ or seen.__context__
    if "CONNECTION_REFUSED" in text or "Connection refused" in text:
        return f"nothing answers at {url} — is `bidistream run` running?"
    if "CERTIFICATE" in text.upper() and "VERIFY" in text.upper():
        return f'{url} presented a certificate this machine does not trust: run `eval "$(bidistream env)"`'
    return ""


def run_invoke(args: argparse.Namespace) -> int:
    from bidistream.client import Client

    binary = args.binary or args.chunk_bytes > 0  # chunks cut UTF-8 anywhere: they can only be bytes
    if args.chunk_bytes < 0:
        print("bidistream invoke: --chunk-bytes must be a positive number of bytes", file=sys.stderr)
        return 2
    url = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2") or DEFAULT_URL
    data_dir = Path(args.data_dir).expanduser()
    local_ca = data_dir / "ca.pem"
    ca = str(local_ca) if local_ca.exists() else os.environ.get("SSL_CERT_FILE")
    source = open(args.file, "rb") if args.file else sys.stdin.buffer
    chunk = args.chunk_bytes or DEFAULT_CHUNK_BYTES
    code = 0

    async def main() -> None:
        nonlocal code
        asyncio.get_running_loop().set_exception_handler(_quiet_orphans)
        async with (
            Client(args.endpoint_url, ca_file=ca) as client,
            client.session(args.endpoint, path=args.path, query=args.query) as s,
        ):

            async def feed() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    if binary:
                        data = await loop.run_in_executor(None, source.read, chunk)
                    else:
                        data = await loop.run_in_executor(None, source.readline)
                    if not data:
                        break
                    if binary:
                        await s.send(data)
                    else:
                        await s.send(data.decode("utf-8", "replace").rstrip("\n"))
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
        hint = _describe(exc, url)
        print(f"bidistream invoke: {hint or f'{exc.code}: {exc.message}'}", file=sys.stderr)
        code = 1
    finally:
        if args.file:
            source.close()
    return code
