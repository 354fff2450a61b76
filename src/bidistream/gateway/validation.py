"""Validation of the bidi API's inputs against SageMaker's own patterns (sans-I/O).

The official client does not enforce the model's constraints, so the server
must, answering ``InputValidationError`` before any instance is contacted.
"""

from __future__ import annotations

import re

from bidistream.errors import InputValidationError

NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
INVOCATION_PATH = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*")
# name=value pairs joined by '&': names start alphanumeric, values are unreserved
# characters or %XX escapes.
_STRICT_PAIR = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-._~]*=(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*")
# Lenient: what real Deepgram URLs carry ('+' for spaces, ':' and ',' in values,
# bare flags without '=').
_LENIENT_PAIR = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9\-._~\[\]]*(?:=(?:[A-Za-z0-9\-._~+:,/*]|%[0-9A-Fa-f]{2})*)?"
)

MAX_NAME = 63
MAX_PATH = 100
MAX_QUERY = 2048


def check_name(value: str, what: str) -> str:
    if len(value) > MAX_NAME or not NAME.fullmatch(value):
        raise InputValidationError(
            f"{what} {value!r} is invalid: at most {MAX_NAME} characters matching [a-zA-Z0-9](-*[a-zA-Z0-9])*"
        )
    return value


def check_invocation_path(value: str) -> str:
    # The pattern admits "." and ".." segments; refuse them so a path can never
    # climb out of what the container serves.
    dots = any(seg in (".", "..") for seg in value.split("/"))
    if len(value) > MAX_PATH or not INVOCATION_PATH.fullmatch(value) or dots:
        raise InputValidationError(
            f"ModelInvocationPath {value!r} is invalid: at most {MAX_PATH} characters of "
            "[A-Za-z0-9-._] segments joined by '/', without a leading or trailing '/' or '.'/'..' segments"
        )
    return value


def check_query(value: str, *, lenient: bool = False) -> str:
    pair = _LENIENT_PAIR if lenient else _STRICT_PAIR
    if len(value) > MAX_QUERY or not all(pair.fullmatch(p) for p in value.split("&")):
        hint = "" if lenient else " (the gateway's --lenient-query accepts '+' and other common forms)"
        raise InputValidationError(
            f"ModelQueryString {value!r} is invalid: at most {MAX_QUERY} characters of name=value "
            f"pairs joined by '&', values of unreserved characters or %XX escapes{hint}"
        )
    return value
