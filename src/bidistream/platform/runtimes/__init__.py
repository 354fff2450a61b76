"""Where instances run: the seam between the endpoint manager and processes or Ray actors.

The manager only starts, watches and stops instances through :class:`Runtime`
and :class:`InstanceHandle`, so the same lifecycle (health, restart, drain)
holds whether an instance is a local process or an actor on a Ray cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bidistream.metrics import InstanceIdentity
from bidistream.platform.images import ImageSpec

__all__ = ["InstanceHandle", "LaunchSpec", "Runtime", "identity_env", "tail"]


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a runtime needs to start one instance."""

    endpoint: str
    variant: str
    instance_id: str
    image: ImageSpec
    instance_type: str
    log_path: Path
    environment: Mapping[str, str] = field(default_factory=dict)


class InstanceHandle(Protocol):
    """One running instance.  ``base_url`` is its model server (``http://host:port``);
    ``grpc_address`` its gRPC port (``host:port``), empty when the runtime cannot reach one."""

    base_url: str
    grpc_address: str
    log_path: Path

    def exited(self) -> bool: ...

    async def wait_exit(self) -> int | None:
        """Return once the instance has stopped, with its exit code when known."""
        ...

    async def stop(self, grace: float) -> None:
        """SIGTERM (the server drains and closes sessions with 1001), then kill after ``grace``."""
        ...

    async def last_log_lines(self, count: int = 20) -> str: ...


class Runtime(Protocol):
    name: str

    async def launch(self, spec: LaunchSpec) -> InstanceHandle:
        """Start an instance; raise ModelError (with a reason a user can act on) if it cannot start."""
        ...

    async def close(self) -> None: ...


def identity_env(spec: LaunchSpec) -> dict[str, str]:
    """The variables an instance labels its metrics and logs with (endpoint, variant, id)."""
    return InstanceIdentity(spec.endpoint, spec.variant, spec.instance_id).environment()


def tail(path: Path, count: int) -> str:
    """The last ``count`` lines of a log file (reads at most 64 KiB from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-count:])
