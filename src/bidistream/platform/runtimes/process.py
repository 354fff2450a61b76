"""The ``process`` runtime: each instance is a supervised local process.

Each instance gets a free port on 127.0.0.1 (passed as ``SAGEMAKER_BIND_TO_PORT``
and, for bidistream's own server, ``--port``) and its own log file in the data
dir, so a FailureReason can quote what the instance said before it died.  The
child runs in its own process group: stopping an instance signals that group,
which also reaches whatever a ``cmd:`` server forked, and nothing else.

Instances must not outlive the gateway.  Each child asks the kernel for
SIGTERM when the gateway dies (``PR_SET_PDEATHSIG``, Linux; SIGTERM rather
than SIGKILL so ``docker run`` forwards it to its container and a ``cmd:``
server can stop what it forked).  That cannot cover a child that ignores
SIGTERM, a grandchild, or another OS, so every instance's PID and kernel start
time are also written to the store (a :class:`ProcessLedger`) and, on the next
start, :meth:`ProcessRuntime.reap_orphans` stops the groups a dead gateway
left behind before a new set is launched.  Orphans are reaped, not adopted:
their sessions died with the gateway that held the client connections, and a
fresh instance is one the new gateway can wait on and read the exit code of.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bidistream.errors import ModelError
from bidistream.platform.runtimes import LaunchSpec, identity_env, tail
from bidistream.platform.store import ProcessRow
from bidistream.ports import free_port

__all__ = ["ProcessInstance", "ProcessLedger", "ProcessRuntime", "free_port", "start_ticks"]

log = logging.getLogger("bidistream.platform.process")

_PR_SET_PDEATHSIG = 1
try:
    # Resolved here, in the parent: a forked child should not load libraries.
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec hook: SIGTERM this child when ``parent`` dies (checked once, against a race)."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the gateway died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of the whole line


def _group(pgid: int, since: int) -> list[int]:
    """Live processes in process group ``pgid`` started at or after tick ``since``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or fields[0] == "Z" or int(fields[2]) != pgid or int(fields[19]) < since:
            continue
        members.append(int(entry))
    return members


class ProcessLedger(Protocol):
    """Where instance PIDs are written (the platform's store)."""

    def record_process(self, row: ProcessRow) -> None: ...

    def forget_process(self, instance_id: str, pid: int) -> None: ...

    def list_processes(self) -> list[ProcessRow]: ...


# Port the server listens on inside an OCI container (the SageMaker contract).
CONTAINER_PORT = 8080


class ProcessInstance:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        base_url: str,
        log_path: Path,
        forget: Callable[[], None] | None = None,
        grpc_address: str = "",
    ) -> None:
        self.proc = proc
        self.base_url = base_url
        self.grpc_address = grpc_address
        self.log_path = log_path
        self.pid = proc.pid
        self._forget = forget  # drops the store's record once the process has exited

    def exited(self) -> bool:
        return self.proc.returncode is not None

    def _exited(self) -> None:
        forget, self._forget = self._forget, None
        if forget is not None:
            forget()

    async def wait_exit(self) -> int | None:
        code = await self.proc.wait()
        self._exited()
        return code

    def _signal(self, sig: int) -> None:
        # The child leads its own group (start_new_session), so the group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> None:
        if self.exited():
            self._exited()
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=grace)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self.proc.wait()
        self._exited()

    def kill(self) -> None:
        """Hard kill (tests use it to simulate a crash)."""
        self._signal(signal.SIGKILL)

    async def last_log_lines(self, count: int = 20) -> str:
        return tail(self.log_path, count)


