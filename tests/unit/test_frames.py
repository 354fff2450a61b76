from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.frames import Frame, FrameKind, InvalidTextFrame


def test_text_and_binary_constructors_keep_kind() -> None:
    assert Frame.text("héllo").kind is FrameKind.TEXT
    assert Frame.text("héllo").data == "héllo".encode()
    assert Frame.binary(bytearray(b"\x00\x01")).data == b"\x00\x01"
    assert Frame.binary(b"x").kind is FrameKind.BINARY


def test_invalid_utf8_text_is_refused_at_the_boundary() -> None:
    with pytest.raises(InvalidTextFrame, match="byte 1"):
        Frame.text_from_bytes(b"a\xff")


def test_partial_text_fragment_may_split_a_character() -> None:
    data = "é".encode()
    frame = Frame.text_from_bytes(data[:1], complete=False)
    assert frame.complete is False and frame.is_text


@given(st.text())
def test_text_round_trips(value: str) -> None:
    frame = Frame.text_from_bytes(value.encode("utf-8"))
    assert frame.as_text() == value


@given(st.binary(max_size=256))
def test_binary_is_never_decoded(value: bytes) -> None:
    frame = Frame.binary(value)
    assert frame.data == value and len(frame) == len(value)
    assert "binary" in repr(frame)


def test_the_hand_written_init_keeps_the_dataclass_contract() -> None:
    """Frame's __init__ sets slots directly (for speed); it must still be the frozen dataclass."""
    f = Frame(b"ab", FrameKind.TEXT, False)
    assert (f.data, f.kind, f.complete) == (b"ab", FrameKind.TEXT, False)
    assert Frame(data=b"x") == Frame(b"x", FrameKind.BINARY, True)
    assert f == Frame(b"ab", FrameKind.TEXT, False) and hash(f) == hash(Frame(b"ab", FrameKind.TEXT, False))
    assert f != Frame(b"ab", FrameKind.TEXT, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.data = b"changed"  # type: ignore[misc]
    assert dataclasses.replace(f, complete=True) == Frame(b"ab", FrameKind.TEXT, True)
    assert pickle.loads(pickle.dumps(f)) == f
    assert [fl.name for fl in dataclasses.fields(Frame)] == ["data", "kind", "complete"]
