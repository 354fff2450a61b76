"""Every event an adapter can send has a row kind, and every timer has one too."""

from __future__ import annotations

import typing

from bidistream.errors import InstanceFullError, ModelStreamError
from bidistream.session import events as e
from bidistream.session.machine import _KINDS, _TIMERS, BidiSession, Input


def test_every_event_class_is_keyed() -> None:
    classes = set(typing.get_args(e.Event))
    keyed = set(_KINDS) | {e.InstanceClosed, e.TimerFired}
    assert classes == keyed


def test_every_timer_is_keyed() -> None:
    assert set(_TIMERS) == set(e.Timer)


def test_a_1013_before_any_frame_is_full_after_one_it_is_an_error() -> None:
    s = BidiSession()
    full = e.InstanceClosed(InstanceFullError("full", code="1013"))
    assert s._classify(full) is Input.INSTANCE_FULL
    s.relayed = 1
    assert s._classify(full) is Input.INSTANCE_CLOSED
    assert s._classify(e.InstanceClosed(ModelStreamError("x"))) is Input.INSTANCE_CLOSED


def test_not_an_event_is_a_type_error() -> None:
    import pytest

    with pytest.raises(TypeError):
        BidiSession().handle(object())
