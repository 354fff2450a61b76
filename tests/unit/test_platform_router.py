"""The platform router: TargetVariant pins, weighted split, fewest live sessions."""

from __future__ import annotations

from collections import Counter

import pytest

from bidistream.errors import NotFoundError, ServiceUnavailableError
from bidistream.platform.balancer import PlatformRouter, RoutableVariant, SmoothWeighted
from bidistream.routing import RoutableInstance


def _targets(variant: str, n: int) -> list[RoutableInstance]:
    return [
        RoutableInstance("ep", variant, f"{variant}-{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n)
    ]


def _router(variants: list[RoutableVariant]) -> PlatformRouter:
    return PlatformRouter(lambda name: variants if name == "ep" else None)


def test_three_to_one_split_over_400_sessions_is_within_5_percent() -> None:
    router = _router(
        [RoutableVariant("A", 3.0, _targets("A", 2)), RoutableVariant("B", 1.0, _targets("B", 1))]
    )
    counts = Counter(router.candidates("ep")[0].variant for _ in range(400))
    assert abs(counts["A"] / 400 - 0.75) <= 0.05
    assert abs(counts["B"] / 400 - 0.25) <= 0.05
    assert counts == {"A": 300, "B": 100}  # smooth WRR is exact over whole cycles


def test_target_variant_pins_and_unknown_variant_is_not_found() -> None:
    router = _router(
        [RoutableVariant("A", 3.0, _targets("A", 1)), RoutableVariant("B", 0.0, _targets("B", 1))]
    )
    assert {router.candidates("ep", "B")[0].variant for _ in range(20)} == {"B"}
    assert all(len(router.candidates("ep", "B")) == 1 for _ in range(5))
    with pytest.raises(NotFoundError, match="Variant C not found"):
        router.candidates("ep", "C")
    with pytest.raises(NotFoundError, match="Endpoint other not found"):
        router.candidates("other")


def test_zero_weight_variant_gets_no_unpinned_first_pick_but_is_a_fallback() -> None:
    router = _router(
        [RoutableVariant("A", 1.0, _targets("A", 1)), RoutableVariant("B", 0.0, _targets("B", 1))]
    )
    picks = [router.candidates("ep") for _ in range(10)]
    assert {p[0].variant for p in picks} == {"A"}
    assert all([t.variant for t in p] == ["A", "B"] for p in picks)


def test_fewest_live_sessions_first_within_a_variant() -> None:
    targets = _targets("A", 3)
    router = _router([RoutableVariant("A", 1.0, targets)])
    router.session_started(targets[0])
    router.session_started(targets[0])
    router.session_started(targets[2])
    order = router.candidates("ep")
    assert [t.instance_id for t in order] == ["A-1", "A-2", "A-0"]
    router.session_ended(targets[0])
    router.session_ended(targets[0])
    router.session_ended(targets[0])  # never below zero
    assert targets[0].live_sessions == 0


def test_idle_instances_share_new_sessions() -> None:
    targets = _targets("A", 2)
    router = _router([RoutableVariant("A", 1.0, targets)])
    firsts = Counter(router.candidates("ep")[0].instance_id for _ in range(10))
    assert firsts == {"A-0": 5, "A-1": 5}


def test_no_healthy_instance_is_service_unavailable() -> None:
    router = _router([RoutableVariant("A", 1.0, [])])
    with pytest.raises(ServiceUnavailableError):
        router.candidates("ep")
    with pytest.raises(ServiceUnavailableError):
        router.candidates("ep", "A")


def test_smooth_weighted_interleaves() -> None:
    rr = SmoothWeighted()
    seq = [rr.pick([("a", 5), ("b", 1), ("c", 1)]) for _ in range(7)]
    assert Counter(seq) == {"a": 5, "b": 1, "c": 1}
    assert seq == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's documented order for 5:1:1
    assert rr.pick([("a", 0)]) is None
