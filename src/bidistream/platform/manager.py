"""The endpoint manager: turns store records into running instances and keeps them healthy.

It owns the asyncio side of the platform.  The control API writes records and
status in the store, then asks the manager to *deploy*, *redeploy* or *remove*
an endpoint; each of those runs as one background task per endpoint, so the
API answers at once (``Creating``, ``Updating``, ``Deleting``) as SageMaker does
and boto3's waiters see the status move.

Endpoint status and instance state move only through the tables in
:mod:`bidistream.platform.states`.  Every move is written at once by
:meth:`EndpointManager._commit`: one store transaction holding the status
change and every instance row it affects, mirrored into memory (what the
router reads) before the store lock is released.  So ``DescribeEndpoint``,
``ListEndpoints``, ``bidistream endpoints`` and the router read one fact: an
endpoint turns ``InService`` in the same transaction that makes its last
instance ``healthy``, and an update's cut-over (new instances healthy, old
ones draining, new deployment, ``InService``) is one transaction too.  Only
live-session counts are coalesced (``publish_interval``).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bidistream import metrics
from bidistream.errors import BidistreamError, EndpointNotReadyError, NotFoundError
from bidistream.platform.balancer import PlatformRouter, RoutableVariant
from bidistream.platform.images import ImageSpec, parse_image
from bidistream.platform.runtimes import InstanceHandle, LaunchSpec, Runtime
from bidistream.platform.states import EndpointEvent, EndpointStatus, InstanceEvent, InstanceState, next_state
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
    # How often live-session counts (the only coalesced part of the live view) are
    # written, at most; the heartbeat is written at least every heartbeat_interval.
    publish_interval: float = 1.0
    heartbeat_interval: float = 3.0


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
    # Instances an update started that are not cut over yet (in the live view as
    # ``starting``, not routable); stopped with the rest if the gateway stops.
    pending: list[Instance] = field(default_factory=list)

    def forget_all(self) -> None:
        self.variants.clear()
        self.pending.clear()
        self.draining.clear()


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
        self.store.replace_instances([])  # nothing runs yet: rows from a previous gateway are stale
        self._publisher = asyncio.create_task(self._publish_loop(), name="platform-publish")
        for record in self.store.list_endpoints():
            if record.status == EndpointStatus.DELETING:
                self.remove(record.name)
            elif record.status in (
                EndpointStatus.IN_SERVICE,
                EndpointStatus.CREATING,
                EndpointStatus.UPDATING,
                EndpointStatus.SYSTEM_UPDATING,
            ):
                plans = record.doc.get("pending") or record.doc.get("deployment") or []
                self._commit(record.name, event=EndpointEvent.RESUME, modified=record.modified)
                restored = [VariantPlan.from_doc(p) for p in plans]
                self._run(record.name, self._create(record.name, restored, keep_modified=True))

    async def stop(self) -> None:
        """Stop every instance (each drains its sessions inside ``stop_grace``); records stay."""
        tasks = [e.task for e in self._endpoints.values() if e.task is not None]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(
                self._stop_many(e.name, self._all_instances(e), self.limits.stop_grace)
                for e in list(self._endpoints.values())
            )
        )
        self._endpoints.clear()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        with contextlib.suppress(Exception):
            self.store.replace_instances([])
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

    def instances(self, name: str) -> list[Instance]:
        endpoint = self._endpoints.get(name)
        return [] if endpoint is None else self._all_instances(endpoint)

    # --------------------------------------------------------------- routing
    def _routable(self, name: str) -> list[RoutableVariant] | None:
        endpoint = self._endpoints.get(name)
        variants = (
            []
            if endpoint is None
            else [
                RoutableVariant(v.plan.name, v.plan.weight, [i.routable for i in v.healthy() if i.routable])
                for v in endpoint.variants.values()
            ]
        )
        if any(v.instances for v in variants):
            return variants
        # Nothing routable (the cold path): a missing endpoint, one still starting, or a Failed one.
        record = self.store.get_endpoint(name)
        if record is None:
            return None
        if record.status == EndpointStatus.FAILED:
            # Permanent until the user acts: say why, and not with a status boto3 retries.
            raise EndpointNotReadyError(
                f"Endpoint {name} is Failed and takes no requests: {record.failure_reason or 'no reason'}"
                " (fix it with UpdateEndpoint, or delete and create it again)"
            )
        return variants

    # ------------------------------------------------------------ one truth
    def _row(self, instance: Instance, state: InstanceState) -> InstanceRow:
        return InstanceRow(
            instance_id=instance.instance_id,
            endpoint=instance.endpoint,
            variant=instance.variant,
            state=str(state),
            base_url=instance.handle.base_url if instance.handle else "",
            live_sessions=instance.routable.live_sessions if instance.routable else 0,
            restarts=instance.restarts,
            log_path=str(instance.launch.log_path),
            updated=time.time(),
        )

    def _commit(
        self,
        name: str,
        *,
        event: EndpointEvent | None = None,
        moves: Sequence[tuple[Instance, InstanceEvent]] = (),
        added: Sequence[Instance] = (),
        apply: Callable[[], object] | None = None,
        **fields: Any,
    ) -> None:
        """Write one state change and every row it moves in one transaction, then mirror it.

        ``moves`` are instance transitions (checked against the instance table
        before anything is written); ``added`` are new instances (``starting``
        rows); ``event`` moves the endpoint status.  ``apply`` and the new
        instance states are applied to memory while the store lock is held, so
        the router (memory) and every store reader change at the same instant.
        If the endpoint's record is gone (deleted meanwhile) the instance rows
        are still written and mirrored.
        """
        planned = [(instance, next_state(instance.state, ev)) for instance, ev in moves]
        upsert = [self._row(i, state) for i, state in planned if state is not InstanceState.STOPPED]
        upsert += [self._row(i, InstanceState.STARTING) for i in added]
        remove = [i.instance_id for i, state in planned if state is InstanceState.STOPPED]

        def mirror() -> None:
            for instance in added:
                _state_metric(instance, InstanceState.STARTING)
            for instance, state in planned:
                instance.state = state
                _state_metric(instance, state)
                if state is InstanceState.STOPPED:
                    instance.routable = None
                    task = instance.supervisor
                    if task is not None and task is not asyncio.current_task():
                        task.cancel()
            if apply is not None:
                apply()

        try:
            record = self.store.commit(
                name, event=event, upsert=upsert, remove=remove, applied=mirror, **fields
            )
        except NotFoundError:
            # The endpoint was deleted meanwhile: its instances still move.
            self.store.commit(name, upsert=upsert, remove=remove, applied=mirror)
            return
        self._dirty.set()
        if event is not None and record is not None:
            log.info("endpoint status", extra={"endpoint": name, "status": record.status})
            if self._on_status is not None:
                self._on_status(name, record.status)

    def _deployment_doc(self, endpoint: _Endpoint, doc: dict[str, Any]) -> dict[str, Any]:
        """The record's document with what now runs as its deployment (pending update folded in)."""
        out = dict(doc)
        out.pop("pending", None)
        out.pop("previous_config", None)
        out["deployment"] = [
            {**v.plan.to_doc(), "DeployedAt": v.deployed_at} for v in endpoint.variants.values()
        ]
        return out

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
        doc = record.doc if record is not None else {}
        endpoint = self._endpoints[name]

        async def bring_up(variant: _Variant) -> None:
            instance = await self._start_new(endpoint, variant)
            others = [i for i in self._all_instances(endpoint) if i is not instance]
            wanted = sum(v.plan.instance_count for v in endpoint.variants.values())
            last = len(others) + 1 == wanted and all(i.state is InstanceState.HEALTHY for i in others)
            # The last instance to answer /ping turns the endpoint InService in the
            # same transaction that makes it healthy.
            if last:
                self._commit(
                    name,
                    event=EndpointEvent.DEPLOYED,
                    moves=[(instance, InstanceEvent.READY)],
                    clear_failure=True,
                    modified=modified,
                    doc=self._deployment_doc(endpoint, doc),
                )
            else:
                self._commit(name, moves=[(instance, InstanceEvent.READY)])
            instance.supervisor = asyncio.create_task(self._supervise(instance, variant))

        try:
            for plan in plans:
                endpoint.variants[plan.name] = _Variant(plan, parse_image(plan.image))
            starts = [
                bring_up(variant)
                for variant in endpoint.variants.values()
                for _ in range(variant.plan.instance_count)
            ]
            results = await asyncio.gather(*starts, return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
        except InstanceFailed as exc:
            reason = exc.reason
        except BidistreamError as exc:
            reason = self._clip(exc.message)
        except Exception as exc:  # a bug must not leave the endpoint Creating forever
            log.exception("endpoint creation crashed", extra={"endpoint": name})
            reason = self._clip(f"internal error: {exc!r}")
        else:
            return
        await self._stop_many(
            name,
            self._all_instances(endpoint),
            self.limits.stop_grace,
            event=EndpointEvent.DEPLOY_FAILED,
            failure_reason=reason,
            modified=modified,
            apply=endpoint.forget_all,
        )

    async def _update(self, name: str, plans: list[VariantPlan]) -> None:
        endpoint = self._endpoints.setdefault(name, _Endpoint(name))
        new_variants: dict[str, _Variant] = {}
        retired: list[Instance] = []
        try:
            for plan in plans:
                old = endpoint.variants.get(plan.name)
                if old is not None and old.plan.same_container(plan):
                    variant = _Variant(plan, old.image, list(old.instances), old.deployed_at)
                    extra = plan.instance_count - len(variant.instances)
                    for _ in range(max(0, extra)):
                        await self._start_new(endpoint, variant, pending=True)
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
                        await self._start_new(endpoint, variant, pending=True)
                    if old is not None:
                        retired += old.instances
                new_variants[plan.name] = variant
        except Exception as exc:  # includes InstanceFailed and BidistreamError
            reason = exc.reason if isinstance(exc, InstanceFailed) else str(exc)
            record = self.store.get_endpoint(name)
            rollback: dict[str, Any] = {}
            if record is not None:
                doc = dict(record.doc)
                doc.pop("pending", None)
                previous = doc.pop("previous_config", None)
                rollback = {"doc": doc, "config_name": previous or record.config_name}
            await self._stop_many(
                name,
                list(endpoint.pending),
                self.limits.stop_grace,
                event=EndpointEvent.UPDATE_FAILED,
                failure_reason=self._clip(f"Update failed: {reason}"),
                apply=endpoint.pending.clear,
                **rollback,
            )
            return
        for old_name, old in endpoint.variants.items():
            if old_name not in new_variants:
                retired += old.instances
        retired = [i for i in retired if i.state is not InstanceState.STOPPED]
        started = list(endpoint.pending)
        for variant in new_variants.values():
            variant.instances = [i for i in variant.instances if i not in retired]
        record = self.store.get_endpoint(name)

        def cut_over() -> None:
            endpoint.variants = new_variants
            endpoint.pending.clear()
            endpoint.draining.extend(retired)

        # One transaction: new instances healthy, old ones draining, the new deployment, InService.
        staged = _Endpoint(name, variants=new_variants)
        self._commit(
            name,
            event=EndpointEvent.DEPLOYED,
            moves=[(i, InstanceEvent.READY) for i in started] + [(i, InstanceEvent.RETIRE) for i in retired],
            clear_failure=True,
            doc=self._deployment_doc(staged, record.doc if record is not None else {}),
            apply=cut_over,
        )
        for variant in new_variants.values():
            for instance in variant.instances:
                if instance in started:
                    instance.supervisor = asyncio.create_task(self._supervise(instance, variant))
        for instance in retired:
            self._drain(endpoint, instance)

    async def _delete(self, name: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            await self._stop_many(
                name,
                self._all_instances(endpoint),
                self.limits.stop_grace,
                apply=endpoint.forget_all,
            )
        self._endpoints.pop(name, None)
        self.store.delete_endpoint(name)
        self._dirty.set()
        log.info("endpoint deleted", extra={"endpoint": name})

    # -------------------------------------------------------------- instances
    async def _start_new(self, endpoint: _Endpoint, variant: _Variant, pending: bool = False) -> Instance:
        """Launch one instance and wait for /ping; it stays ``starting`` until the caller commits READY.

        ``pending`` instances belong to an update that is not cut over yet."""
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

        def add() -> None:
            variant.instances.append(instance)
            if pending:
                endpoint.pending.append(instance)

        self._commit(endpoint.name, added=[instance], apply=add)
        try:
            await self._boot(instance, self._startup_timeout(variant))
        except BaseException:

            def forget() -> None:
                with contextlib.suppress(ValueError):
                    variant.instances.remove(instance)
                with contextlib.suppress(ValueError):
                    endpoint.pending.remove(instance)

            await self._stop_many(endpoint.name, [instance], 1.0, apply=forget)
            raise
        return instance

    def _startup_timeout(self, variant: _Variant) -> float:
        return float(variant.plan.startup_timeout or self.limits.startup_timeout)

    async def _boot(self, instance: Instance, timeout: float) -> None:
        """Launch and wait for ``/ping`` 200; raise InstanceFailed with the log tail.

        Leaves the state alone: the caller commits READY (alone, or with the
        endpoint's status change)."""
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
            grpc_address=handle.grpc_address,
        )
        log.info(
            "instance answers /ping",
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
            if instance.state is not InstanceState.HEALTHY:
                return  # retired or stopped while we pinged
            log.warning(
                "instance unhealthy; restarting",
                extra={"endpoint": instance.endpoint, "instance": instance.instance_id, "why": why},
            )
            self._commit(instance.endpoint, moves=[(instance, InstanceEvent.UNHEALTHY)])
            await self._stop_handle(instance, 1.0)
            while instance.state is InstanceState.RESTARTING:
                try:
                    await self._boot(instance, self._startup_timeout(variant))
                except InstanceFailed as exc:
                    log.warning("restart failed", extra={"instance": instance.instance_id, "why": exc.reason})
                    await self._stop_handle(instance, 1.0)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.limits.restart_backoff_max)
                    continue
                if instance.state is not InstanceState.RESTARTING:
                    await self._stop_handle(instance, 1.0)  # retired meanwhile: its drain owns it
                    return
                instance.restarts += 1
                metrics.INSTANCE_RESTARTS.labels(
                    instance.endpoint, instance.variant, instance.instance_id
                ).inc()
                self._commit(instance.endpoint, moves=[(instance, InstanceEvent.READY)])
                backoff = self.limits.restart_backoff
                failures = 0

    def _drain(self, endpoint: _Endpoint, instance: Instance) -> None:
        """Wait for a retired (already ``draining``) instance's live sessions, then stop it."""

        async def drain() -> None:
            deadline = time.monotonic() + self.limits.drain_timeout
            while instance.routable is not None and instance.routable.live_sessions > 0:
                if time.monotonic() >= deadline or (instance.handle and instance.handle.exited()):
                    break
                await asyncio.sleep(0.1)

            def forget() -> None:
                with contextlib.suppress(ValueError):
                    endpoint.draining.remove(instance)

            await self._stop_many(endpoint.name, [instance], self.limits.stop_grace, apply=forget)

        task = asyncio.create_task(drain(), name=f"drain-{instance.instance_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_many(
        self,
        name: str,
        instances: Sequence[Instance],
        grace: float,
        *,
        event: EndpointEvent | None = None,
        apply: Callable[[], object] | None = None,
        **fields: Any,
    ) -> None:
        """Commit ``stopped`` for every instance (and ``event``) in one transaction, then stop them.

        The rows leave the live view and the router at the same instant; the
        processes get ``grace`` to finish their sessions afterwards."""
        live = [i for i in instances if i.state is not InstanceState.STOPPED]
        self._commit(
            name,
            event=event,
            moves=[(i, InstanceEvent.STOP) for i in live],
            apply=apply,
            **fields,
        )
        await asyncio.gather(*(self._stop_handle(i, grace) for i in instances))

    async def _stop_handle(self, instance: Instance, grace: float) -> None:
        if instance.handle is not None:
            try:
                await instance.handle.stop(grace)
            except Exception as exc:
                log.warning(
                    "stopping instance failed", extra={"instance": instance.instance_id, "error": exc}
                )

    @staticmethod
    def _all_instances(endpoint: _Endpoint) -> list[Instance]:
        out = [i for v in endpoint.variants.values() for i in v.instances]
        out += [i for i in endpoint.pending if i not in out]
        return out + [i for i in endpoint.draining if i not in out]

    # ------------------------------------------------------------ live view
    async def _publish_loop(self) -> None:
        """Coalesce live-session counts (the only hot part of the live view) and beat the heartbeat."""
        while True:
            # Wake on a change, or at least every few seconds so the heartbeat
            # tells `bidistream endpoints` that a gateway is alive.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self.limits.heartbeat_interval)
            self._dirty.clear()
            self._publish_now()
            await asyncio.sleep(self.limits.publish_interval)

    def _publish_now(self) -> None:
        counts = {
            i.instance_id: i.routable.live_sessions if i.routable else 0
            for e in self._endpoints.values()
            for i in self._all_instances(e)
            if i.state is not InstanceState.STOPPED
        }
        try:
            self.store.set_live_sessions(counts, time.time())
        except Exception as exc:  # the counters are best effort; the endpoints keep running
            log.warning("cannot publish live sessions", extra={"error": exc})


_STATES = [str(s) for s in InstanceState]


def _state_metric(instance: Instance, state: InstanceState) -> None:
    """bidistream_instance_state mirrors the committed state; a stopped instance leaves the metric."""
    where = (instance.endpoint, instance.variant, instance.instance_id)
    if state is InstanceState.STOPPED:
        metrics.forget_instance(*where, _STATES)
    else:
        metrics.set_instance_state(*where, str(state), _STATES)
        metrics.INSTANCE_DRAINING.labels(*where).set(1 if state is InstanceState.DRAINING else 0)


def plans_from_doc(doc: dict[str, Any], key: str = "deployment") -> list[VariantPlan]:
    return [VariantPlan.from_doc(p) for p in doc.get(key) or []]
