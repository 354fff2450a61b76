"""The endpoint-status and instance-state tables: every pair is either in the table or an error naming it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.errors import InternalError
from bidistream.platform.states import (
    ENDPOINT_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    EndpointEvent,
    EndpointStatus,
    InstanceEvent,
    InstanceState,
    TransitionError,
    next_state,
    next_status,
)


@given(st.sampled_from(list(EndpointStatus)), st.sampled_from(list(EndpointEvent)))
def test_every_endpoint_pair_is_in_the_table_or_an_error_naming_it(
    status: EndpointStatus, event: EndpointEvent
) -> None:
    try:
        after = next_status(status, event)
    except TransitionError as exc:
        assert (status, event) not in ENDPOINT_TRANSITIONS
        assert f"({status.value}, {event.value})" in str(exc)
        return
    assert ENDPOINT_TRANSITIONS[(status, event)] is after


@given(st.sampled_from(list(InstanceState)), st.sampled_from(list(InstanceEvent)))
def test_every_instance_pair_is_in_the_table_or_an_error_naming_it(
    state: InstanceState, event: InstanceEvent
) -> None:
    try:
        after = next_state(state, event)
    except TransitionError as exc:
        assert (state, event) not in INSTANCE_TRANSITIONS
        assert f"({state.value}, {event.value})" in str(exc)
        return
    assert INSTANCE_TRANSITIONS[(state, event)] is after


@given(st.lists(st.sampled_from(list(EndpointEvent)), max_size=12))
def test_any_endpoint_event_sequence_stays_in_the_enum(events: list[EndpointEvent]) -> None:
    status = EndpointStatus.CREATING  # every endpoint is born Creating
    for event in events:
        try:
            status = next_status(status, event)
        except TransitionError:
            continue
        assert status in EndpointStatus


@given(st.lists(st.sampled_from(list(InstanceEvent)), max_size=12))
def test_any_instance_event_sequence_never_leaves_stopped(events: list[InstanceEvent]) -> None:
    state = InstanceState.STARTING
    for event in events:
        before = state
        try:
            state = next_state(state, event)
        except TransitionError:
            assert state is before
            continue
        if before is InstanceState.STOPPED:
            raise AssertionError("stopped must be terminal")


def test_stopped_and_deleting_are_terminal_for_their_tables() -> None:
    assert not [pair for pair in INSTANCE_TRANSITIONS if pair[0] is InstanceState.STOPPED]
    assert not [pair for pair in ENDPOINT_TRANSITIONS if pair[0] is EndpointStatus.DELETING]
    # Every status but Deleting can be deleted.
    assert {s for s, e in ENDPOINT_TRANSITIONS if e is EndpointEvent.DELETE} == set(EndpointStatus) - {
        EndpointStatus.DELETING
    }


def test_the_bug_the_tables_exist_for() -> None:
    # Becoming healthy after being retired would put a draining instance back in the router.
    with pytest.raises(TransitionError, match=r"\(draining, ready\)"):
        next_state(InstanceState.DRAINING, InstanceEvent.READY)
    with pytest.raises(TransitionError, match=r"\(InService, deployed\)"):
        next_status(EndpointStatus.IN_SERVICE, EndpointEvent.DEPLOYED)
    with pytest.raises(TransitionError, match="unknown endpoint status 'Sleeping'"):
        next_status("Sleeping", EndpointEvent.DELETE)
    assert issubclass(TransitionError, InternalError)
