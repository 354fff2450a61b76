"""The options several commands share, each declared once.

A command that takes ``--data-dir``, ``--host``/``--port`` or the log options
calls the function here, so the flag's name, default and help are the same
wherever it appears (``run``, ``gateway``, ``env``, ``invoke``, ``endpoints``,
``serve``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bidistream.defaults import DEFAULT_DATA_DIR

__all__ = ["add_data_dir", "add_listen", "add_logging"]


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="holds the store, the local CA and instance logs (default: $BIDISTREAM_DATA_DIR, ~/.bidistream)",
    )


def add_listen(parser: argparse.ArgumentParser, port: int | None, port_help: str | None = None) -> None:
    """``--host`` and ``--port``: where a server listens (or, for ``env``, where the gateway does)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=port, help=port_help or "TCP port (default: %(default)s)")


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
