"""The platform's :class:`~bidistream.routing.Router`: which instance gets a session.

Sans-I/O: it reads the endpoint manager's in-memory view (variants, their
current weights and instances with live-session counts) and never waits.

* ``TargetVariant`` pins the variant; an unknown variant is NotFound.
* Otherwise the variant is chosen by *smooth weighted round robin* over
  ``CurrentWeight`` (nginx's algorithm): deterministic, so 3:1 weights give
  exactly 3:1 over any 4k sessions instead of a random walk around it.
* Within the variant, instances with the fewest live sessions come first.
* The remaining healthy instances of the other variants follow as fallbacks,
  so when every instance of the chosen variant is full (1013 / 503) the
  gateway still tries somewhere before answering ServiceUnavailable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bidistream.errors import EndpointNotFoundError, ServiceUnavailableError
from bidistream.routing import RoutableInstance

__all__ = ["PlatformRouter", "RoutableVariant", "SmoothWeighted"]


@dataclass(eq=False)
class RoutableVariant:
    """What the router needs to know about one variant, right now."""

    name: str
    weight: float
    instances: list[RoutableInstance]  # healthy ones only


@dataclass
class SmoothWeighted:
    """Smooth weighted round robin: each pick adds every weight to its credit, takes
    the largest credit and charges it the total.  Keys with weight 0 never win."""

    credit: dict[str, float] = field(default_factory=dict)

    def pick(self, weights: Sequence[tuple[str, float]]) -> str | None:
        live = [(k, w) for k, w in weights if w > 0]
        if not live:
            return None
        total = sum(w for _, w in live)
        best: str | None = None
        for key, weight in live:
            self.credit[key] = self.credit.get(key, 0.0) + weight
            if best is None or self.credit[key] > self.credit[best]:
                best = key
        assert best is not None
        self.credit[best] -= total
        return best


class PlatformRouter:
    """Implements the gateway's Router protocol over the endpoint manager's state.

    ``lookup(endpoint)`` returns the endpoint's variants, or None if the
    endpoint does not exist; ``on_change`` is told when a session count moves
    (the manager publishes it for ``bidistream endpoints``).
    """

    def __init__(
        self,
        lookup: Callable[[str], list[RoutableVariant] | None],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._lookup = lookup
        self._on_change = on_change
        self._rr: dict[str, SmoothWeighted] = {}
        self._tiebreak = 0

    def candidates(self, endpoint: str, target_variant: str | None = None) -> list[RoutableInstance]:
        variants = self._lookup(endpoint)
        if variants is None:
            raise EndpointNotFoundError(f"Endpoint {endpoint} not found.")
        if target_variant is not None:
            pinned = next((v for v in variants if v.name == target_variant), None)
            if pinned is None:
                names = ", ".join(v.name for v in variants) or "none"
                raise EndpointNotFoundError(
                    f"Variant {target_variant} not found on endpoint {endpoint} (variants: {names})."
                )
            if not pinned.instances:
                raise ServiceUnavailableError(
                    f"Variant {target_variant} of endpoint {endpoint} has no healthy instance right now."
                )
            return self._order(pinned.instances)
        usable = [v for v in variants if v.instances]
        if not usable:
            raise ServiceUnavailableError(f"Endpoint {endpoint} has no healthy instance right now.")
        rr = self._rr.setdefault(endpoint, SmoothWeighted())
        chosen = rr.pick([(v.name, v.weight) for v in usable])
        first = next((v for v in usable if v.name == chosen), None)
        ordered: list[RoutableInstance] = []
        if first is not None:
            ordered += self._order(first.instances)
        rest = sorted((v for v in usable if v is not first), key=lambda v: -v.weight)
        for variant in rest:
            ordered += self._order(variant.instances)
        return ordered

    def _order(self, instances: list[RoutableInstance]) -> list[RoutableInstance]:
        # Fewest live sessions first; equal counts rotate so idle instances share the load.
        self._tiebreak += 1
        n = len(instances)
        indexed = [(t.live_sessions, (i - self._tiebreak) % n, t) for i, t in enumerate(instances)]
        indexed.sort(key=lambda item: (item[0], item[1]))
        return [t for _, _, t in indexed]

    def session_started(self, instance: RoutableInstance) -> None:
        instance.live_sessions += 1
        if self._on_change is not None:
            self._on_change()

    def session_ended(self, instance: RoutableInstance) -> None:
        instance.live_sessions = max(0, instance.live_sessions - 1)
        if self._on_change is not None:
            self._on_change()
