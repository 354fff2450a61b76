"""Instances do not outlive a SIGKILLed gateway, and a restart runs one set, not two (issue 10.6).

``bidistream run`` runs as a user starts it; the test finds its instance
processes in /proc (children of the gateway and their process groups), kills
the gateway with SIGKILL (no cleanup code runs) and watches what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bidistream.platform.app import STORE_FILE
from bidistream.platform.store import Store
from tests.boto import boto_client
from tests.conftest import free_port
from tests.integration.platform_helpers import production_variants
from tests.integration.test_platform_run import _start
from tests.support.waiting import scaled, wait_until


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def _children(ppid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := _stat(int(entry))) is not None and f[0] != "Z" and int(f[1]) == ppid:
            out.add(int(entry))
    return out


def _group(pgid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := _stat(int(entry))) is not None and f[0] != "Z" and int(f[2]) == pgid:
            out.add(int(entry))
    return out


def _cleanup(groups: set[int]) -> None:
    """Only ever the process groups this test's gateways started."""
    for pgid in groups:
        for pid in _group(pgid):
            os.kill(pid, signal.SIGKILL)


def _sigkill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=scaled(10))


def _instances(gateway: int, count: int) -> set[int]:
    wait_until(lambda: len(_children(gateway)) >= count, timeout=30)
    return _children(gateway)


def test_sigkilled_gateway_takes_its_instances_along(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc, _ = _start(data_dir, free_port())
    groups: set[int] = set()
    try:
        children = _instances(proc.pid, 2)  # echo and words
        groups |= children
        ticks = {pid: int(f[19]) for pid in children if (f := _stat(pid)) is not None}
        _sigkill(proc)
        wait_until(lambda: not any(_group(g) for g in groups), timeout=15)
        # The store kept what a restart needs to find such orphans: PIDs and start times.
        store = Store(data_dir / STORE_FILE)
        recorded = {r.pid: r.start_ticks for r in store.list_processes()}
        store.close()
        assert recorded == ticks
    finally:
        if proc.poll() is None:
            _sigkill(proc)
        _cleanup(groups)


def test_restart_reaps_orphans_and_runs_one_set(tmp_path: Path) -> None:
    """An instance that shrugs off SIGTERM survives its gateway's death; the next start stops it."""
    data_dir = tmp_path / "data"
    marker = tmp_path / "ignore-sigterm"
    marker.touch()
    port = free_port()
    # sh ignores SIGTERM while the marker exists (so the parent-death signal cannot stop it),
    # and keeps waiting for its model server, which runs in its process group.
    script = (
        f"trap 'test -e {marker} || exit 0' TERM; "
        f"{sys.executable} -m bidistream.cli serve echo --host 127.0.0.1 --port $SAGEMAKER_BIND_TO_PORT & "
        "while kill -0 $! 2>/dev/null; do wait; done"
    )
    groups: set[int] = set()
    proc, _ = _start(data_dir, port)
    second: subprocess.Popen[str] | None = None
    try:
        sm = boto_client("sagemaker", f"https://127.0.0.1:{port}", data_dir / "ca.pem")
        sm.create_model(
            ModelName="stubborn-model",
            PrimaryContainer={"Image": f'cmd:sh -c "{script}"'},
        )
        sm.create_endpoint_config(
            EndpointConfigName="stubborn-config", ProductionVariants=production_variants("stubborn")
        )
        sm.create_endpoint(EndpointName="stubborn", EndpointConfigName="stubborn-config")
        wait_until(
            lambda: sm.describe_endpoint(EndpointName="stubborn")["EndpointStatus"] == "InService",
            timeout=40,
        )
        first_set = _instances(proc.pid, 3)  # echo, words, stubborn
        groups |= first_set
        _sigkill(proc)
        # The parent-death signal stops the ordinary instances...
        wait_until(lambda: sum(1 for g in first_set if _group(g)) == 1, timeout=15)
        # (all were signalled at once: with the others gone, the stubborn one has shrugged it off)
        (orphan,) = [g for g in first_set if _group(g)]

        second, _ = _start(data_dir, port)
        # ...and the restart stops the one that ignored it, before a new set runs.
        wait_until(lambda: not _group(orphan), timeout=15)
        second_set = _instances(second.pid, 3)
        groups |= second_set
        assert not second_set & first_set
        live = {g for g in first_set | second_set if _group(g)}
        assert live == second_set, "exactly one set of instances runs after the restart"
    finally:
        marker.unlink(missing_ok=True)
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=scaled(30))
                except subprocess.TimeoutExpired:
                    _sigkill(p)
        _cleanup(groups)