class ProcessRuntime:
    """Instances as child processes of the gateway."""

    name = "process"

    def __init__(
        self, host: str = "127.0.0.1", docker: str = "docker", ledger: ProcessLedger | None = None
    ) -> None:
        self.host = host
        self.docker = docker
        self.ledger = ledger
        self._me = os.getpid()
        self._my_ticks = start_ticks(self._me) or 0

    async def launch(self, spec: LaunchSpec) -> ProcessInstance:
        port = free_port(self.host)
        env = dict(os.environ)
        env.update(spec.environment)
        env.update(identity_env(spec))
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        # Each instance its own V2 gRPC port: two instances on one machine must never both ask
        # for the default 8081 (the second would serve without gRPC, or not at all).
        if "SAGEMAKER_GRPC_PORT" not in spec.environment:
            env["SAGEMAKER_GRPC_PORT"] = str(free_port(self.host))
        # The gateway's gRPC relay target; a container's port is not published on the host.
        grpc_address = f"{self.host}:{env['SAGEMAKER_GRPC_PORT']}" if spec.image.kind != "oci" else ""
        if spec.image.kind == "oci":
            argv = await self._docker_argv(spec, port)
        else:
            argv = spec.image.argv(host=self.host, port=port, env=env)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = spec.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.write(f"--- {stamp} bidistream starts instance {spec.instance_id}: {argv}\n".encode())
        log.flush()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with(self._me),
            )
        except OSError as exc:
            raise ModelError(
                f"cannot start instance {spec.instance_id} of image {spec.image.image!r}: "
                f"{exc.strerror or exc} ({argv[0]})",
                code="InstanceStartFailed",
            ) from exc
        finally:
            log.close()
        return ProcessInstance(
            proc,
            f"http://{self.host}:{port}",
            spec.log_path,
            self._record(
                spec, proc.pid, f"bidistream-{spec.instance_id}" if spec.image.kind == "oci" else None
            ),
            grpc_address=grpc_address,
        )

    def _record(self, spec: LaunchSpec, pid: int, container: str | None) -> Callable[[], None] | None:
        """Write the new instance's PID to the ledger; return what forgets it."""
        ledger = self.ledger
        ticks = start_ticks(pid)
        if ledger is None or ticks is None:
            return None
        ledger.record_process(
            ProcessRow(spec.instance_id, pid, ticks, self._me, self._my_ticks, container, time.time())
        )
        instance_id = spec.instance_id
        return lambda: ledger.forget_process(instance_id, pid)

    async def reap_orphans(self, grace: float = 5.0) -> list[ProcessRow]:
        """Stop the instance processes a dead gateway left running, before starting new ones.

        A row whose gateway still runs (another ``bidistream run`` on the same
        data dir) is left alone; a row whose PID now names another process (a
        different start time) is only forgotten.  Each orphan's whole process
        group gets SIGTERM, then SIGKILL after ``grace``; an orphaned container
        is removed.  Returns the rows that were reaped.
        """
        ledger = self.ledger
        if ledger is None:
            return []
        orphans: list[ProcessRow] = []
        for row in ledger.list_processes():
            if row.owner_pid == self._me and row.owner_start_ticks == self._my_ticks:
                continue  # ours
            if start_ticks(row.owner_pid) == row.owner_start_ticks:
                continue  # its gateway is alive
            leader = start_ticks(row.pid)
            if leader is None or leader == row.start_ticks:
                if _group(row.pid, row.start_ticks) or row.container is not None:
                    orphans.append(row)
            ledger.forget_process(row.instance_id, row.pid)
        if not orphans:
            return []
        log.warning(
            "stopping %d instance process(es) left by a gateway that died: %s",
            len(orphans),
            ", ".join(f"{r.instance_id} (pid {r.pid})" for r in orphans),
        )
        for row in orphans:
            for member in _group(row.pid, row.start_ticks):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGTERM)
            if row.container is not None:
                await self._remove_container(row.container)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group(r.pid, r.start_ticks) for r in orphans):  # noqa: ASYNC110 (non-children: nothing to wait on but /proc)
            await asyncio.sleep(0.05)
        for row in orphans:
            for member in _group(row.pid, row.start_ticks):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(member, signal.SIGKILL)
        return orphans

    async def _remove_container(self, name: str) -> None:
        if shutil.which(self.docker) is None:
            return
        with contextlib.suppress(OSError, TimeoutError):
            proc = await asyncio.create_subprocess_exec(
                self.docker,
                "rm",
                "-f",
                name,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.wait_for(proc.wait(), timeout=10)

    async def _docker_argv(self, spec: LaunchSpec, port: int) -> list[str]:
        reason = await docker_unreachable(self.docker)
        if reason is not None:
            raise ModelError(
                f"image {spec.image.image!r} is an OCI image and needs a Docker engine, but {reason}. "
                "Start Docker, or use bidistream/echo, python:package.module:Class or cmd:<command>.",
                code="DockerUnavailable",
            )
        argv = [self.docker, "run", "--rm", "--name", f"bidistream-{spec.instance_id}"]
        argv += ["-p", f"{self.host}:{port}:{CONTAINER_PORT}"]
        for key, value in {**spec.environment, **identity_env(spec)}.items():
            argv += ["-e", f"{key}={value}"]
        argv += ["-e", f"SAGEMAKER_BIND_TO_PORT={CONTAINER_PORT}", spec.image.image, "serve"]
        return argv

    async def close(self) -> None:
        return None


async def docker_unreachable(docker: str = "docker") -> str | None:
    """None when a Docker engine answers; otherwise why not, in words for a FailureReason."""
    if shutil.which(docker) is None:
        return "no docker command is installed"
    try:
        proc = await asyncio.create_subprocess_exec(
            docker,
            "version",
            "--format",
            "{{.Server.Version}}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    except (OSError, TimeoutError) as exc:
        return f"the docker command failed ({exc})"
    if proc.returncode != 0:
        detail = (err or out).decode("utf-8", "replace").strip().splitlines()
        return "no Docker engine is reachable" + (f" ({detail[-1]})" if detail else "")
    return None
