"""The ``bidistream`` command line.

Each layer owns its subcommands in a ``commands`` module with a
``register(subparsers)`` function, so adding a command never edits another
layer's code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "bidistream.container.commands",  # serve, check
    "bidistream.gateway.commands",  # gateway, env, invoke
    "bidistream.platform.commands",  # run, endpoints
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bidistream",
        description="Self-hosted bidirectional-streaming inference (SageMaker-compatible).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # layer not built yet
            raise
        module.register(sub)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
