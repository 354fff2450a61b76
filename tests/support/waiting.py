"""Wait for a condition instead of sleeping and hoping.

Every deadline in the suite is a multiple of :data:`UNIT` seconds, scaled by
``BIDISTREAM_TEST_TIMEOUT_FACTOR`` so a slow or loaded machine stretches all of
them at once rather than one test at a time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable

TIMEOUT_FACTOR = float(os.environ.get("BIDISTREAM_TEST_TIMEOUT_FACTOR", "1") or "1")
UNIT = 1.0 * TIMEOUT_FACTOR  # one "second" of test time


def scaled(seconds: float) -> float:
    """A deadline in seconds, stretched by the suite's timeout factor."""
    return seconds * TIMEOUT_FACTOR


def _describe(condition: Callable[[], object]) -> str:
    return getattr(condition, "__qualname__", repr(condition))


def wait_until(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> object:
    """Block until ``condition()`` is truthy; raise AssertionError naming it at the deadline."""
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition {_describe(condition)} not met within {scaled(timeout):.2f}s (last: {last!r})"
            )
        time.sleep(interval)


async def eventually(
    condition: Callable[[], object | Awaitable[object]], timeout: float = 5.0, interval: float = 0.01
) -> object:
    """Await until ``condition()`` (sync or async) is truthy, with a scaled deadline."""
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    while True:
        result = condition()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"condition {_describe(condition)} not met within {scaled(timeout):.2f}s (last: {last!r})"
            )
        await asyncio.sleep(interval)
