"""Endpoint status and instance state, each as one transition table.

The endpoint manager and the control API never assign a status or a state
directly: they feed an event and the table says what comes next.  A pair
missing from a table is a bug in the caller, never something to guess
around, so :func:`next_status` and :func:`next_state` raise
:class:`TransitionError` naming the pair.

Endpoint status (SageMaker's ``EndpointStatus`` values, the subset we move)::

    (CreateEndpoint) ─► Creating ──deployed──► InService ──update──► Updating
                          │                      ▲  ▲                  │
                          │ deploy_failed        │  └─deployed─────────┤
                          ▼                      │   update_failed ────┘ (stays InService,
                        Failed                   │                        FailureReason says why)
    (gateway restart) InService / Updating / SystemUpdating ─resume─► SystemUpdating ─deployed─► InService
    (gateway restart) Creating ─resume─► Creating
    any but Deleting ──delete──► Deleting ──(record removed)

Instance state::

    starting ──ready──► healthy ──unhealthy──► restarting ──ready──► healthy
       │                   │                       │
       │ stop              │ retire                │ stop
       ▼                   ▼                       ▼
    stopped ◄──stop── draining                   stopped

Only ``healthy`` instances are routable.  ``stopped`` is terminal: its row
leaves the live view in the same transaction that records the stop.
"""

from __future__ import annotations

import enum

from bidistream.errors import InternalError

__all__ = [
    "ENDPOINT_TRANSITIONS",
    "INSTANCE_TRANSITIONS",
    "EndpointEvent",
    "EndpointStatus",
    "InstanceEvent",
    "InstanceState",
    "TransitionError",
    "next_state",
    "next_status",
]


class EndpointStatus(enum.StrEnum):
    """SageMaker's ``EndpointStatus`` enum, every value botocore knows."""

    OUT_OF_SERVICE = "OutOfService"
    CREATING = "Creating"
    UPDATING = "Updating"
    SYSTEM_UPDATING = "SystemUpdating"
    ROLLING_BACK = "RollingBack"
    IN_SERVICE = "InService"
    DELETING = "Deleting"
    FAILED = "Failed"
    UPDATE_ROLLBACK_FAILED = "UpdateRollbackFailed"


class EndpointEvent(enum.StrEnum):
    DEPLOYED = "deployed"  # every instance of the (new) deployment answers /ping
    DEPLOY_FAILED = "deploy_failed"  # an instance of a first deployment died or timed out
    UPDATE = "update"  # UpdateEndpoint / UpdateEndpointWeightsAndCapacities accepted
    UPDATE_FAILED = "update_failed"  # the new instances of an update did not start
    RESUME = "resume"  # the gateway restarted and brings the endpoint back
    DELETE = "delete"  # DeleteEndpoint accepted


class InstanceState(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


class InstanceEvent(enum.StrEnum):
    READY = "ready"  # /ping answered 200 and the instance joins the routable set
    UNHEALTHY = "unhealthy"  # it exited, or failed N health checks in a row
    RETIRE = "retire"  # scale-in or model swap: finish live sessions, take no new ones
    STOP = "stop"  # stopped for good (drained, failed, endpoint deleted, gateway stop)


_S = EndpointStatus
_E = EndpointEvent

ENDPOINT_TRANSITIONS: dict[tuple[EndpointStatus, EndpointEvent], EndpointStatus] = {
    (_S.CREATING, _E.DEPLOYED): _S.IN_SERVICE,
    (_S.CREATING, _E.DEPLOY_FAILED): _S.FAILED,
    (_S.CREATING, _E.RESUME): _S.CREATING,
    (_S.CREATING, _E.DELETE): _S.DELETING,
    (_S.IN_SERVICE, _E.UPDATE): _S.UPDATING,
    (_S.IN_SERVICE, _E.RESUME): _S.SYSTEM_UPDATING,
    (_S.IN_SERVICE, _E.DELETE): _S.DELETING,
    (_S.UPDATING, _E.DEPLOYED): _S.IN_SERVICE,
    (_S.UPDATING, _E.UPDATE_FAILED): _S.IN_SERVICE,
    (_S.UPDATING, _E.RESUME): _S.SYSTEM_UPDATING,
    (_S.UPDATING, _E.DELETE): _S.DELETING,
    (_S.SYSTEM_UPDATING, _E.DEPLOYED): _S.IN_SERVICE,
    # A restarted endpoint whose instances no longer start has nothing left to run.
    (_S.SYSTEM_UPDATING, _E.DEPLOY_FAILED): _S.FAILED,
    (_S.SYSTEM_UPDATING, _E.RESUME): _S.SYSTEM_UPDATING,
    (_S.SYSTEM_UPDATING, _E.DELETE): _S.DELETING,
    (_S.FAILED, _E.DELETE): _S.DELETING,
    (_S.OUT_OF_SERVICE, _E.DELETE): _S.DELETING,
    (_S.ROLLING_BACK, _E.DELETE): _S.DELETING,
    (_S.UPDATE_ROLLBACK_FAILED, _E.DELETE): _S.DELETING,
}

_I = InstanceState
_V = InstanceEvent

INSTANCE_TRANSITIONS: dict[tuple[InstanceState, InstanceEvent], InstanceState] = {
    (_I.STARTING, _V.READY): _I.HEALTHY,
    (_I.STARTING, _V.STOP): _I.STOPPED,
    # Rolling over onto a new deployment: started instances that never served retire too.
    (_I.STARTING, _V.RETIRE): _I.DRAINING,
    (_I.HEALTHY, _V.UNHEALTHY): _I.RESTARTING,
    (_I.HEALTHY, _V.RETIRE): _I.DRAINING,
    (_I.HEALTHY, _V.STOP): _I.STOPPED,
    (_I.RESTARTING, _V.READY): _I.HEALTHY,
    (_I.RESTARTING, _V.RETIRE): _I.DRAINING,
    (_I.RESTARTING, _V.STOP): _I.STOPPED,
    (_I.DRAINING, _V.STOP): _I.STOPPED,
}


class TransitionError(InternalError):
    """A (state, event) pair that is not in its table: the caller has a bug."""

    code = "TransitionError"


def next_status(status: EndpointStatus | str, event: EndpointEvent) -> EndpointStatus:
    """The endpoint status after ``event``, or TransitionError naming the pair."""
    try:
        current = EndpointStatus(status)
    except ValueError as exc:
        raise TransitionError(f"unknown endpoint status {status!r} (event {event.value!r})") from exc
    nxt = ENDPOINT_TRANSITIONS.get((current, event))
    if nxt is None:
        raise TransitionError(
            f"endpoint event {event.value!r} is not valid in status {current.value!r} "
            f"(no pair ({current.value}, {event.value}) in the endpoint table)"
        )
    return nxt


def next_state(state: InstanceState, event: InstanceEvent) -> InstanceState:
    """The instance state after ``event``, or TransitionError naming the pair."""
    nxt = INSTANCE_TRANSITIONS.get((state, event))
    if nxt is None:
        raise TransitionError(
            f"instance event {event.value!r} is not valid in state {state.value!r} "
            f"(no pair ({state.value}, {event.value}) in the instance table)"
        )
    return nxt
