"""What every fuzz module needs: servers on a loop thread, and the leak check.

Hypothesis drives a synchronous test function, so the servers under test
(gateway, model server) live on an event loop in a background thread and
each example's client coroutine is submitted to it.  The same process hosts
both ends, so "nothing outlives its client" is checked on the servers'
own counters (instance sessions, gateway sessions and connections) and on
the process (open fds, loop tasks), each back to its baseline.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from hypothesis import HealthCheck, Phase, settings

from tests.support.waiting import scaled

# Each fuzz test's share of the ~2 minute CI budget (examples, not seconds:
# a loaded machine takes longer, it does not test less).
# A failure stops the search at once and is reported as generated (the grammar
# is small enough to read); BIDISTREAM_FUZZ_SHRINK=1 shrinks it when debugging.
FUZZ = settings(
    max_examples=int(os.environ.get("BIDISTREAM_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if os.environ.get("BIDISTREAM_FUZZ_SHRINK") else []),
)


class LoopThread:
    """An event loop running in a daemon thread; ``run`` blocks until a coroutine finishes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run[T](self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(scaled(timeout))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=scaled(10))
        self.loop.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def task_count() -> int:
    """Tasks alive on the running loop, not counting the one asking."""
    return len(asyncio.all_tasks()) - 1


async def settle(
    checks: dict[str, Callable[[], Awaitable[int] | int]], want: dict[str, int], timeout: float = 5.0
) -> None:
    """Wait until every counter is back at (or below) its baseline; name the ones that are not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while True:
        now: dict[str, int] = {}
        for name, check in checks.items():
            value = check()
            now[name] = await value if isinstance(value, Awaitable) else value
        over = {k: (now[k], want[k]) for k in want if now[k] > want[k]}
        if not over:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"outlived their client (now, baseline): {over}")
        await asyncio.sleep(0.02)
