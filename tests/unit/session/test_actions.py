"""Actions are plain records; the union names every one the session can return."""

from __future__ import annotations

import inspect
import typing

from bidistream.session import actions as a


def test_union_lists_every_action_class() -> None:
    classes = {
        obj
        for name, obj in inspect.getmembers(a, inspect.isclass)
        if obj.__module__ == a.__name__ and name in a.__all__
    }
    assert classes == set(typing.get_args(a.Action))


def test_frame_actions_carry_kind_fin_and_continuation() -> None:
    act = a.SendToInstance(b"x", True, False, False)
    assert (act.data, act.text, act.fin, act.cont) == (b"x", True, False, False)
