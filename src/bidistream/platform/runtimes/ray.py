"""The ``ray`` runtime: each instance is a Ray actor running the same model server.

This is how bidistream grows past one machine.  The gateway stays the single
front door; each actor is placed by Ray on some node of the cluster, starts
the image there as a child process (exactly what the ``process`` runtime runs,
bound to the node's address), and the gateway reaches it over WebSocket like
any other instance.  The actor is only a supervisor handle: Ray decides the
node from the CPU/GPU request, and killing the actor kills its server.

CPU/GPU per instance come from the ``InstanceType`` (see :func:`resources_for`).
The defaults are deliberately small logical requests so a laptop cluster can
hold a few instances; pass ``resources={"ml.g5.xlarge": {"num_cpus": 4,
"num_gpus": 1}, ...}`` (``bidistream gateway --ray-resources FILE.json``) to
match a real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bidistream.errors import ModelError, ServiceUnavailableError
from bidistream.platform.images import ImageSpec
from bidistream.platform.runtimes import LaunchSpec, identity_env, tail
from bidistream.platform.runtimes.process import free_port

__all__ = ["DEFAULT_SIZE_CPUS", "GPU_FAMILIES", "RayInstance", "RayRuntime", "resources_for"]

# Logical CPUs requested per instance size (a fraction of the real vCPUs, so
# instances share a node the way several small SageMaker instances would).
DEFAULT_SIZE_CPUS: dict[str, float] = {
    "medium": 1,
    "large": 1,
    "xlarge": 2,
    "2xlarge": 4,
    "4xlarge": 8,
    "8xlarge": 16,
    "9xlarge": 16,
    "12xlarge": 24,
    "16xlarge": 32,
    "18xlarge": 32,
    "24xlarge": 48,
    "32xlarge": 64,
    "36xlarge": 64,
    "48xlarge": 96,
}
# Accelerated families and GPUs per size (1 unless listed).
GPU_FAMILIES = {
    "g4dn",
    "g5",
    "g6",
    "g6e",
    "g7",
    "g7e",
    "p3",
    "p4d",
    "p4de",
    "p5",
    "p5e",
    "p5en",
    "p6-b200",
    "p6-b300",
}
_GPUS_BY_SIZE = {"8xlarge": 1, "12xlarge": 4, "16xlarge": 1, "24xlarge": 4, "48xlarge": 8}
_INSTANCE_TYPE = re.compile(r"ml\.([a-z0-9-]+)\.([a-z0-9]+)")


# How long an actor that fits the cluster may take to be placed and start its model server.
PLACEMENT_TIMEOUT = 120.0


def _asks(options: dict[str, float]) -> str:
    return f"{options.get('num_cpus', 1.0):g} CPU / {options.get('num_gpus', 0.0):g} GPU"


def resources_for(
    instance_type: str, overrides: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """``{"num_cpus": …, "num_gpus": …}`` for one instance of ``instance_type``."""
    if overrides and instance_type in overrides:
        return {"num_cpus": 1.0, "num_gpus": 0.0, **overrides[instance_type]}
    match = _INSTANCE_TYPE.fullmatch(instance_type)
    if match is None:
        return {"num_cpus": 1.0, "num_gpus": 0.0}
    family, size = match.groups()
    cpus = float(DEFAULT_SIZE_CPUS.get(size, 1))
    gpus = float(_GPUS_BY_SIZE.get(size, 1)) if family in GPU_FAMILIES else 0.0
    return {"num_cpus": cpus, "num_gpus": gpus}


class _InstanceActor:
    """Runs on a Ray worker: starts and watches one model-server process on that node."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = ""

    def start(self, image: ImageSpec, environment: dict[str, str], log_path: str) -> tuple[str, str]:
        import ray

        host = ray.util.get_node_ip_address()
        port = free_port(host)
        env = dict(os.environ)
        env.update(environment)
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        argv = image.argv(host=host, port=port, env=env)
        path = Path(log_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            log = path.open("ab")
        except OSError:  # the gateway's data dir is not on this node
            path = Path(tempfile.gettempdir()) / "bidistream-instances" / path.name
            path.parent.mkdir(parents=True, exist_ok=True)
            log = path.open("ab")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.write(f"--- {stamp} ray actor on {host} starts: {argv}\n".encode())
        log.flush()
        with log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._log_path = str(path)
        return f"http://{host}:{port}", str(path)

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self, grace: float) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def tail(self, count: int) -> str:
        return tail(Path(self._log_path), count) if self._log_path else ""


