"""The ``process`` runtime: each instance is a supervised local process.

Each instance gets a free port on 127.0.0.1 (passed as ``SAGEMAKER_BIND_TO_PORT``
and, for bidistream's own server, ``--port``) and its own log file in the data
dir, so a FailureReason can quote what the instance said before it died.  The
child runs in its own process group: stopping an instance signals that group,
which also reaches whatever a ``cmd:`` server forked, and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from bidistream.errors import ModelError
from bidistream.platform.runtimes import LaunchSpec, identity_env, tail

__all__ = ["ProcessInstance", "ProcessRuntime", "free_port"]

# Port the server listens on inside an OCI container (the SageMaker contract).
CONTAINER_PORT = 8080


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the instance binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ProcessInstance:
    def __init__(self, proc: asyncio.subprocess.Process, base_url: str, log_path: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log_path = log_path
        self.pid = proc.pid

    def exited(self) -> bool:
        return self.proc.returncode is not None

    async def wait_exit(self) -> int | None:
        return await self.proc.wait()

    def _signal(self, sig: int) -> None:
        # The child leads its own group (start_new_session), so the group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self, grace: float) -> None:
        if self.exited():
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=grace)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await self.proc.wait()

    def kill(self) -> None:
        """Hard kill (tests use it to simulate a crash)."""
        self._signal(signal.SIGKILL)

    async def last_log_lines(self, count: int = 20) -> str:
        return tail(self.log_path, count)


class ProcessRuntime:
    """Instances as child processes of the gateway."""

    name = "process"

    def __init__(self, host: str = "127.0.0.1", docker: str = "docker") -> None:
        self.host = host
        self.docker = docker

    async def launch(self, spec: LaunchSpec) -> ProcessInstance:
        port = free_port(self.host)
        env = dict(os.environ)
        env.update(spec.environment)
        env.update(identity_env(spec))
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
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
            )
        except OSError as exc:
            raise ModelError(
                f"cannot start instance {spec.instance_id} of image {spec.image.image!r}: "
                f"{exc.strerror or exc} ({argv[0]})",
                code="InstanceStartFailed",
            ) from exc
        finally:
            log.close()
        return ProcessInstance(proc, f"http://{self.host}:{port}", spec.log_path)

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
