"""ProcessRuntime.reap_orphans against real processes: what it stops and what it must leave alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bidistream.platform.runtimes.process import ProcessRuntime, start_ticks
from bidistream.platform.store import ProcessRow
from tests.support.waiting import eventually


class Ledger:
    def __init__(self, rows: list[ProcessRow]) -> None:
        self.rows = list(rows)

    def record_process(self, row: ProcessRow) -> None:
        self.rows.append(row)

    def forget_process(self, instance_id: str, pid: int) -> None:
        self.rows = [r for r in self.rows if (r.instance_id, r.pid) != (instance_id, pid)]

    def list_processes(self) -> list[ProcessRow]:
        return list(self.rows)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _sleeper() -> subprocess.Popen[bytes]:
    # Its own group, like an instance; a grandchild in the same group must die too.
    return subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)


def _stubborn() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)


def _ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _row(proc: subprocess.Popen[bytes], owner: int, owner_ticks: int, ticks: int | None = None) -> ProcessRow:
    real = start_ticks(proc.pid)
    assert real is not None
    return ProcessRow(
        f"i-{proc.pid}", proc.pid, real if ticks is None else ticks, owner, owner_ticks, None, time.time()
    )


async def test_reaps_orphans_of_a_dead_gateway_only() -> None:
    orphan, foreign, sibling = _sleeper(), _sleeper(), _sleeper()
    procs = [orphan, foreign, sibling]
    try:
        dead = _dead_pid()
        parent = os.getppid()
        parent_ticks = start_ticks(parent) or 0
        ledger = Ledger(
            [
                _row(orphan, dead, 12345),  # its gateway is gone: reap
                _row(foreign, dead, 12345, ticks=1),  # PID now names a different process: forget only
                _row(sibling, parent, parent_ticks),  # another live gateway's instance: keep
            ]
        )
        runtime = ProcessRuntime(ledger=ledger)
        reaped = await runtime.reap_orphans(grace=2.0)
        assert [r.pid for r in reaped] == [orphan.pid]
        await eventually(lambda: orphan.poll() is not None)
        assert orphan.returncode == -signal.SIGTERM
        assert foreign.poll() is None and sibling.poll() is None
        assert [r.pid for r in ledger.rows] == [sibling.pid]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


async def test_sigterm_ignoring_orphan_gets_sigkill_after_grace() -> None:
    stubborn = _stubborn()
    try:
        await eventually(lambda: _ignores_sigterm(stubborn.pid))
        ledger = Ledger([_row(stubborn, _dead_pid(), 1)])
        await ProcessRuntime(ledger=ledger).reap_orphans(grace=0.5)
        await eventually(lambda: stubborn.poll() is not None)
        assert stubborn.returncode == -signal.SIGKILL
        assert ledger.rows == []
    finally:
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)
        stubborn.wait()
