from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bidistream.session.reason import MAX_CLOSE_REASON, close_reason


def test_short_reason_is_untouched() -> None:
    assert close_reason("instance full") == "instance full"
    assert close_reason("") == ""


def test_multibyte_cut_stays_valid_utf8() -> None:
    # The example: the old byte cut (120 bytes + "...") split an 'é'.
    text = "a" + "é" * 100
    assert not _valid(text.encode()[: MAX_CLOSE_REASON - 3])
    out = close_reason(text).encode("utf-8")
    assert len(out) <= MAX_CLOSE_REASON
    out.decode("utf-8")
    assert out.endswith("…".encode())


def test_cut_at_a_word_when_the_cut_splits_one() -> None:
    text = "the model did not close the session " * 10
    out = close_reason(text)
    assert out.endswith("…")
    assert out[:-1].rstrip() == out[:-1]
    assert text.startswith(out[:-1])
    assert out[:-1].split(" ")[-1] in text.split(" ")


def test_a_long_word_is_still_cut_inside() -> None:
    out = close_reason("x" * 500)
    assert out == "x" * (MAX_CLOSE_REASON - 3) + "…"


@given(st.text(max_size=400))
def test_any_text_fits_and_decodes(text: str) -> None:
    out = close_reason(text)
    data = out.encode("utf-8")
    assert len(data) <= MAX_CLOSE_REASON
    if len(text.encode("utf-8")) <= MAX_CLOSE_REASON:
        assert out == text
    else:
        assert out.endswith("…")
        assert text.startswith(out[:-1].rstrip())


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
