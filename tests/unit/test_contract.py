"""bidistream.contract: SageMaker's patterns (one copy) and close_reason(), against the spec.

The spec (sagemaker-container-contract.md §3): EndpointName/TargetVariant at most 63 of
``[a-zA-Z0-9](-*[a-zA-Z0-9])*``; ModelInvocationPath at most 100 of
``[A-Za-z0-9\\-._]+(?:/[A-Za-z0-9\\-._]+)*``; ModelQueryString at most 2048 of ``key=value``
pairs joined by ``&``, key ``[a-zA-Z0-9][A-Za-z0-9_-]*``, value one or more unreserved
characters ``[A-Za-z0-9._~-]`` or ``%XX``.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream import contract
from bidistream.errors import InputValidationError

# The spec's patterns, written out here independently of the module under test.
SPEC_KEY = r"[a-zA-Z0-9][A-Za-z0-9_-]*"
SPEC_VALUE = r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+"
SPEC_QUERY = re.compile(rf"{SPEC_KEY}={SPEC_VALUE}(?:&{SPEC_KEY}={SPEC_VALUE})*")
SPEC_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
SPEC_PATH = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*")


@pytest.mark.parametrize(
    "query", ["a=", "a.b=1", "a~=x", "=x", "a", "a=1&", "&a=1", "a=1&&b=2", "a=+", "a=%zz", ""]
)
def test_queries_sagemaker_refuses_are_refused(query: str) -> None:
    assert not contract.is_query(query)
    with pytest.raises(InputValidationError, match="ModelQueryString"):
        contract.check_query(query)


@pytest.mark.parametrize("query", ["model=nova-3", "a=1&b=2", "A_b-9=x.y~z-%2F", "k=%41%4a"])
def test_queries_sagemaker_accepts_are_accepted(query: str) -> None:
    assert contract.check_query(query) == query


def test_lenient_queries_take_what_deepgram_urls_carry() -> None:
    for query in ("keyterm=foo+bar", "a=", "flag", "language_hint[0]=en", "a=b:c,d"):
        assert contract.check_query(query, lenient=True) == query


def test_query_length_limit() -> None:
    ok = "a=" + "x" * (contract.MAX_QUERY - 2)
    assert contract.is_query(ok)
    assert not contract.is_query(ok + "x")


_KEY = st.from_regex(SPEC_KEY, fullmatch=True)
_VALUE = st.from_regex(SPEC_VALUE, fullmatch=True)
_QUERY = st.lists(st.tuples(_KEY, _VALUE), min_size=1, max_size=5).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)
_QUERYISH = st.text(alphabet="ab1=&%._~-+ 9AF/:[]", max_size=30)


@given(_QUERY)
def test_every_query_of_the_spec_pattern_is_accepted(query: str) -> None:
    assert contract.is_query(query) is (len(query) <= contract.MAX_QUERY)


@given(_QUERYISH)
def test_the_check_agrees_with_the_spec_pattern(query: str) -> None:
    assert contract.is_query(query) is (SPEC_QUERY.fullmatch(query) is not None)


@given(st.text(alphabet="aZ9-_.", max_size=70))
def test_names_agree_with_the_spec(name: str) -> None:
    expected = len(name) <= 63 and SPEC_NAME.fullmatch(name) is not None
    assert contract.is_name(name) is expected


@given(st.text(alphabet="aZ9-_./", max_size=110))
def test_invocation_paths_agree_with_the_spec(path: str) -> None:
    dots = any(seg in (".", "..") for seg in path.split("/"))
    expected = len(path) <= 100 and SPEC_PATH.fullmatch(path) is not None and not dots
    assert contract.is_invocation_path(path) is expected


def test_errors_quote_what_the_user_typed() -> None:
    with pytest.raises(InputValidationError) as info:
        contract.check_name("%C3%A9t%C3%A9", "EndpointName", shown="été")
    assert "'été'" in info.value.message and "%C3" not in info.value.message


# ---------------------------------------------------------------------- close_reason


def test_a_short_reason_is_kept() -> None:
    assert contract.close_reason("Endpoint nope not found.") == "Endpoint nope not found."


def test_a_reason_cut_inside_a_character_stays_utf8() -> None:
    text = "a" + "é" * 100  # 201 bytes; a byte cut at 123 splits an é
    reason = contract.close_reason(text)
    data = reason.encode()
    assert len(data) <= 123
    data.decode("utf-8", "strict")
    assert reason.endswith("…") and reason.startswith("aé")


def test_a_long_reason_is_cut_at_a_word() -> None:
    text = "ModelQueryString 'a=' is invalid: " + "word " * 40
    reason = contract.close_reason(text)
    assert len(reason.encode()) <= 123
    assert reason.endswith("word…")


@given(st.text(max_size=300))
def test_any_reason_is_valid_utf8_within_123_bytes(text: str) -> None:
    reason = contract.close_reason(text)
    data = reason.encode("utf-8")  # raises on lone surrogates: none may survive
    assert len(data) <= contract.MAX_CLOSE_REASON
    if len(text.encode("utf-8", "replace")) <= contract.MAX_CLOSE_REASON:
        assert reason == text.encode("utf-8", "replace").decode()
    else:
        assert reason.endswith("…")
