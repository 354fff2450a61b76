"""The seam between the front door (gateway) and whatever knows the endpoints.

The gateway asks a :class:`Router` where a session or invocation should go and
tells it when sessions start and end; it never knows whether endpoints were
declared on the command line (:class:`StaticRouter`) or created through the
control plane (the platform's ``PlatformRouter`` implements the same protocol).

It lives outside both layers so that neither imports the other: the gateway
depends on this protocol, the platform implements it, and only ``cli/`` wires
one to the other.  :class:`RoutableInstance` is *the* name of an instance as
the front door sees it, in every layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bidistream.errors import EndpointNotFoundError

__all__ = ["LayeredRouter", "RoutableInstance", "Router", "StaticRouter"]


@dataclass(eq=False, slots=True)
class RoutableInstance:
    """One instance a session or invocation can be sent to.

    ``base_url`` is the instance's model server, e.g. ``http://127.0.0.1:8080``;
    the gateway appends ``/invocations-bidirectional-stream`` (or the
    invocation path) and ``/invocations``.  ``grpc_address`` is the
    instance's gRPC port as ``host:port`` (plain HTTP/2, prior knowledge), the
    target of the gateway's gRPC relay; empty when the instance serves no gRPC.
    ``live_sessions`` is kept by the router from ``session_started``/``session_ended``
    calls (gRPC calls count as sessions).
    """

    endpoint: str
    variant: str
    instance_id: str
    base_url: str
    live_sessions: int = 0
    # The instance's log file, when the platform keeps one (named in 424 messages).
    log_path: str = ""
    grpc_address: str = ""


class Router(Protocol):
    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        """Instances to try for one new session or invocation, best first.

        Raises NotFoundError for an unknown endpoint or variant and
        ServiceUnavailableError when the endpoint has no healthy instance.
        The gateway tries the next candidate when one is full (503 / close 1013).
        """
        ...

    def session_started(self, instance: RoutableInstance) -> None: ...

    def session_ended(self, instance: RoutableInstance) -> None: ...


@dataclass
class StaticRouter:
    """Endpoints declared as ``--endpoint NAME=URL``: one variant, one instance each.

    ``grpc`` maps an endpoint to its model server's gRPC port (``--grpc-endpoint
    NAME=HOST:PORT``), the gateway's gRPC relay target.
    """

    urls: Mapping[str, str]
    variant: str = "AllTraffic"
    grpc: Mapping[str, str] = field(default_factory=dict)
    _instances: dict[str, RoutableInstance] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for name, url in self.urls.items():
            self._instances[name] = RoutableInstance(
                name, self.variant, f"{name}-1", url.rstrip("/"), grpc_address=self.grpc.get(name, "")
            )

    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        instance = self._instances.get(endpoint)
        if instance is None:
            raise EndpointNotFoundError(
                f"Endpoint {endpoint} not found. Declare it with --endpoint {endpoint}=URL "
                "or create it through the control plane."
            )
        if target_variant is not None and target_variant != instance.variant:
            raise EndpointNotFoundError(f"Variant {target_variant} not found on endpoint {endpoint}.")
        return [instance]

    def session_started(self, instance: RoutableInstance) -> None:
        instance.live_sessions += 1

    def session_ended(self, instance: RoutableInstance) -> None:
        instance.live_sessions = max(0, instance.live_sessions - 1)


@dataclass
class LayeredRouter:
    """Endpoints declared on the command line first, then the control plane's.

    Lets ``bidistream gateway --endpoint NAME=URL`` front an already running
    model server while the same gateway still manages endpoints created with boto3.
    """

    static: StaticRouter
    managed: Router

    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        if endpoint in self.static.urls:
            return self.static.candidates(endpoint, target_variant)
        return self.managed.candidates(endpoint, target_variant)

    def session_started(self, instance: RoutableInstance) -> None:
        self._owner(instance).session_started(instance)

    def session_ended(self, instance: RoutableInstance) -> None:
        self._owner(instance).session_ended(instance)

    def _owner(self, instance: RoutableInstance) -> Router:
        # The same test candidates() routes by, so an instance always returns to its router.
        return self.static if instance.endpoint in self.static.urls else self.managed
