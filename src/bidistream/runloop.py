"""Runs a command's main coroutine on uvloop when it is installed.

uvloop measured about 2x cheaper per message than the default loop for every
server here (specs/transport-bench.md), so every long-running command uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run[T](main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
