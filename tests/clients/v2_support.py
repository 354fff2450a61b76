"""Helpers for the V2 client tests: a real ``bidistream serve`` with its ports, and client scripts.

Every gRPC client runs in a child process: MLServer's stubs and tritonclient's
both define package ``inference`` and cannot be imported into one process
(the test process imports neither).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import child_env, free_port, serve_process, wait_for_port
from tests.support.waiting import scaled, wait_until


@dataclass(frozen=True)
class V2Ports:
    proc: subprocess.Popen[bytes]
    http: int
    grpc: int
    triton: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http}"


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def v2_server(*args: str, cwd: Path | None = None) -> Iterator[V2Ports]:
    """``bidistream serve ARGS --grpc-port G --triton-grpc-port T``, ready on all three ports."""
    grpc_port, triton_port = free_port(), free_port()
    extra = ["--grpc-port", str(grpc_port), "--triton-grpc-port", str(triton_port)]
    with _cwd_serve(cwd, *args, *extra) as (proc, port):
        wait_for_port(grpc_port, proc=proc)
        wait_for_port(triton_port, proc=proc)
        # Ready, or gone (a child that could not bind exits: say so at once, not after 30 s).
        wait_until(lambda: proc.poll() is not None or _ready(port), timeout=30)
        if proc.poll() is not None:
            raise RuntimeError(f"bidistream serve {' '.join(args)}: exited {proc.returncode} before ready")
        yield V2Ports(proc, port, grpc_port, triton_port)


@contextmanager
def _cwd_serve(cwd: Path | None, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    if cwd is None:
        with serve_process(*args) as pair:
            yield pair
        return
    import os

    here = Path.cwd()
    os.chdir(cwd)
    try:
        with serve_process(*args) as pair:
            os.chdir(here)
            yield pair
    finally:
        os.chdir(here)


def run_client(script: str, *, cwd: Path | None = None, timeout: float = 60.0) -> str:
    """Run a client script in a fresh interpreter; fail loudly with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )
    assert done.returncode == 0, f"client failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout
