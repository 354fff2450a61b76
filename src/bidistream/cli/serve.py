"""``bidistream serve`` and ``bidistream check``: the container side of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from bidistream import logs
from bidistream.cli import serve_v2
from bidistream.cli.options import add_listen, add_logging
from bidistream.container.limits import ServerLimits
from bidistream.container.loader import options_from_environment
from bidistream.defaults import MODEL_SERVER_PORT as DEFAULT_PORT
from bidistream.errors import BidistreamError
from bidistream.models import registry
from bidistream.runloop import run as run_loop

if TYPE_CHECKING:
    from bidistream.container.server import ModelServer
    from bidistream.model import Model


def _options(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"bidistream serve: --set expects key=value, got {pair!r}")
        out[key.strip()] = value
    return out


def resolve_port(cli_port: int | None) -> int:
    """``--port``, else ``SAGEMAKER_BIND_TO_PORT``, else 8080 (the contract's order)."""
    if cli_port is not None:
        return cli_port
    env = os.environ.get("SAGEMAKER_BIND_TO_PORT")
    if env:
        try:
            return int(env)
        except ValueError:
            raise SystemExit(f"SAGEMAKER_BIND_TO_PORT={env!r} is not a port number") from None
    return DEFAULT_PORT


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run a model server (the SageMaker container contract)",
        description=f"Serve MODEL ({', '.join(registry.names())}, package.module:Class, or an MLServer "
        "model repository folder) on /ping, /invocations, the bidirectional-stream WebSocket, V2 REST/SSE "
        "and V2 gRPC.",
    )
    serve.add_argument("model", metavar="MODEL")
    add_listen(serve, None, "default: $SAGEMAKER_BIND_TO_PORT or 8080")
    serve.add_argument(
        "--set", dest="options", action="append", default=[], metavar="KEY=VALUE", help="model option"
    )
    defaults = ServerLimits()
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=defaults.max_message_size,
        metavar="BYTES",
        help="largest WebSocket message or request body, in bytes (default: %(default)s)",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=defaults.max_sessions,
        metavar="N",
        help="live sessions this instance takes before refusing with 1013 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-session-duration",
        type=float,
        default=defaults.max_session_duration,
        metavar="SECONDS",
        help="a session is closed after this long (default: %(default)s s)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        metavar="SECONDS",
        help="a session with no frame either way for this long is closed (default: %(default)s s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=defaults.drain_timeout,
        metavar="SECONDS",
        help="on SIGTERM, how long live sessions may finish before they are closed (default: %(default)s s)",
    )
    serve.add_argument(
        "--accept-deadline",
        type=float,
        default=defaults.accept_deadline,
        metavar="SECONDS",
        help="time to answer a WebSocket upgrade, else refuse it with 503 (default: %(default)s s)",
    )
    add_logging(serve)
    serve_v2.add_arguments(serve)
    serve.set_defaults(handler=_serve)

    check = sub.add_parser(
        "check",
        help="check that a container honours the bidirectional-streaming contract",
        description="Run the SageMaker bidi container-contract checks against URL (e.g. http://127.0.0.1:8080).",
    )
    try:
        check_module = importlib.import_module("bidistream.container.check")
    except ImportError:
        check.set_defaults(handler=lambda _args: _missing("check"))
    else:
        check_module.add_arguments(check)
        check.set_defaults(handler=check_module.run)


def _missing(name: str) -> int:
    print(f"bidistream {name}: not available in this build", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, as_json=args.log_json)
    limits = ServerLimits(
        max_message_size=args.max_message_size,
        max_sessions=args.max_sessions,
        max_session_duration=args.max_session_duration,
        idle_timeout=args.idle_timeout,
        drain_timeout=args.drain_timeout,
        accept_deadline=args.accept_deadline,
    )
    try:
        v2 = serve_v2.resolve(args)
        return run_loop(
            serve_forever(
                args.model,
                options_from_environment(dict(os.environ)) | _options(args.options),  # --set wins
                args.host,
                args.port,
                limits,
                v2,
            )
        )
    except BidistreamError as exc:
        print(f"bidistream serve: {exc}", file=sys.stderr)
        return 2


async def serve_forever(
    spec: str,
    options: dict[str, str],
    host: str | None,
    port: int | None,
    limits: ServerLimits,
    v2: serve_v2.V2Serving | None = None,
) -> int:
    from bidistream.container.server import ModelServer

    v2 = v2 or serve_v2.V2Serving(host, port)
    model = await serve_v2.load(spec, options, v2)
    host, port = v2.host or serve_v2.DEFAULT_HOST, v2.port if v2.port is not None else resolve_port(None)
    server = ModelServer(model, host=host, port=port, limits=limits, **v2.server_kwargs())
    v2.configure(server)
    workers = serve_v2.spawn_workers(v2)
    try:
        return await _run_server(server, spec, model, host, port)
    finally:
        await asyncio.to_thread(serve_v2.stop_workers, workers)


async def _run_server(server: ModelServer, spec: str, model: Model, host: str, port: int) -> int:
    try:
        await server.start()
    except OSError as exc:
        print(
            f"bidistream serve: cannot listen on {host}:{port}: {exc.strerror or exc}. "
            "Pick another --port or stop what uses it.",
            file=sys.stderr,
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    base = f"http://{host}:{server.port}"
    print(f"bidistream: serving {spec} on {base}", flush=True)
    print(f"  GET  {base}/ping", flush=True)
    print(f"  POST {base}/invocations", flush=True)
    ws_base = f"ws://{host}:{server.port}"
    for path in ("invocations-bidirectional-stream", *model.invocation_paths):
        print(f"  WS   {ws_base}/{path}", flush=True)
    print(f"  try: python -m websockets {ws_base}/invocations-bidirectional-stream", flush=True)
    serve_v2.banner(server, base)
    waiter = asyncio.create_task(stop.wait())
    loader = asyncio.create_task(server.wait_loaded())
    done, _ = await asyncio.wait({waiter, loader}, return_when=asyncio.FIRST_COMPLETED)
    if loader in done and loader.exception() is not None:
        print(f"bidistream serve: {loader.exception()}", file=sys.stderr)
        waiter.cancel()
        await server.stop(drain_timeout=0)
        return 1
    if loader in done:
        print("bidistream: model loaded; /ping answers 200", flush=True)
    await waiter
    print(f"bidistream: draining {server.live_sessions} live session(s)", flush=True)
    await server.stop()
    return 0