class RayInstance:
    def __init__(self, actor: Any, base_url: str, log_path: Path) -> None:
        self.actor = actor
        self.base_url = base_url
        # The gRPC relay does not reach Ray-placed instances (their gRPC port is not reported).
        self.grpc_address = ""
        self.log_path = log_path
        self._exit_code: int | None = None
        self._gone = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        # The actor may live on another node: poll its process (cheap) rather than
        # holding a blocking call open, and treat a lost actor as an exit.
        while True:
            try:
                code = await self.actor.poll.remote()
            except Exception:
                code = -1
            if code is not None:
                self._exit_code = code
                self._gone.set()
                return
            await asyncio.sleep(0.5)

    def exited(self) -> bool:
        return self._gone.is_set()

    async def wait_exit(self) -> int | None:
        await self._gone.wait()
        return self._exit_code

    async def stop(self, grace: float) -> None:
        import ray

        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.actor.stop.remote(grace), timeout=grace + 10)
        with contextlib.suppress(Exception):
            ray.kill(self.actor)
        self._watcher.cancel()
        if not self._gone.is_set():
            self._exit_code = self._exit_code if self._exit_code is not None else -15
            self._gone.set()

    async def kill_server(self) -> None:
        """Hard-kill the model server (tests use it to simulate a crash)."""
        await self.actor.kill.remote()

    async def last_log_lines(self, count: int = 20) -> str:
        try:
            return str(await asyncio.wait_for(self.actor.tail.remote(count), timeout=10))
        except Exception:
            return tail(self.log_path, count)


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class RayRuntime:
    """Instances as Ray actors; ``address`` is ``ray start``'s address (None: RAY_ADDRESS or local)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        resources: dict[str, dict[str, float]] | None = None,
        data_dir: Path | None = None,
        namespace: str = "bidistream",
    ) -> None:
        self.address = address
        self.resources = resources or {}
        self.data_dir = data_dir
        self.namespace = namespace
        self._actor_class: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        async with self._lock:
            if self._actor_class is not None:
                return self._actor_class
            # Ray's core worker prints a stack dump for every SIGTERM the gateway gets (and the
            # gateway gets one to drain and stop); it reads this when its library loads.
            os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
            try:
                import ray
            except ImportError as exc:
                raise ServiceUnavailableError(
                    "the ray runtime needs Ray: pip install 'bidistream[ray]'"
                ) from exc

            def init() -> None:
                if not ray.is_initialized():
                    # ray.init off the main thread warns that it cannot install its own SIGTERM
                    # handler, which is what we want: the gateway owns SIGTERM (it drains sessions).
                    logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())
                    ray.init(
                        address=self.address,
                        namespace=self.namespace,
                        log_to_driver=False,
                        configure_logging=False,
                        include_dashboard=False,
                    )

            try:
                await asyncio.to_thread(init)
            except Exception as exc:
                raise ServiceUnavailableError(
                    f"cannot connect to the Ray cluster at {self.address or 'RAY_ADDRESS'}: {exc}"
                ) from exc
            self._actor_class = ray.remote(max_concurrency=4)(_InstanceActor)  # type: ignore[call-overload]
            return self._actor_class

    async def launch(self, spec: LaunchSpec) -> RayInstance:
        if spec.image.kind == "oci":
            raise ModelError(
                f"image {spec.image.image!r} is an OCI image; the ray runtime runs bidistream images, "
                "python: and cmd: forms only",
                code="UnsupportedImage",
            )
        actor_class = await self._connect()
        options = resources_for(spec.instance_type, self.resources)
        await self._check_placeable(spec, options)
        actor = actor_class.options(name=None, **options).remote()
        try:
            base_url, log_path = await asyncio.wait_for(
                actor.start.remote(
                    spec.image, {**spec.environment, **identity_env(spec)}, str(spec.log_path)
                ),
                timeout=PLACEMENT_TIMEOUT,
            )
        except TimeoutError as exc:
            with contextlib.suppress(Exception):
                import ray

                ray.kill(actor)
            raise ModelError(
                f"Ray did not start instance {spec.instance_id} ({spec.instance_type}, asks "
                f"{_asks(options)}) within {PLACEMENT_TIMEOUT:g} s: the cluster has room on paper "
                "but no node took the actor (busy with other actors, or a node went away)",
                code="InstanceStartFailed",
            ) from exc
        except Exception as exc:
            with contextlib.suppress(Exception):
                import ray

                ray.kill(actor)
            raise ModelError(
                f"Ray could not start instance {spec.instance_id} ({spec.instance_type}, {options}): {exc}",
                code="InstanceStartFailed",
            ) from exc
        return RayInstance(actor, base_url, Path(log_path))

    async def _check_placeable(self, spec: LaunchSpec, options: dict[str, float]) -> None:
        """Fail at once, with the reason, when no node of the cluster could ever hold the instance.

        Ray would otherwise queue the actor forever (and we would wait out the
        placement timeout with nothing to say).
        """
        import ray

        try:
            nodes = await asyncio.to_thread(ray.nodes)
        except Exception:  # the check is advisory: Ray itself still decides
            return
        alive = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
        need_cpu, need_gpu = options.get("num_cpus", 1.0), options.get("num_gpus", 0.0)
        if any(r.get("CPU", 0.0) >= need_cpu and r.get("GPU", 0.0) >= need_gpu for r in alive):
            return
        total_cpu = sum(r.get("CPU", 0.0) for r in alive)
        total_gpu = sum(r.get("GPU", 0.0) for r in alive)
        largest = max(alive, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)), default={})
        nodes_text = f"{len(alive)} node{'s' if len(alive) != 1 else ''}"
        largest_text = f"{largest.get('CPU', 0.0):g} CPU / {largest.get('GPU', 0.0):g} GPU"
        raise ModelError(
            f"the Ray cluster cannot place instance {spec.instance_id}: the instance asks "
            f"{_asks(options)} ({spec.instance_type}), the cluster has {total_cpu:g} CPU / "
            f"{total_gpu:g} GPU on {nodes_text} (largest node {largest_text}). Choose a smaller "
            "InstanceType, add nodes, or map the type to fewer resources (RayRuntime resources).",
            code="InsufficientCapacity",
        )

    async def close(self) -> None:
        if self._actor_class is None:
            return
        import ray

        with contextlib.suppress(Exception):
            await asyncio.to_thread(ray.shutdown)
        self._actor_class = None
