"""SageMaker's names, paths and query patterns, and the WebSocket close reason: one copy (sans-I/O).

The gateway validates the bidi API's inputs with these patterns before any
instance is contacted, the container checker (``bidistream check``) builds
its probes from them and the control API validates entity names with them:
three readers, one source, so a pattern fixed here is fixed for all three.
The patterns are the Smithy model's (see the container contract spec, §3).

:func:`close_reason` is here too because every WebSocket close in the
project (gateway doors, model server) must obey the same RFC 6455 rule:
a reason is valid UTF-8 of at most 123 bytes.

Imports nothing of ours but errors.
"""

from __future__ import annotations

import re
from typing import Final

from bidistream.errors import InputValidationError

__all__ = [
    "BIDI_SUFFIX",
    "CONTAINER_BIDI_PATH",
    "ENDPOINT_PREFIX",
    "INVOCATION_PATH",
    "INVOKE_SUFFIX",
    "MAX_CLOSE_REASON",
    "MAX_INVOCATION_PATH",
    "MAX_NAME",
    "MAX_QUERY",
    "MODEL_NAME",
    "NAME",
    "QUERY_KEY",
    "QUERY_VALUE",
    "STREAM_SUFFIX",
    "WS_SEGMENT",
    "check_invocation_path",
    "check_name",
    "check_query",
    "close_reason",
    "is_invocation_path",
    "is_name",
    "is_query",
]

# ---------------------------------------------------------------------- paths
ENDPOINT_PREFIX: Final = "/endpoints/"
BIDI_SUFFIX: Final = "/invocations-bidirectional-stream"  # InvokeEndpointWithBidirectionalStream
INVOKE_SUFFIX: Final = "/invocations"  # InvokeEndpoint
STREAM_SUFFIX: Final = "/invocations-response-stream"  # InvokeEndpointWithResponseStream
WS_SEGMENT: Final = "ws"  # the gateway's own WebSocket front door: /endpoints/{name}/ws[/<path>]
CONTAINER_BIDI_PATH: Final = "/invocations-bidirectional-stream"  # what the container serves

# ---------------------------------------------------------------------- patterns (Smithy model)
# EndpointName, TargetVariant, and the control plane's EndpointConfigName and VariantName.
NAME: Final = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
MAX_NAME: Final = 63
# The control plane's ModelName.
MODEL_NAME: Final = re.compile(r"[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?")
# ModelInvocationPath: segments of unreserved characters joined by '/', no leading '/'.
INVOCATION_PATH: Final = re.compile(r"[A-Za-z0-9\-._]+(?:/[A-Za-z0-9\-._]+)*")
MAX_INVOCATION_PATH: Final = 100
# ModelQueryString: key=value pairs joined by '&'.
QUERY_KEY: Final = re.compile(r"[a-zA-Z0-9][A-Za-z0-9_-]*")
QUERY_VALUE: Final = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+")
MAX_QUERY: Final = 2048
# Lenient (``--lenient-query``): what real Deepgram URLs carry ('+' for spaces,
# ':' and ',' in values, bracketed keys, bare flags, empty values).  Not SageMaker's.
_LENIENT_PAIR: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9\-._~\[\]]*(?:=(?:[A-Za-z0-9\-._~+:,/*]|%[0-9A-Fa-f]{2})*)?"
)


def is_name(value: str) -> bool:
    return len(value) <= MAX_NAME and NAME.fullmatch(value) is not None


def is_invocation_path(value: str) -> bool:
    # The pattern admits "." and ".." segments; refuse them so a path can never
    # climb out of what the container serves.
    if len(value) > MAX_INVOCATION_PATH or INVOCATION_PATH.fullmatch(value) is None:
        return False
    return not any(seg in (".", "..") for seg in value.split("/"))


def _strict_pair(pair: str) -> bool:
    key, sep, value = pair.partition("=")
    return bool(sep) and QUERY_KEY.fullmatch(key) is not None and QUERY_VALUE.fullmatch(value) is not None


def is_query(value: str, *, lenient: bool = False) -> bool:
    if len(value) > MAX_QUERY or not value:
        return False
    if lenient:
        return all(_LENIENT_PAIR.fullmatch(p) for p in value.split("&"))
    return all(_strict_pair(p) for p in value.split("&"))


# The ``shown`` argument of the checks: the form the user typed, when ``value`` is how a
# URL carried it (percent-encoded); an error quotes what the user sent, not its encoding.


def check_name(value: str, what: str, *, shown: str | None = None) -> str:
    if not is_name(value):
        raise InputValidationError(
            f"{what} {shown if shown is not None else value!r} is invalid: at most {MAX_NAME} characters "
            f"matching {NAME.pattern}"
        )
    return value


def check_invocation_path(value: str, *, shown: str | None = None) -> str:
    if not is_invocation_path(value):
        raise InputValidationError(
            f"ModelInvocationPath {shown if shown is not None else value!r} is invalid: at most "
            f"{MAX_INVOCATION_PATH} characters of "
            "[A-Za-z0-9-._] segments joined by '/', without a leading or trailing '/' or '.'/'..' segments"
        )
    return value


def check_query(value: str, *, lenient: bool = False) -> str:
    if not is_query(value, lenient=lenient):
        hint = "" if lenient else " (the gateway's --lenient-query accepts '+' and other common forms)"
        raise InputValidationError(
            f"ModelQueryString {value!r} is invalid: at most {MAX_QUERY} characters of key=value "
            "pairs joined by '&', keys matching [a-zA-Z0-9][A-Za-z0-9_-]*, values of one or more "
            f"unreserved characters or %XX escapes{hint}"
        )
    return value


# ---------------------------------------------------------------------- WebSocket close reason
MAX_CLOSE_REASON: Final = 123  # RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 are the code
_ELLIPSIS: Final = "…"


def close_reason(text: str, limit: int = MAX_CLOSE_REASON) -> str:
    """``text`` as a close reason: valid UTF-8 of at most ``limit`` bytes.

    A longer text is cut at a character boundary and never inside a word (it
    backs off to the last non-word character, unless that would lose more than
    half), and ends with "…" so the reader sees it was cut.  Callers quote what
    the user sent (the decoded text), never a percent-encoded form, so the
    reason reads as the request did.
    """
    data = text.encode("utf-8", "replace")  # a lone surrogate becomes '?'
    clean = data.decode("utf-8")
    if len(data) <= limit:
        return clean
    room = limit - len(_ELLIPSIS.encode())
    cut = data[:room].decode("utf-8", "ignore")  # drops a split multi-byte character
    rest = clean[len(cut) :]
    if cut and rest and cut[-1].isalnum() and rest[0].isalnum():
        boundary = _LAST_NON_WORD.search(cut)
        if boundary is not None and boundary.start() >= len(cut) // 2:
            cut = cut[: boundary.start() + 1]
    return cut.rstrip() + _ELLIPSIS


_LAST_NON_WORD: Final = re.compile(r"[^\w](?=\w*$)")
