"""``bidistream gateway`` and ``bidistream env``; :func:`start_gateway` is how ``run`` starts it too.

Here the platform, the router seam and the gateway are built and wired: the
gateway gets a :class:`~bidistream.routing.Router` and a control plane and
never learns what implements them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidistream import logs
from bidistream.cli.options import add_data_dir, add_listen, add_logging
from bidistream.defaults import (
    DEFAULT_REGION,
    GATEWAY_PORT,
    PLACEHOLDER_ACCESS_KEY_ID,
    PLACEHOLDER_SECRET_ACCESS_KEY,
)
from bidistream.errors import BidistreamError, InputValidationError
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


def _grpc_endpoints(pairs: list[str], declared: dict[str, str]) -> dict[str, str]:
    """``--grpc-endpoint NAME=HOST:PORT``: the gRPC port of an endpoint declared with ``--endpoint``."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, address = pair.partition("=")
        host, colon, port = address.rpartition(":")
        if not sep or not name or not colon or not host or not port.isdigit():
            raise SystemExit(f"bidistream gateway: --grpc-endpoint expects NAME=host:port, got {pair!r}")
        if name not in declared:
            raise SystemExit(
                f"bidistream gateway: --grpc-endpoint {name}=... names no endpoint: "
                f"declare it with --endpoint {name}=http://host:port too"
            )
        out[name] = address
    return out


def credential_spec(value: str | None) -> str | None:
    """``--credentials`` or ``$BIDISTREAM_CREDENTIALS``, with ``@FILE`` read from disk.

    The file holds ``AKID:SECRET`` pairs, one per line or comma-separated (``#`` starts a comment),
    so the secret never appears in ``ps`` or the shell history.
    """
    raw = value if value is not None else os.environ.get("BIDISTREAM_CREDENTIALS")
    if raw is None or not raw.startswith("@"):
        return raw
    path = Path(raw[1:]).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputValidationError(f"cannot read credentials file {path}: {exc.strerror}") from exc
    pairs = [part.strip() for line in text.splitlines() for part in line.split("#", 1)[0].split(",")]
    return ",".join(p for p in pairs if p)


RAY_RESOURCE_KEYS = frozenset({"num_cpus", "num_gpus", "memory"})


