"""``bidistream gateway``, ``bidistream env`` and ``bidistream invoke``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bidistream import logs
from bidistream.defaults import (
    DEFAULT_DATA_DIR,
    DEFAULT_REGION,
    GATEWAY_PORT,
    PLACEHOLDER_ACCESS_KEY_ID,
    PLACEHOLDER_SECRET_ACCESS_KEY,
)
from bidistream.errors import BidistreamError
from bidistream.runloop import run as run_loop

if TYPE_CHECKING:
    from bidistream.gateway.server import Gateway
    from bidistream.platform.app import Platform


def _endpoints(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise SystemExit(f"bidistream gateway: --endpoint expects NAME=http://host:port, got {pair!r}")
        out[name] = url
    return out


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs the gateway (`gateway` and `run`)."""
    from bidistream.gateway.limits import GatewayLimits

    d = GatewayLimits()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=GATEWAY_PORT)
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR, help="holds the store, the local CA and instance logs"
    )
    parser.add_argument(
        "--endpoint", action="append", default=[], metavar="NAME=URL", help="a running model server"
    )
    parser.add_argument(
        "--runtime", choices=("process", "ray"), default="process", help="where instances run"
    )
    parser.add_argument(
        "--ray-address", default=None, metavar="HOST:PORT", help="Ray cluster (--runtime ray)"
    )
    parser.add_argument("--credentials", default=None, metavar="AKID:SECRET", help="turn SigV4 checks on")
    parser.add_argument("--lenient-query", action="store_true", help="accept '+' etc. in ModelQueryString")
    parser.add_argument("--ping-interval", type=float, default=d.ping_interval)
    parser.add_argument("--missed-pongs", type=int, default=d.missed_pongs)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-json", action="store_true")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gw = sub.add_parser(
        "gateway",
        help="run the front door (SageMaker runtime API over TLS, HTTP/2 and HTTP/1.1)",
        description="Serve InvokeEndpointWithBidirectionalStream, InvokeEndpoint(+WithResponseStream) "
        "and the WebSocket front door for the declared endpoints.",
    )
    add_gateway_arguments(gw)
    gw.set_defaults(handler=run_gateway)

    env = sub.add_parser("env", help="print the exports a client needs to reach the gateway")
    env.add_argument("--host", default="127.0.0.1")
    env.add_argument("--port", type=int, default=GATEWAY_PORT)
    env.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    env.add_argument("--region", default=DEFAULT_REGION, help="region to sign for (default: %(default)s)")
    env.set_defaults(handler=print_env)

    inv = sub.add_parser("invoke", help="stream stdin (or a file) to an endpoint and print the responses")
    inv.add_argument("endpoint", metavar="ENDPOINT")
    inv.add_argument("--path", default=None, help="model invocation path")
    inv.add_argument("--query", default=None, help="model query string")
    inv.add_argument("--file", default=None, help="read this file instead of stdin")
    inv.add_argument("--binary", action="store_true", help="send BINARY parts (default: UTF8 lines)")
    inv.add_argument("--chunk-bytes", type=int, default=0, help="binary chunk size (default 4096)")
    inv.add_argument("--endpoint-url", default=None)
    inv.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    inv.set_defaults(handler=run_invoke)


def env_lines(host: str, port: int, bundle: Path, region: str) -> list[str]:
    """Exports for every client we serve: the bidi client, boto3's runtime and control plane, the CLI.

    The CA variables name a bundle of the system CAs plus ours, so the shell keeps trusting the
    public internet.  Credentials already in the environment are kept; otherwise the placeholders
    the `run` banner shows.
    """
    url = shlex.quote(f"https://{host}:{port}")
    key = os.environ.get("AWS_ACCESS_KEY_ID", PLACEHOLDER_ACCESS_KEY_ID)
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", PLACEHOLDER_SECRET_ACCESS_KEY)
    return [
        f"export AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2={url}",
        f"export AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={url}",
        f"export AWS_ENDPOINT_URL_SAGEMAKER={url}",
        f"export AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING={url}",
        f"export SSL_CERT_FILE={shlex.quote(str(bundle))}",
        f"export AWS_CA_BUNDLE={shlex.quote(str(bundle))}",
        f"export AWS_REGION={shlex.quote(region)}",
        f"export AWS_DEFAULT_REGION={shlex.quote(region)}",
        f"export AWS_ACCESS_KEY_ID={shlex.quote(key)}",
        f"export AWS_SECRET_ACCESS_KEY={shlex.quote(secret)}",
    ]


def print_env(args: argparse.Namespace) -> int:
    from bidistream.gateway.tls import ensure_trust_bundle

    bundle = ensure_trust_bundle(Path(args.data_dir).expanduser())
    print("\n".join(env_lines(args.host, args.port, bundle, args.region)))
    return 0


# Called once the gateway listens: (platform, gateway, stop event).
OnReady = Callable[["Platform", "Gateway", asyncio.Event], Awaitable[None]]


def run_gateway(args: argparse.Namespace) -> int:
    async def ready(_platform: Platform, gateway: Gateway, _stop: asyncio.Event) -> None:
        print(f"gateway listening on {gateway.url}", flush=True)
        print(f"export SSL_CERT_FILE={gateway.ca_path}", flush=True)

    return start_gateway(args, "gateway", ready)


def start_gateway(args: argparse.Namespace, command: str, on_ready: OnReady) -> int:
    """Run the gateway with the platform behind it until SIGINT/SIGTERM; the CLI's one way to do so."""
    logs.configure(args.log_level, as_json=args.log_json)
    # picows logs every instance connection at INFO: one line per session is noise.
    logging.getLogger("picows").setLevel(logging.WARNING)
    args.data_dir = Path(args.data_dir).expanduser().resolve()
    try:
        return run_loop(serve_gateway(args, command, on_ready))
    except BidistreamError as exc:
        print(f"bidistream {command}: {exc}", file=sys.stderr)
        return 2


async def serve_gateway(args: argparse.Namespace, command: str, on_ready: OnReady) -> int:
    from bidistream.gateway.limits import GatewayLimits
    from bidistream.gateway.server import Gateway
    from bidistream.platform.app import build_platform
    from bidistream.platform.routing import LayeredRouter, StaticRouter
    from bidistream.sigv4 import CredentialStore

    limits = GatewayLimits(
        ping_interval=args.ping_interval, missed_pongs=args.missed_pongs, lenient_query=args.lenient_query
    )
    data_dir: Path = args.data_dir
    static = _endpoints(args.endpoint)
    platform = build_platform(data_dir, runtime=args.runtime, ray_address=args.ray_address)
    router = LayeredRouter(StaticRouter(static), platform.router) if static else platform.router
    gateway = Gateway(
        router,
        control_plane=platform.control_plane,
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        limits=limits,
        credentials=CredentialStore.from_spec(args.credentials),
    )
    await platform.start()
    try:
        await gateway.start()
    except OSError as exc:
        await platform.stop()
        print(
            f"bidistream {command}: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    platform.announce(gateway.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await on_ready(platform, gateway, stop)
        await stop.wait()
    finally:
        print(f"bidistream {command}: stopping (instances drain their sessions)", flush=True)
        await gateway.stop()
        await platform.stop()
    return 0


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
