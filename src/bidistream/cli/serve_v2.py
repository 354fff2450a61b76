"""``bidistream serve``'s V2 side: the gRPC ports, and MLServer repository folders.

Port order for the HTTP port: ``--port``, ``$SAGEMAKER_BIND_TO_PORT``, an MLServer
folder's ``http_port`` (``settings.json`` / ``$MLSERVER_HTTP_PORT``), 8080.  For
gRPC: ``--grpc-port``, ``$SAGEMAKER_GRPC_PORT``, the folder's ``grpc_port``,
8081.  When nobody asked for a gRPC port and 8081 is taken (several instances
on one machine), the server says so and serves without gRPC rather than not
at all; an explicit port that cannot be bound is an error.  The host is
``--host``, else the folder's ``host`` if its settings name one, else
127.0.0.1 (MLServer's 0.0.0.0 default is not copied: bidistream binds
loopback unless told otherwise).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bidistream.model import Model
from bidistream.ports import free_port

if TYPE_CHECKING:
    from bidistream.container.server import ModelServer

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 8081
GRPC_PORT_ENV = "SAGEMAKER_GRPC_PORT"
HTTP_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
# Set in the worker processes a ``--workers N`` parent starts (they share its ports).
WORKER_ENV = "BIDISTREAM_WORKER"
# Seconds a worker gets to drain after the parent's SIGTERM before it is killed.
WORKER_STOP_TIMEOUT = 30.0


@dataclass(slots=True)
class V2Serving:
    """Where one ``serve`` listens; ``None`` fields are still open (a folder's settings may fill them)."""

    host: str | None = None
    port: int | None = None
    grpc_port: int | None = None
    grpc_explicit: bool = False
    grpc_enabled: bool = True
    triton_grpc_port: int | None = None
    workers: int | None = None
    reuse_port: bool = False

    def server_kwargs(self) -> dict[str, Any]:
        return {
            "reuse_port": self.reuse_port,
            "grpc_port": (self.grpc_port if self.grpc_port is not None else DEFAULT_GRPC_PORT)
            if self.grpc_enabled
            else None,
            "triton_grpc_port": self.triton_grpc_port if self.grpc_enabled else None,
        }

    def configure(self, server: ModelServer) -> None:
        server.grpc_port_optional = not self.grpc_explicit  # type: ignore[attr-defined]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # None lets an MLServer folder's settings.json choose the host; see resolve().
    parser.set_defaults(host=None)
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help=f"V2 gRPC port (default: ${GRPC_PORT_ENV}, an MLServer folder's grpc_port, or 8081; 0 = any)",
    )
    parser.add_argument("--no-grpc", action="store_true", help="serve no gRPC port")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="N server processes sharing the ports (SO_REUSEPORT), each connection on one "
        "(default: an MLServer folder's parallel_workers, else 1)",
    )
    parser.add_argument(
        "--triton-grpc-port",
        type=int,
        default=None,
        help="also serve Triton's streaming wire (ModelStreamInferResponse) for tritonclient on this port",
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a port number") from None


def resolve(args: argparse.Namespace, _resolve_port: Any = None) -> V2Serving:
    """What the flags and environment say; a folder's settings fill the rest in :func:`load`."""
    grpc_port = args.grpc_port if args.grpc_port is not None else _env_int(GRPC_PORT_ENV)
    worker = os.environ.get(WORKER_ENV) == "1"
    return V2Serving(
        workers=1 if worker else args.workers,
        reuse_port=worker,
        host=args.host,
        port=args.port if args.port is not None else _env_int(HTTP_PORT_ENV),
        grpc_port=grpc_port,
        grpc_explicit=grpc_port is not None,
        grpc_enabled=not args.no_grpc,
        triton_grpc_port=args.triton_grpc_port,
    )


async def load(spec: str, options: dict[str, str], v2: V2Serving) -> Model:
    """The model for ``spec``: a built-in / ``module:Class``, or an MLServer repository folder."""
    from bidistream.container import mlserver_repo

    if mlserver_repo.is_repository(spec):
        repo = await mlserver_repo.open_repository(spec)
        settings = repo.settings
        if v2.host is None and ("host" in settings.model_fields_set or "MLSERVER_HOST" in os.environ):
            v2.host = settings.host
        if v2.port is None:
            v2.port = settings.http_port
        if v2.grpc_port is None and (
            "grpc_port" in settings.model_fields_set or "MLSERVER_GRPC_PORT" in os.environ
        ):
            v2.grpc_port = settings.grpc_port
            v2.grpc_explicit = True
        if v2.workers is None:
            v2.workers = max(1, int(settings.parallel_workers or 0))
        model: Model = repo
    else:
        from bidistream.container.loader import load_model

        model = load_model(spec, options)
    v2.host = v2.host or DEFAULT_HOST
    v2.port = v2.port if v2.port is not None else DEFAULT_HTTP_PORT
    v2.workers = v2.workers or 1
    if v2.workers > 1:
        _pin_ports(v2)
    return model


def _pin_ports(v2: V2Serving) -> None:
    """Workers must agree on every port before any binds: 0 becomes a concrete free port."""
    host = v2.host or DEFAULT_HOST
    if not v2.port:
        v2.port = free_port(host)
    if v2.grpc_enabled:
        if not v2.grpc_port:
            v2.grpc_port = free_port(host) if v2.grpc_port == 0 else DEFAULT_GRPC_PORT
        if v2.triton_grpc_port == 0:
            v2.triton_grpc_port = free_port(host)
    v2.grpc_explicit = True
    v2.reuse_port = True


def spawn_workers(v2: V2Serving) -> list[subprocess.Popen[bytes]]:
    """Start ``workers - 1`` copies of this ``serve`` on the same ports; this process is the first.

    The kernel spreads connections over the processes (SO_REUSEPORT), so each
    session or stream lives in one worker from its first byte to its last.
    """
    if (v2.workers or 1) <= 1 or os.environ.get(WORKER_ENV) == "1":
        return []
    argv = [sys.executable, "-m", "bidistream.cli", *sys.argv[1:], "--host", str(v2.host)]
    argv += ["--port", str(v2.port), "--workers", "1"]
    if v2.grpc_enabled and v2.grpc_port is not None:
        argv += ["--grpc-port", str(v2.grpc_port)]
    if v2.triton_grpc_port is not None:
        argv += ["--triton-grpc-port", str(v2.triton_grpc_port)]
    env = {**os.environ, WORKER_ENV: "1"}
    return [subprocess.Popen(argv, env=env) for _ in range((v2.workers or 1) - 1)]


def stop_workers(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker this process started (by its pid), then wait; kill the ones that hang."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=WORKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def banner(server: ModelServer, base: str) -> None:
    """The V2 lines of ``serve``'s start-up banner."""
    from bidistream.container.v2_http import V2Face

    names = list(V2Face(server).backends)
    for name in names:
        print(f"  POST {base}/v2/models/{name}/infer | generate | infer_stream | generate_stream", flush=True)
    if server.grpc_port is not None:
        print(
            f"  gRPC {server.host}:{server.grpc_port} inference.GRPCInferenceService, grpc.health.v1",
            flush=True,
        )
    if server.triton_grpc_port is not None:
        print(f"  gRPC {server.host}:{server.triton_grpc_port} Triton stream wire (tritonclient)", flush=True)
