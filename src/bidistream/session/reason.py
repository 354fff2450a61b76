"""WebSocket close reasons that always fit and always decode.

RFC 6455 §5.5 caps a control frame's payload at 125 bytes, two of which are
the close code, and §5.5.1 requires the reason to be valid UTF-8 (a strict
peer fails the connection with 1007 otherwise).  Cutting the encoded bytes at
123 can split a multi-byte character; cutting here happens at a character
boundary, at a word where one is near, and marks the cut with "…".
"""

from __future__ import annotations

__all__ = ["MAX_CLOSE_REASON", "close_reason"]

#: Bytes of reason a close frame can carry (125 minus the 2-byte code).
MAX_CLOSE_REASON = 123

_ELLIPSIS = "…"
# A word boundary further back than this is not worth the lost text.
_WORD_SLACK = 24


def close_reason(text: str, limit: int = MAX_CLOSE_REASON) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else a shorter prefix ending in "…"."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(_ELLIPSIS.encode("utf-8"))
    # Decoding with "ignore" drops a trailing partial character: the cut is at a boundary.
    head = data[:room].decode("utf-8", "ignore")
    rest = text[len(head) :]
    if head and rest and head[-1].isalnum() and rest[0].isalnum():
        # The cut splits a word: end at the word before it, unless that loses too much.
        space = head.rfind(" ")
        if space > 0 and len(head) - space <= _WORD_SLACK:
            head = head[:space]
    return head.rstrip() + _ELLIPSIS
