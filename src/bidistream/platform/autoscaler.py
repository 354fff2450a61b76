"""The scaler: evaluates target-tracking policies and moves a variant's instance count.

Every ``evaluation_interval`` (SageMaker's high-resolution metrics are 10 s) it
measures each registered target's metric, computes the instance count that
would bring it to the policy's target value (``ceil(count × value / target)``,
clamped to min/max), and applies it through the same
``UpdateEndpointWeightsAndCapacities`` call a user would make, so the store,
DescribeEndpoint and the router all see one fact.

Scale-out honours ``ScaleOutCooldown``; scale-in honours ``ScaleInCooldown``,
never happens while the metric of any policy asks for more, and **only drains**:
the endpoint manager retires the least busy instance, takes it out of routing
(no new sessions) and stops it when its last session ends or its drain limit
(``ManagerLimits.drain_timeout``) passes.  A session is never cut by a
scale-in.  Each change is an activity with its cause, as
``DescribeScalingActivities`` shows it; it is ``Successful`` once the variant
runs exactly the desired instances and nothing of it is draining.

The decision itself (:func:`decide`) is a pure function, so its rules are
unit-tested without a clock or an endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bidistream import metrics
from bidistream.platform.autoscaling import (
    CUSTOM_METRICS,
    NAMESPACE,
    PREDEFINED_METRICS,
    TargetPolicy,
    parse_resource_id,
)
from bidistream.platform.autoscaling_store import ActivityRow, AutoscalingStore, TargetKey
from bidistream.platform.manager import EndpointManager, InstanceState, plans_from_doc
from bidistream.platform.store import Store

__all__ = ["Autoscaler", "AutoscalerLimits", "Decision", "decide"]

log = logging.getLogger("bidistream.platform.autoscaler")

_METRIC_NAMES = {v: k for k, v in {**PREDEFINED_METRICS, **CUSTOM_METRICS}.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalerLimits:
    # Seconds between evaluations (SageMaker's high-resolution metric period is 10 s).
    evaluation_interval: float = 10.0
    # How long one instance /metrics scrape (speech backlog) may take.
    scrape_timeout: float = 2.0


class Dispatcher(Protocol):
    def dispatch(self, target: str, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    direction: str  # "out", "in" or "" (no change)
    cause: str


def decide(
    current: int,
    minimum: int,
    maximum: int,
    readings: list[tuple[TargetPolicy, float]],
    now: float,
    last_out: float,
    last_change: float,
) -> Decision:
    """Target tracking for one variant: the largest count any policy wants, within bounds and cooldowns."""
    if current < minimum:
        return Decision(minimum, "out", f"the current capacity {current} is below the minimum {minimum}")
    if current > maximum:
        return Decision(maximum, "in", f"the current capacity {current} is above the maximum {maximum}")
    if not readings:
        return Decision(current, "", "no scaling policy")
    wants: list[tuple[int, TargetPolicy, float]] = []
    for policy, value in readings:
        want = math.ceil(round(current * value / policy.target_value, 6)) if value > 0 else minimum
        wants.append((max(minimum, min(maximum, want)), policy, value))
    desired, policy, value = max(wants, key=lambda w: w[0])
    name = _METRIC_NAMES.get(policy.metric, policy.metric)
    what = f"{name} = {value:g} against target {policy.target_value:g}"
    alarm = f"TargetTracking-{policy.name}"
    if desired > current:
        if now - last_out < policy.scale_out_cooldown:
            return Decision(current, "", f"scale-out cooldown of policy {policy.name}")
        return Decision(
            desired,
            "out",
            f"monitor alarm {alarm}-AlarmHigh in state ALARM triggered policy {policy.name} ({what})",
        )
    if desired < current:
        if any(p.disable_scale_in for p, _ in readings):
            return Decision(current, "", "scale-in disabled by a policy")
        cooldown = max(p.scale_in_cooldown for p, _ in readings)
        if now - last_change < cooldown:
            return Decision(current, "", "scale-in cooldown")
        return Decision(
            desired,
            "in",
            f"monitor alarm {alarm}-AlarmLow in state ALARM triggered policy {policy.name} ({what})",
        )
    return Decision(current, "", what)


@dataclass(eq=False)
class _TargetState:
    last_out: float = 0.0
    last_change: float = 0.0
    invocations_seen: float | None = None
    invocations_at: float = 0.0
    pending: str | None = None  # activity id in progress
    readings: dict[str, float] = field(default_factory=dict)


class Autoscaler:
    def __init__(
        self,
        store: AutoscalingStore,
        endpoints: Store,
        sagemaker: Dispatcher,
        manager: EndpointManager,
        limits: AutoscalerLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.sagemaker = sagemaker
        self.manager = manager
        self.limits = limits or AutoscalerLimits()
        self.clock = clock
        self._state: dict[TargetKey, _TargetState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.limits.scrape_timeout))
        # After a restart the cooldowns continue from the recorded activities.
        for activity in self.store.list_activities(NAMESPACE):
            st = self._state.setdefault(activity.key, _TargetState())
            started = float(activity.doc.get("StartTime", 0.0))
            st.last_change = max(st.last_change, started)
            if activity.doc.get("_direction") == "out":
                st.last_out = max(st.last_out, started)
            if activity.status == "InProgress" and st.pending is None:
                st.pending = activity.activity_id
        self._task = asyncio.create_task(self._loop(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def wake(self) -> None:
        """A target or policy changed: evaluate now rather than at the next tick."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # one bad round must not stop scaling for good
                log.exception("autoscaler evaluation failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.limits.evaluation_interval)
            self._wake.clear()

    # ------------------------------------------------------------ evaluation
    async def evaluate(self) -> None:
        policies: dict[TargetKey, list[TargetPolicy]] = {}
        for row in self.store.list_policies(NAMESPACE):
            with contextlib.suppress(Exception):
                policies.setdefault(row.key, []).append(TargetPolicy.from_doc(row.doc))
        for target in self.store.list_targets(NAMESPACE):
            await self._evaluate_one(target.key, target.doc, policies.get(target.key, []))

    async def _evaluate_one(self, key: TargetKey, doc: dict[str, Any], policies: list[TargetPolicy]) -> None:
        endpoint, variant = parse_resource_id(key.resource_id)
        st = self._state.setdefault(key, _TargetState())
        record = self.endpoints.get_endpoint(endpoint)
        if record is None:
            return
        plans = {p.name: p for p in plans_from_doc(record.doc)}
        plan = plans.get(variant)
        if plan is None:
            return
        current = plan.instance_count
        self._settle(key, st, endpoint, variant, current, record.status)
        suspended = doc.get("SuspendedState") or {}
        readings = [(p, await self._measure(p.metric, endpoint, variant, st)) for p in policies]
        for p, value in readings:
            metrics.SCALING_METRIC.labels(
                endpoint, variant, p.name, _METRIC_NAMES.get(p.metric, p.metric)
            ).set(value)
        metrics.DESIRED_INSTANCES.labels(endpoint, variant).set(current)
        if record.status != "InService":
            return  # an update (ours or a user's) is running; look again next round
        now = self.clock()
        decision = decide(
            current,
            int(doc["MinCapacity"]),
            int(doc["MaxCapacity"]),
            readings,
            now,
            st.last_out,
            st.last_change,
        )
        if not decision.direction:
            return
        if (decision.direction == "out" and suspended.get("DynamicScalingOutSuspended")) or (
            decision.direction == "in" and suspended.get("DynamicScalingInSuspended")
        ):
            return
        self._apply(key, st, endpoint, variant, current, decision, now)

    def _apply(
        self,
        key: TargetKey,
        st: _TargetState,
        endpoint: str,
        variant: str,
        current: int,
        decision: Decision,
        now: float,
    ) -> None:
        body = json.dumps(
            {
                "EndpointName": endpoint,
                "DesiredWeightsAndCapacities": [
                    {"VariantName": variant, "DesiredInstanceCount": decision.desired}
                ],
            }
        ).encode()
        status, _, answer = self.sagemaker.dispatch("SageMaker.UpdateEndpointWeightsAndCapacities", body, {})
        activity_id = str(uuid.uuid4())
        verb = "Setting desired instance count"
        doc: dict[str, Any] = {
            "ActivityId": activity_id,
            "ServiceNamespace": key.namespace,
            "ResourceId": key.resource_id,
            "ScalableDimension": key.dimension,
            "Description": f"{verb} to {decision.desired}.",
            "Cause": decision.cause,
            "StartTime": now,
            "Details": f"Instance count {current} -> {decision.desired}"
            + (
                " (scale-in drains: the leaving instance takes no new sessions)"
                if decision.direction == "in"
                else ""
            ),
            "_direction": decision.direction,
            "_desired": decision.desired,
        }
        if status == 200:
            doc["StatusCode"] = "InProgress"
            doc["StatusMessage"] = f"Waiting for variant {variant} to run {decision.desired} instances."
            if st.pending is not None:
                self._finish(key, st.pending, "Overridden", "A newer activity superseded this one.")
            st.pending = activity_id
            st.last_change = now
            if decision.direction == "out":
                st.last_out = now
            result = "started"
        else:
            message = json.loads(answer).get("message", "")
            doc.update(
                StatusCode="Failed",
                StatusMessage=f"Failed to set desired instance count: {message}",
                EndTime=now,
            )
            result = "failed"
        self.store.put_activity(ActivityRow(activity_id, key, now, doc["StatusCode"], doc))
        metrics.SCALING_ACTIVITIES.labels(endpoint, variant, decision.direction, result).inc()
        log.info(
            "scaling activity",
            extra={
                "endpoint": endpoint,
                "variant": variant,
                "direction": decision.direction,
                "from": current,
                "to": decision.desired,
                "cause": decision.cause,
                "status": doc["StatusCode"],
            },
        )

    def _settle(
        self, key: TargetKey, st: _TargetState, endpoint: str, variant: str, desired: int, status: str
    ) -> None:
        """The pending activity is Successful once the variant runs ``desired`` and nothing drains."""
        if st.pending is None or status != "InService":
            return
        instances = [i for i in self.manager.instances(endpoint) if i.variant == variant]
        healthy = sum(1 for i in instances if i.state is InstanceState.HEALTHY)
        draining = sum(1 for i in instances if i.state is InstanceState.DRAINING)
        if healthy == desired and draining == 0:
            self._finish(
                key, st.pending, "Successful", f"Successfully set desired instance count to {desired}."
            )
            st.pending = None

    def _finish(self, key: TargetKey, activity_id: str, status: str, message: str) -> None:
        for activity in self.store.list_activities(key.namespace):
            if activity.activity_id == activity_id:
                doc = {
                    **activity.doc,
                    "StatusCode": status,
                    "StatusMessage": message,
                    "EndTime": self.clock(),
                }
                self.store.put_activity(ActivityRow(activity_id, key, activity.started, status, doc))
                return

    # -------------------------------------------------------------- metrics
    async def _measure(self, metric: str, endpoint: str, variant: str, st: _TargetState) -> float:
        instances = [
            i
            for i in self.manager.instances(endpoint)
            if i.variant == variant and i.state is InstanceState.HEALTHY and i.routable is not None
        ]
        count = max(1, len(instances))
        live = sum(i.routable.live_sessions for i in instances if i.routable)
        if metric == "sessions_per_instance":
            return live / count
        if metric == "concurrent_per_instance":
            inflight = metrics.sample_sum(metrics.INVOCATIONS_IN_FLIGHT, endpoint=endpoint, variant=variant)
            return (live + inflight) / count
        if metric == "invocations_per_instance":
            return self._invocations_per_minute(endpoint, variant, st) / count
        if metric == "backlog_seconds":
            values = [await self._backlog(i.routable.base_url) for i in instances if i.routable]
            return sum(values) / len(values) if values else 0.0
        return 0.0

    def _invocations_per_minute(self, endpoint: str, variant: str, st: _TargetState) -> float:
        """InvokeEndpoint calls plus sessions opened on the variant, per minute since the last look."""
        total = sum(
            metrics.sample_sum(family, "_total", endpoint=endpoint, variant=variant)
            for family in (metrics.INVOCATIONS, metrics.GATEWAY.opened)
        )
        now = time.monotonic()
        previous, at = st.invocations_seen, st.invocations_at
        st.invocations_seen, st.invocations_at = total, now
        if previous is None or now <= at:
            return 0.0
        return (total - previous) * 60.0 / (now - at)

    async def _backlog(self, base_url: str) -> float:
        """The largest per-session speech backlog an instance reports on its /metrics."""
        if self._http is None:
            return 0.0
        try:
            async with self._http.get(f"{base_url}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0.0
        worst = 0.0
        for fam in text_string_to_metric_families(text):
            if fam.name == "bidistream_speech_backlog_seconds":
                for sample in fam.samples:
                    worst = max(worst, sample.value)
        return worst
