"""The model server's RFC 6455 checks, without sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from bidistream.container.wsguard import MaskCheck, close_code_problem


def _frame(data: bytes, mask: bool = True) -> bytes:
    return Frame(Opcode.BINARY, data).serialize(mask=mask)


SIZES = st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536, 70_000])  # each length encoding


@settings(deadline=None)
@given(st.lists(SIZES, min_size=1, max_size=6), st.integers(1, 9000))
def test_masked_frames_in_any_split_pass(sizes: list[int], cut: int) -> None:
    wire = b"".join(_frame(b"p" * n) for n in sizes)
    check = MaskCheck()
    step = max(cut, len(wire) // 2000)  # a byte at a time is covered by small frames
    for at in range(0, len(wire), step):
        assert check.feed(wire[at : at + step]) is None


@settings(deadline=None)
@given(st.lists(SIZES, max_size=4), SIZES, st.integers(1, 9000))
def test_first_unmasked_frame_is_named(before: list[int], size: int, cut: int) -> None:
    wire = b"".join(_frame(b"p" * n) for n in before) + _frame(b"u" * size, mask=False)
    check = MaskCheck()
    problems = [check.feed(wire[at : at + cut]) for at in range(0, len(wire), cut)]
    assert [p for p in problems if p] and "not masked" in next(p for p in problems if p)


def test_close_codes() -> None:
    for ok in (0, 1000, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 4999):
        assert close_code_problem(ok) is None
    for bad in (1, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        assert "may not be sent" in (close_code_problem(bad) or "")


def test_every_cut_of_every_length_encoding() -> None:
    """A read may end anywhere, also inside the extended length: each cut of each header form."""
    wire = b"".join(_frame(b"p" * n) for n in (0, 5, 125, 126, 300, 65536, 3))
    for cut in range(1, 40):
        check = MaskCheck()
        assert check.feed(wire[:cut]) is None
        assert check.feed(wire[cut:]) is None
    for at in range(len(wire) - 40, len(wire)):  # cuts near the end, after the long frame
        check = MaskCheck()
        assert check.feed(wire[:at]) is None and check.feed(wire[at:]) is None
    check = MaskCheck()
    for i in range(0, 200):  # a byte at a time through the first headers
        assert check.feed(wire[i : i + 1]) is None


def test_unmasked_frame_after_a_cut_header() -> None:
    """The bad frame is named whether its header, or the header before it, is cut."""
    good, bad = _frame(b"g" * 126), _frame(b"u" * 3, mask=False)
    wire = good + bad
    for cut in range(1, len(wire)):
        check = MaskCheck()
        problems = [check.feed(wire[:cut]), check.feed(wire[cut:])]
        assert any(p and "not masked" in p for p in problems), cut