def ray_resources(path: str | None) -> dict[str, dict[str, float]] | None:
    """``--ray-resources FILE.json``: InstanceType → Ray resource options, checked before Ray starts."""
    if path is None:
        return None
    where = Path(path).expanduser()
    try:
        doc = json.loads(where.read_text())
    except OSError as exc:
        raise InputValidationError(f"cannot read --ray-resources {where}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InputValidationError(
            f"--ray-resources {where} is not JSON: {exc.msg} (line {exc.lineno})"
        ) from exc
    if not isinstance(doc, dict):
        raise InputValidationError(f"--ray-resources {where} must map instance types to resources")
    out: dict[str, dict[str, float]] = {}
    for instance_type, spec in doc.items():
        if not isinstance(spec, dict) or not spec:
            raise InputValidationError(
                f'--ray-resources {where}: {instance_type!r} needs e.g. {{"num_cpus": 2}}'
            )
        bad = sorted(set(spec) - RAY_RESOURCE_KEYS)
        if bad:
            raise InputValidationError(
                f"--ray-resources {where}: {instance_type!r} has unknown key(s) {', '.join(bad)}; "
                f"use {', '.join(sorted(RAY_RESOURCE_KEYS))}"
            )
        values: dict[str, float] = {}
        for key, value in spec.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InputValidationError(
                    f"--ray-resources {where}: {instance_type}.{key} must be a number >= 0, got {value!r}"
                )
            values[key] = float(value)
        out[instance_type] = values
    return out


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs the gateway (`gateway` and `run`)."""
    from bidistream.gateway.limits import GatewayLimits

    d = GatewayLimits()
    add_listen(parser, GATEWAY_PORT)
    add_data_dir(parser)
    parser.add_argument(
        "--endpoint", action="append", default=[], metavar="NAME=URL", help="a running model server"
    )
    parser.add_argument(
        "--grpc-endpoint",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="the gRPC port (plain HTTP/2) of an --endpoint's model server: gRPC calls to NAME "
        "(content-type application/grpc on the gateway's TLS port) are relayed there",
    )
    parser.add_argument(
        "--runtime", choices=("process", "ray"), default="process", help="where instances run"
    )
    parser.add_argument(
        "--ray-address", default=None, metavar="HOST:PORT", help="Ray cluster (--runtime ray)"
    )
    parser.add_argument(
        "--ray-resources",
        default=None,
        metavar="FILE.json",
        help='per-InstanceType Ray resources, e.g. {"ml.g5.xlarge": {"num_cpus": 4, "num_gpus": 1}} '
        "(--runtime ray; overrides the built-in table)",
    )
    parser.add_argument(
        "--credentials",
        default=None,
        metavar="AKID:SECRET|@FILE",
        help="turn SigV4 checks on with these key pairs (comma-separated) on every route, and the WebSocket "
        "door (presigned URL or signed upgrade); @FILE reads them from a file so the secret stays off the "
        "command line; default: $BIDISTREAM_CREDENTIALS",
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help="a key the WebSocket door accepts (Authorization: Bearer|Token KEY, or subprotocols "
        "'token, KEY'); also from $BIDISTREAM_API_KEYS (comma-separated)",
    )
    parser.add_argument(
        "--region",
        default=DEFAULT_REGION,
        help="the region this gateway answers as: SigV4 scopes must name it (default: %(default)s)",
    )
    parser.add_argument("--lenient-query", action="store_true", help="accept '+' etc. in ModelQueryString")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=d.ping_interval,
        metavar="SECONDS",
        help="ping each instance WebSocket this often (default: %(default)s s)",
    )
    parser.add_argument(
        "--missed-pongs",
        type=int,
        default=d.missed_pongs,
        metavar="N",
        help="end a session after this many unanswered pings (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve GET /metrics on this plain-HTTP port (it is always on the TLS port)",
    )
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="do not meter sessions (the benchmark's 'metrics off'; /metrics still answers)",
    )
    add_logging(parser)


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
    add_listen(env, GATEWAY_PORT)
    add_data_dir(env)
    env.add_argument("--region", default=DEFAULT_REGION, help="region to sign for (default: %(default)s)")
    env.set_defaults(handler=print_env)


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
    from bidistream.routing import LayeredRouter, StaticRouter
    from bidistream.sigv4 import CredentialStore

    limits = GatewayLimits(
        ping_interval=args.ping_interval, missed_pongs=args.missed_pongs, lenient_query=args.lenient_query
    )
    data_dir: Path = args.data_dir
    static = _endpoints(args.endpoint)
    static_grpc = _grpc_endpoints(args.grpc_endpoint, static)
    # Parsed before the platform takes the data dir: a bad spec leaves nothing to clean up.
    api_keys = [*args.api_keys, *os.environ.get("BIDISTREAM_API_KEYS", "").split(",")]
    credentials = CredentialStore.from_spec(
        credential_spec(args.credentials), region=args.region, api_keys=api_keys
    )
    platform = build_platform(
        data_dir,
        runtime=args.runtime,
        ray_address=args.ray_address,
        ray_resources=ray_resources(args.ray_resources),
    )
    router = (
        LayeredRouter(StaticRouter(static, grpc=static_grpc), platform.router) if static else platform.router
    )
    gateway = Gateway(
        router,
        control_plane=platform.control_plane,
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        limits=limits,
        credentials=credentials,
    )
    from bidistream import metrics

    metrics.set_enabled(not args.no_metrics)
    await platform.start()
    metrics_site: Any = None
    try:
        await gateway.start()
        if args.metrics_port is not None:
            metrics_site = await serve_metrics(args.host, args.metrics_port)
    except OSError as exc:
        await gateway.stop()
        await platform.stop()
        print(f"bidistream {command}: cannot listen: {exc.strerror or exc}", file=sys.stderr)
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
        if metrics_site is not None:
            await metrics_site.cleanup()
        await gateway.stop()
        await platform.stop()
    return 0


async def serve_metrics(host: str, port: int) -> Any:
    """``GET /metrics`` on a plain-HTTP port of its own (for a Prometheus that cannot trust our CA)."""
    from aiohttp import web

    from bidistream.container.server import metrics_handler

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logging.getLogger("bidistream.gateway").info("metrics on http://%s:%d/metrics", host, port)
    return runner
