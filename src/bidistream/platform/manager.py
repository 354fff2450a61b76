"""The endpoint manager: turns store records into running instances and keeps them healthy.

It owns the asyncio side of the platform.  The control API writes records and
status in the store, then asks the manager to *deploy*, *redeploy* or *remove*
an endpoint; each of those runs as one background task per endpoint, so the
API answers at once (``Creating``, ``Updating``, ``Deleting``) as SageMaker does
and boto3's waiters see the status move.

Endpoint status (``EndpointStatus``), as a table of who moves it::

    Creating ──all instances answer /ping──► InService
    Creating ──an instance dies / times out─► Failed      (FailureReason: last log lines)
    InService ─UpdateEndpoint*─────────────► Updating ──► InService
    Updating ──new instances fail──────────► InService   (FailureReason says the update failed)
    any ───────DeleteEndpoint──────────────► Deleting ──► gone
    (gateway restart) InService/Creating/Updating ─► SystemUpdating ──► InService

Instance states, in the same spirit::

    starting ─/ping 200─► healthy ─crash or N failed pings─► restarting ─► healthy
    healthy ──scale in──► draining ─no live session or drain limit─► stopped

Only ``healthy`` instances are routable.  A draining instance finishes its live
sessions first; when the drain limit runs out it gets SIGTERM, and the model
server closes what is left with 1001 (a close reason, never a cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from bidistream import metrics
from bidistream.errors import BidistreamError
from bidistream.platform.balancer import PlatformRouter, RoutableVariant
from bidistream.platform.images import ImageSpec, parse_image
from bidistream.platform.runtimes import InstanceHandle, LaunchSpec, Runtime
from bidistream.platform.store import InstanceRow, Store
from bidistream.routing import RoutableInstance

log = logging.getLogger("bidistream.platform")

__all__ = [
    "EndpointManager",
    "Instance",
    "InstanceFailed",
    "InstanceState",
    "ManagerLimits",
    "VariantPlan",
    "plans_from_doc",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerLimits:
    # Seconds between /ping polls of a healthy instance.
    health_interval: float = 2.0
    # One /ping must answer within this.
    ping_timeout: float = 2.0
    # Consecutive failed pings before a live instance is restarted.
    unhealthy_after: int = 3
    # Startup health-check timeout when the variant sets none (SageMaker's default).
    startup_timeout: float = 600.0
    # A removed instance keeps its live sessions this long before it is stopped.
    drain_timeout: float = 300.0
    # SIGTERM → SIGKILL grace; the model server drains its own sessions inside it.
    stop_grace: float = 30.0
    # Waits between attempts when a crashed instance will not come back.
    restart_backoff: float = 1.0
    restart_backoff_max: float = 30.0
    # Log lines quoted in a FailureReason (SageMaker caps FailureReason at 1024 chars).
    failure_log_lines: int = 12
    failure_reason_max: int = 1024
    # How often the live view for `bidistream endpoints` is written, at most / at least.
    publish_interval: float = 1.0
    heartbeat_interval: float = 3.0


class InstanceState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class VariantPlan:
    """One production variant as deployed: the resolved model plus count and weight."""

    name: str
    model_name: str
    image: str
    environment: dict[str, str]
    instance_type: str
    instance_count: int
    weight: float
    startup_timeout: float | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "VariantName": self.name,
            "ModelName": self.model_name,
            "Image": self.image,
            "Environment": self.environment,
            "InstanceType": self.instance_type,
            "InstanceCount": self.instance_count,
            "Weight": self.weight,
            "StartupTimeout": self.startup_timeout,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VariantPlan:
        return cls(
            name=doc["VariantName"],
            model_name=doc["ModelName"],
            image=doc["Image"],
            environment=dict(doc.get("Environment") or {}),
            instance_type=doc.get("InstanceType") or "ml.m5.large",
            instance_count=int(doc["InstanceCount"]),
            weight=float(doc["Weight"]),
            startup_timeout=doc.get("StartupTimeout"),
        )

    def same_container(self, other: VariantPlan) -> bool:
        return (self.image, self.environment, self.instance_type, self.model_name) == (
            other.image,
            other.environment,
            other.instance_type,
            other.model_name,
        )


@dataclass(eq=False)
class Instance:
    instance_id: str
    endpoint: str
    variant: str
    launch: LaunchSpec
    state: InstanceState = InstanceState.STARTING
    handle: InstanceHandle | None = None
    routable: RoutableInstance | None = None
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Variant:
    plan: VariantPlan
    image: ImageSpec
    instances: list[Instance] = field(default_factory=list)
    deployed_at: float = field(default_factory=time.time)

    def healthy(self) -> list[Instance]:
        return [i for i in self.instances if i.state is InstanceState.HEALTHY]


@dataclass(eq=False)
class _Endpoint:
    name: str
    variants: dict[str, _Variant] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    draining: list[Instance] = field(default_factory=list)


class InstanceFailed(Exception):
    """An instance did not become healthy; ``reason`` is FailureReason-ready."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EndpointManager:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        data_dir: Path,
        limits: ManagerLimits | None = None,
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.data_dir = Path(data_dir)
        self.limits = limits or ManagerLimits()
        self._endpoints: dict[str, _Endpoint] = {}
        self._http: aiohttp.ClientSession | None = None
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._on_status = on_status
        self.router = PlatformRouter(self._routable, on_change=self._dirty.set)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Open the health-check client and bring back what the store says should run."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.limits.ping_timeout))
        self._publisher = asyncio.create_task(self._publish_loop(), name="platform-publish")
        self.store.replace_instances([])
        for record in self.store.list_endpoints():
            if record.status == "Deleting":
                self.remove(record.name)
            elif record.status in ("InService", "Creating", "Updating", "SystemUpdating"):
                plans = record.doc.get("pending") or record.doc.get("deployment") or []
                resumed = "Creating" if record.status == "Creating" else "SystemUpdating"
                self.store.update_endpoint(record.name, status=resumed, modified=record.modified)
                restored = [VariantPlan.from_doc(p) for p in plans]
                self._run(record.name, self._create(record.name, restored, keep_modified=True))

    async def stop(self) -> None:
        """Stop every instance (each drains its sessions inside ``stop_grace``); records stay."""
        tasks = [e.task for e in self._endpoints.values() if e.task is not None]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        everything = [i for e in self._endpoints.values() for i in self._all_instances(e)]
        await asyncio.gather(*(self._stop_instance(i, self.limits.stop_grace) for i in everything))
        self._endpoints.clear()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        self._publish_now()
        with contextlib.suppress(Exception):
            self.store.set_meta("heartbeat", "0")  # stopped: nothing runs any more
        if self._http is not None:
            await self._http.close()
        await self.runtime.close()

    def deploy(self, name: str, plans: list[VariantPlan]) -> None:
        """Start a new endpoint (its record exists with status Creating)."""
        self._run(name, self._create(name, plans))

    def redeploy(self, name: str, plans: list[VariantPlan]) -> None:
        """Move a running endpoint to ``plans`` (its record says Updating)."""
        self._run(name, self._update(name, plans))

    def remove(self, name: str) -> None:
        """Stop an endpoint's instances, then drop its record (status Deleting)."""
        endpoint = self._endpoints.setdefault(name, _Endpoint(name))
        previous = endpoint.task
        if previous is not None and not previous.done():
            previous.cancel()
        endpoint.task = asyncio.create_task(self._delete(name, previous), name=f"delete-{name}")

    def variants_view(self, name: str) -> list[dict[str, Any]] | None:
        """ProductionVariants for DescribeEndpoint from what runs now (None if nothing runs)."""
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return None
        out: list[dict[str, Any]] = []
        for variant in endpoint.variants.values():
            out.append(
                {
                    "VariantName": variant.plan.name,
                    "DeployedImages": [
                        {
                            "SpecifiedImage": variant.plan.image,
                            "ResolvedImage": variant.plan.image,
                            "ResolutionTime": variant.deployed_at,
                        }
                    ],
                    "CurrentWeight": variant.plan.weight,
                    "DesiredWeight": variant.plan.weight,
                    "CurrentInstanceCount": len(variant.healthy()),
                    "DesiredInstanceCount": variant.plan.instance_count,
                }
            )
        return out

    def instances(self, name: str) -> list[Instance]:
        endpoint = self._endpoints.get(name)
        return [] if endpoint is None else self._all_instances(endpoint)

    # --------------------------------------------------------------- routing
    def _routable(self, name: str) -> list[RoutableVariant] | None:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            record = self.store.get_endpoint(name)
            return None if record is None else []
        return [
            RoutableVariant(v.plan.name, v.plan.weight, [i.routable for i in v.healthy() if i.routable])
            for v in endpoint.variants.values()
        ]

    # ----------------------------------------------------------------- flows
    def _run(self, name: str, coro: Any) -> None:
        endpoint = self._endpoints.setdefault(name, _Endpoint(name))
        previous = endpoint.task
        if previous is not None and not previous.done():
            previous.cancel()
        endpoint.task = asyncio.create_task(coro, name=f"endpoint-{name}")

    async def _create(self, name: str, plans: list[VariantPlan], keep_modified: bool = False) -> None:
        # A restart is not a user's modification: LastModifiedTime stays what it was.
        record = self.store.get_endpoint(name)
        modified = record.modified if keep_modified and record is not None else None
        endpoint = self._endpoints[name]
        try:
            for plan in plans:
                endpoint.variants[plan.name] = _Variant(plan, parse_image(plan.image))
            starts = [
                self._start_new(endpoint, variant)
                for variant in endpoint.variants.values()
                for _ in range(variant.plan.instance_count)
            ]
            results = await asyncio.gather(*starts, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
        except InstanceFailed as exc:
            await self._stop_all(endpoint)
            self._set_status(name, "Failed", failure=exc.reason, modified=modified)
            return
        except BidistreamError as exc:
            await self._stop_all(endpoint)
            self._set_status(name, "Failed", failure=self._clip(exc.message), modified=modified)
            return
        except Exception as exc:  # a bug must not leave the endpoint Creating forever
            log.exception("endpoint creation crashed", extra={"endpoint": name})
            await self._stop_all(endpoint)
            self._set_status(
                name, "Failed", failure=self._clip(f"internal error: {exc!r}"), modified=modified
            )
            return
        self._set_status(name, "InService", clear_failure=True, modified=modified)

    async def _update(self, name: str, plans: list[VariantPlan]) -> None:
        endpoint = self._endpoints.setdefault(name, _Endpoint(name))
        new_variants: dict[str, _Variant] = {}
        started: list[Instance] = []
        retired: list[Instance] = []
        try:
            for plan in plans:
                old = endpoint.variants.get(plan.name)
                if old is not None and old.plan.same_container(plan):
                    variant = _Variant(plan, old.image, list(old.instances), old.deployed_at)
                    extra = plan.instance_count - len(variant.instances)
                    for _ in range(max(0, extra)):
                        started.append(await self._start_new(endpoint, variant, attach=False))
                    if extra < 0:
                        # Retire the least busy instances first, so drains end soonest.
                        by_load = sorted(
                            variant.instances, key=lambda i: i.routable.live_sessions if i.routable else 0
                        )
                        retired += by_load[:-extra]
                        variant.instances = [i for i in variant.instances if i not in retired]
                else:
                    variant = _Variant(plan, parse_image(plan.image))
                    for _ in range(plan.instance_count):
                        started.append(await self._start_new(endpoint, variant, attach=False))
                    if old is not None:
                        retired += old.instances
                new_variants[plan.name] = variant
        except Exception as exc:  # includes InstanceFailed and BidistreamError
            reason = exc.reason if isinstance(exc, InstanceFailed) else str(exc)
            await asyncio.gather(*(self._stop_instance(i, self.limits.stop_grace) for i in started))
            self._finish_update(name, None)
            self._set_status(name, "InService", failure=self._clip(f"Update failed: {reason}"))
            return
        for old_name, old in endpoint.variants.items():
            if old_name not in new_variants:
                retired += old.instances
        for variant in new_variants.values():
            variant.instances = [i for i in variant.instances if i not in retired]
            for instance in variant.instances:
                if instance in started:
                    instance.supervisor = asyncio.create_task(self._supervise(instance, variant))
        endpoint.variants = new_variants
        for instance in retired:
            self._drain(endpoint, instance)
        self._finish_update(name, plans)
        self._set_status(name, "InService", clear_failure=True)

    def _finish_update(self, name: str, plans: list[VariantPlan] | None) -> None:
        """Make ``plans`` the deployment, or (None) roll the record back to what still runs."""
        record = self.store.get_endpoint(name)
        if record is None:
            return
        doc = dict(record.doc)
        doc.pop("pending", None)
        previous = doc.pop("previous_config", None)
        if plans is not None:
            doc["deployment"] = [p.to_doc() for p in plans]
            self.store.update_endpoint(name, doc=doc)
        else:
            self.store.update_endpoint(name, doc=doc, config_name=previous or record.config_name)

    async def _delete(self, name: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            await self._stop_all(endpoint)
        self._endpoints.pop(name, None)
        self.store.delete_endpoint(name)
        self._dirty.set()
        log.info("endpoint deleted", extra={"endpoint": name})

    # -------------------------------------------------------------- instances
    async def _start_new(self, endpoint: _Endpoint, variant: _Variant, attach: bool = True) -> Instance:
        suffix = secrets.token_hex(3)
        instance_id = f"{endpoint.name}-{variant.plan.name}-{suffix}"
        launch = LaunchSpec(
            endpoint=endpoint.name,
            variant=variant.plan.name,
            instance_id=instance_id,
            image=variant.image,
            instance_type=variant.plan.instance_type,
            log_path=self.data_dir / "logs" / endpoint.name / f"{variant.plan.name}-{suffix}.log",
            environment=variant.plan.environment,
        )
        instance = Instance(instance_id, endpoint.name, variant.plan.name, launch)
        variant.instances.append(instance)
        self._dirty.set()
        try:
            await self._boot(instance, self._startup_timeout(variant))
        except BaseException:
            await self._stop_instance(instance, 1.0)
            raise
        if attach:
            instance.supervisor = asyncio.create_task(self._supervise(instance, variant))
        return instance

    def _startup_timeout(self, variant: _Variant) -> float:
        return float(variant.plan.startup_timeout or self.limits.startup_timeout)

    async def _boot(self, instance: Instance, timeout: float) -> None:
        """Launch and wait for ``/ping`` 200; raise InstanceFailed with the log tail."""
        instance.state = InstanceState.STARTING
        try:
            handle = await self.runtime.launch(instance.launch)
        except BidistreamError as exc:
            raise InstanceFailed(self._clip(exc.message)) from exc
        instance.handle = handle
        deadline = time.monotonic() + timeout
        while True:
            if handle.exited():
                code = await handle.wait_exit()
                raise InstanceFailed(
                    await self._failure(instance, f"exited with code {code} before answering /ping")
                )
            if await self._ping(handle.base_url):
                break
            if time.monotonic() >= deadline:
                raise InstanceFailed(
                    await self._failure(
                        instance,
                        f"did not answer /ping with 200 within {timeout:g} s "
                        "(ContainerStartupHealthCheckTimeoutInSeconds)",
                    )
                )
            await asyncio.sleep(0.1)
        instance.routable = RoutableInstance(
            instance.endpoint,
            instance.variant,
            instance.instance_id,
            handle.base_url,
            log_path=str(instance.launch.log_path),
        )
        instance.state = InstanceState.HEALTHY
        self._dirty.set()
        log.info(
            "instance healthy",
            extra={"endpoint": instance.endpoint, "instance": instance.instance_id, "url": handle.base_url},
        )

    async def _failure(self, instance: Instance, what: str) -> str:
        lines = ""
        if instance.handle is not None:
            lines = await instance.handle.last_log_lines(self.limits.failure_log_lines)
        head = f"Instance {instance.instance_id} (variant {instance.variant}) {what}."
        reason = f"{head} Last log lines:\n{lines}" if lines else head
        return self._clip(reason, keep_end=True)

    def _clip(self, text: str, keep_end: bool = False) -> str:
        limit = self.limits.failure_reason_max
        if len(text) <= limit:
            return text
        if keep_end:
            # Keep the headline and the newest log lines; the middle is least useful.
            head = text.split("\n", 1)[0][: limit // 3]
            return head + "\n…" + text[-(limit - len(head) - 2) :]
        return text[: limit - 1] + "…"

    async def _ping(self, base_url: str) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"{base_url}/ping") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _supervise(self, instance: Instance, variant: _Variant) -> None:
        """Poll health; restart a crashed or unhealthy instance until it is retired."""
        failures = 0
        backoff = self.limits.restart_backoff
        while instance.state in (InstanceState.HEALTHY, InstanceState.RESTARTING):
            handle = instance.handle
            assert handle is not None
            exit_wait = asyncio.ensure_future(handle.wait_exit())
            try:
                await asyncio.wait({exit_wait}, timeout=self.limits.health_interval)
            finally:
                exit_wait.cancel()
            if instance.state is not InstanceState.HEALTHY:
                return
            if handle.exited():
                why = f"exited with code {await handle.wait_exit()}"
            elif await self._ping(handle.base_url):
                failures = 0
                continue
            else:
                failures += 1
                if failures < self.limits.unhealthy_after:
                    continue
                why = f"failed {failures} health checks in a row"
            log.warning(
                "instance unhealthy; restarting",
                extra={"endpoint": instance.endpoint, "instance": instance.instance_id, "why": why},
            )
            instance.state = InstanceState.RESTARTING
            self._dirty.set()
            await self._stop_instance(instance, 1.0, final=False)
            while instance.state is InstanceState.RESTARTING:
                try:
                    await self._boot(instance, self._startup_timeout(variant))
                except InstanceFailed as exc:
                    log.warning("restart failed", extra={"instance": instance.instance_id, "why": exc.reason})
                    await self._stop_instance(instance, 1.0, final=False)
                    instance.state = InstanceState.RESTARTING
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.limits.restart_backoff_max)
                    continue
                instance.restarts += 1
                metrics.INSTANCE_RESTARTS.labels(
                    instance.endpoint, instance.variant, instance.instance_id
                ).inc()
                backoff = self.limits.restart_backoff
                failures = 0

    def _drain(self, endpoint: _Endpoint, instance: Instance) -> None:
        instance.state = InstanceState.DRAINING
        endpoint.draining.append(instance)
        self._dirty.set()

        async def drain() -> None:
            deadline = time.monotonic() + self.limits.drain_timeout
            while instance.routable is not None and instance.routable.live_sessions > 0:
                if time.monotonic() >= deadline or (instance.handle and instance.handle.exited()):
                    break
                await asyncio.sleep(0.1)
            await self._stop_instance(instance, self.limits.stop_grace)
            with contextlib.suppress(ValueError):
                endpoint.draining.remove(instance)
            self._dirty.set()

        task = asyncio.create_task(drain(), name=f"drain-{instance.instance_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_instance(self, instance: Instance, grace: float, final: bool = True) -> None:
        if final:
            instance.state = InstanceState.STOPPED
            task = instance.supervisor
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        instance.routable = None if final else instance.routable
        if instance.handle is not None:
            try:
                await instance.handle.stop(grace)
            except Exception as exc:
                log.warning(
                    "stopping instance failed", extra={"instance": instance.instance_id, "error": exc}
                )
        self._dirty.set()

    async def _stop_all(self, endpoint: _Endpoint) -> None:
        instances = self._all_instances(endpoint)
        await asyncio.gather(*(self._stop_instance(i, self.limits.stop_grace) for i in instances))
        endpoint.variants.clear()
        endpoint.draining.clear()

    @staticmethod
    def _all_instances(endpoint: _Endpoint) -> list[Instance]:
        out = [i for v in endpoint.variants.values() for i in v.instances]
        return out + [i for i in endpoint.draining if i not in out]

    def _set_status(
        self,
        name: str,
        status: str,
        failure: str | None = None,
        clear_failure: bool = False,
        modified: float | None = None,
    ) -> None:
        try:
            self.store.update_endpoint(
                name, status=status, failure_reason=failure, clear_failure=clear_failure, modified=modified
            )
        except BidistreamError:
            return  # deleted meanwhile
        log.info("endpoint status", extra={"endpoint": name, "status": status})
        if self._on_status is not None:
            self._on_status(name, status)
        self._dirty.set()

    # ------------------------------------------------------------ live view
    async def _publish_loop(self) -> None:
        while True:
            # Wake on a change, or at least every few seconds so the heartbeat
            # tells `bidistream endpoints` that a gateway is alive.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.limits.heartbeat_interval)
            self._dirty.clear()
            self._publish_now()
            await asyncio.sleep(self.limits.publish_interval)

    def _publish_now(self) -> None:
        now = time.time()
        states = [str(s) for s in InstanceState]
        for e in self._endpoints.values():
            for i in self._all_instances(e):
                metrics.set_instance_state(i.endpoint, i.variant, i.instance_id, str(i.state), states)
        rows = [
            InstanceRow(
                instance_id=i.instance_id,
                endpoint=i.endpoint,
                variant=i.variant,
                state=str(i.state),
                base_url=i.handle.base_url if i.handle else "",
                live_sessions=i.routable.live_sessions if i.routable else 0,
                restarts=i.restarts,
                log_path=str(i.launch.log_path),
                updated=now,
            )
            for e in self._endpoints.values()
            for i in self._all_instances(e)
        ]
        try:
            self.store.replace_instances(rows)
            self.store.set_meta("heartbeat", f"{now}")
        except Exception as exc:  # the live view is best effort; the endpoints keep running
            log.warning("cannot publish the live view", extra={"error": exc})


def plans_from_doc(doc: dict[str, Any], key: str = "deployment") -> list[VariantPlan]:
    return [VariantPlan.from_doc(p) for p in doc.get(key) or []]
