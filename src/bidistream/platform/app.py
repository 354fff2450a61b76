"""One call that wires the platform for the gateway: store + runtime + manager + control API.

The gateway only needs ``platform.router`` (where sessions go) and
``platform.control_plane`` (what answers ``X-Amz-Target: SageMaker.*`` and
``AnyScaleFrontendService.*``, Application Auto Scaling), and
to ``await start()`` / ``await stop()`` around its own lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bidistream.errors import InputValidationError
from bidistream.platform.autoscaler import Autoscaler, AutoscalerLimits
from bidistream.platform.autoscaling import AutoscalingApi, ControlPlanes
from bidistream.platform.autoscaling_store import AutoscalingStore
from bidistream.platform.balancer import PlatformRouter
from bidistream.platform.control_api import ControlApi, ControlLimits
from bidistream.platform.datadir import DataDirLock, acquire
from bidistream.platform.manager import EndpointManager, ManagerLimits
from bidistream.platform.runtimes import Runtime
from bidistream.platform.store import Store

__all__ = ["Platform", "build_platform"]

STORE_FILE = "bidistream.sqlite3"


@dataclass(eq=False)
class Platform:
    store: Store
    runtime: Runtime
    manager: EndpointManager
    sagemaker: ControlApi
    data_dir: Path
    autoscaling: AutoscalingApi
    autoscaler: Autoscaler
    control_plane: ControlPlanes
    lock: DataDirLock | None = None

    @property
    def router(self) -> PlatformRouter:
        return self.manager.router

    async def start(self) -> None:
        """Stop what a dead gateway left running, then bring back the endpoints the store says ran."""
        reap = getattr(self.runtime, "reap_orphans", None)
        if reap is not None:
            await reap()
        await self.manager.start()
        await self.autoscaler.start()

    def announce(self, url: str) -> None:
        """Record where the gateway listens, so a second gateway on this data dir can say."""
        if self.lock is not None:
            self.lock.announce(url)

    async def stop(self) -> None:
        """Stop every instance (records stay, so the next start brings them back)."""
        try:
            await self.autoscaler.stop()
            await self.manager.stop()
        finally:
            self.store.close()
            self.autoscaling.store.close()
            if self.lock is not None:
                self.lock.release()


def build_platform(
    data_dir: Path | str,
    runtime: str = "process",
    ray_address: str | None = None,
    *,
    manager_limits: ManagerLimits | None = None,
    control_limits: ControlLimits | None = None,
    ray_resources: dict[str, dict[str, float]] | None = None,
    autoscaler_limits: AutoscalerLimits | None = None,
) -> Platform:
    """Build (not start) the platform on ``data_dir`` with the ``process`` or ``ray`` runtime."""
    data = Path(data_dir)
    lock = acquire(data)  # before the store is opened: a second gateway must change nothing
    store = Store(data / STORE_FILE)
    chosen: Runtime
    if runtime == "process":
        from bidistream.platform.runtimes.process import ProcessRuntime

        chosen = ProcessRuntime(ledger=store)
    elif runtime == "ray":
        from bidistream.platform.runtimes.ray import RayRuntime

        chosen = RayRuntime(address=ray_address, resources=ray_resources, data_dir=data)
    else:
        store.close()
        lock.release()
        raise InputValidationError(f"unknown runtime {runtime!r}: use 'process' or 'ray'")
    manager = EndpointManager(store, chosen, data, manager_limits)
    control = ControlApi(store, manager, limits=control_limits)
    scaling_store = AutoscalingStore(data / STORE_FILE)
    autoscaling = AutoscalingApi(scaling_store, store)
    autoscaler = Autoscaler(scaling_store, store, control, manager, autoscaler_limits)
    autoscaling.on_change = autoscaler.wake
    planes = ControlPlanes({"SageMaker": control, "AnyScaleFrontendService": autoscaling})
    return Platform(store, chosen, manager, control, data, autoscaling, autoscaler, planes, lock)
