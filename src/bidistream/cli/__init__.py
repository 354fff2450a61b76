"""The ``bidistream`` command line: the composition root.

This package is the only one that may import every layer (see
``tests/unit/test_import_boundaries.py``): it builds the platform, the router
seam and the gateway and wires them together, so ``platform`` never imports
``gateway`` and ``gateway`` never imports ``platform`` or ``client``.  Each
module registers its subcommands; options shared by several commands are
declared once in :mod:`bidistream.cli.options`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from bidistream.cli import gateway, invoke, ops, run, serve

__all__ = ["build_parser", "main"]

# Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    serve,
    gateway,
    invoke,
    run,
    ops,
)  # serve, check | gateway, env | invoke | run, endpoints | logs, top


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidistream",
        description="Self-hosted bidirectional-streaming inference (SageMaker-compatible).",
        epilog="Environment: BIDISTREAM_DATA_DIR (default --data-dir), BIDISTREAM_CREDENTIALS (gateway "
        "credentials, AKID:SECRET[,...] or @FILE), BIDISTREAM_VERIFY_SIGV4, BIDISTREAM_CACHE_DIR, "
        "BIDISTREAM_CHROMIUM; see README.md, 'Environment variables'.",
    )
    parser.add_argument("--version", action="version", version=f"bidistream {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _version() -> str:
    try:
        return version("bidistream")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `bidistream endpoints | head`: the reader left; say nothing, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
