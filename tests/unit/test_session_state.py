from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.session_state import TRANSITIONS, Event, SessionMachine, SessionStateError, State


def test_happy_path() -> None:
    m = SessionMachine()
    assert m.feed(Event.ACCEPTED) is State.OPEN
    assert m.feed(Event.INPUT_ENDED) is State.HALF_CLOSED
    assert m.feed(Event.OUTPUT_ENDED) is State.CLOSING
    assert m.feed(Event.CLOSED) is State.CLOSED


def test_missing_pair_is_an_error() -> None:
    m = SessionMachine()
    with pytest.raises(SessionStateError, match="input_ended"):
        m.feed(Event.INPUT_ENDED)


@given(st.lists(st.sampled_from(list(Event)), max_size=12))
def test_any_event_sequence_gives_a_legal_state_or_an_error(events: list[Event]) -> None:
    m = SessionMachine()
    for event in events:
        before = m.state
        try:
            after = m.feed(event)
        except SessionStateError:
            assert (before, event) not in TRANSITIONS
            assert m.state is before
            continue
        assert TRANSITIONS[(before, event)] is after


def test_closed_is_terminal() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] is State.CLOSED]
