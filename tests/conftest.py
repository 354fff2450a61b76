"""Shared fixtures: model servers on real sockets (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from bidistream import ports
from bidistream.container.limits import ServerLimits
from bidistream.container.server import ModelServer
from bidistream.model import Model
from tests.support.waiting import scaled

# Property tests draw the same examples on every run unless asked to explore: a suite that
# found a new example by chance would fail CI by chance.  BIDISTREAM_HYPOTHESIS_PROFILE=explore
# draws fresh examples (run it locally, and turn what it finds into a fixed test).
hypothesis_settings.register_profile("deterministic", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("BIDISTREAM_HYPOTHESIS_PROFILE", "deterministic"))

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@asynccontextmanager
async def running_server(model: Model, **limits: float | int) -> AsyncIterator[ModelServer]:
    """A ModelServer on an ephemeral port, loaded, stopped at the end."""
    server = ModelServer(model, port=0, limits=ServerLimits(**limits))  # type: ignore[arg-type]
    await server.start()
    try:
        await server.wait_loaded(timeout=scaled(30))
        yield server
    finally:
        await server.stop(drain_timeout=0)


def free_port() -> int:
    """Below the ephemeral range (bidistream.ports): a client connection cannot take it first."""
    return ports.free_port("127.0.0.1")


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: ours, with the repo root ahead on PYTHONPATH.

    Existing PYTHONPATH entries are kept (a worktree's ``src`` put there must keep winning over the
    editable install), and the root is added so children can import ``tests.fixtures``.
    """
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: only ever for a process the test started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Output of the child processes the running test started: the report hook below
# attaches it to a failing test's report, and deletes it when the test passed.
_CHILD_LOGS: list[Path] = []
_LOG_TAIL = 64 * 1024


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    cut = data[-_LOG_TAIL:]
    return ("…\n" if len(data) > len(cut) else "") + cut.decode("utf-8", "replace")


@contextmanager
def listening_process(
    cmd: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd``, wait until it listens on ``port``, stop it at the end.

    The child writes stdout and stderr to a log file, never to a pipe nobody
    reads (a chatty child would block at 64 KiB); a failing test prints it."""
    fd, name = tempfile.mkstemp(prefix="bidistream-child-", suffix=".log")
    log_path = Path(name)
    _CHILD_LOGS.append(log_path)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- output of {' '.join(cmd)}:\n{_tail(log_path)}") from exc
        yield proc
    finally:
        stop_process(proc)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for path in _CHILD_LOGS:
            report.sections.append((f"child process output ({path})", _tail(path)))
    if report.when == "teardown":
        failed = report.failed or getattr(item, "_bidistream_failed", False)
        for path in _CHILD_LOGS:
            if not failed:
                path.unlink(missing_ok=True)
        _CHILD_LOGS.clear()
    elif report.failed:
        item._bidistream_failed = True  # type: ignore[attr-defined]


@contextmanager
def serve_process(
    *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``bidistream serve ...`` as a real process; ended by PID at the end."""
    port = port or free_port()
    cmd = [str(BIN / "bidistream"), "serve", *args]
    if "--port" not in args and not (env or {}).get("SAGEMAKER_BIND_TO_PORT"):
        cmd += ["--port", str(port)]
    full_env = {**child_env(), **(env or {})}
    with listening_process(cmd, port, full_env) as proc:
        yield proc, port


@pytest.fixture
def server_factory() -> Callable[..., object]:
    return running_server
