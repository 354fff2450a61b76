"""Wait for a condition instead of sleeping and hoping.

Every deadline in the suite is a multiple of :data:`UNIT` seconds, scaled by
``BIDISTREAM_TEST_TIMEOUT_FACTOR`` so a slow or loaded machine stretches all of
them at once rather than one test at a time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import IO

TIMEOUT_FACTOR = float(os.environ.get("BIDISTREAM_TEST_TIMEOUT_FACTOR", "1") or "1")
UNIT = 1.0 * TIMEOUT_FACTOR  # one "second" of test time


def scaled(seconds: float) -> float:
    """A deadline in seconds, stretched by the suite's timeout factor."""
    return seconds * TIMEOUT_FACTOR


def waiter_config(seconds: float) -> dict[str, int]:
    """A boto3 waiter's config polling every second for ``seconds`` (scaled) at most."""
    return {"Delay": 1, "MaxAttempts": max(1, round(scaled(seconds)))}


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 20.0) -> bytes:
    """Read a child's pipe until ``marker`` has appeared (scaled deadline); return what was read.

    A port that accepts is not a process that has said it is ready: the gateway listens
    before it prints its ``export SSL_CERT_FILE`` line.
    """
    fd = stream.fileno()
    deadline = time.monotonic() + scaled(timeout)
    seen = b""
    while marker not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"{marker!r} not printed within {scaled(timeout):.2f}s (read: {seen[-500:]!r})"
            )
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"pipe closed before {marker!r} (read: {seen[-500:]!r})")
            seen += chunk
    return seen


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
