"""Checks RFC 6455 asks of a WebSocket server that aiohttp does not make, sans-I/O.

aiohttp unmasks a client frame when it is masked and reads it anyway when it
is not, and it accepts any close code from 3000 up (5000, 65535) and 1006.
RFC 6455 says a server MUST close on an unmasked client frame (§5.1) and that
1005, 1006, 1015 and codes outside 1000–4999 are never sent (§7.4.1–7.4.2), so
our server closes with 1002 on both.  :class:`MaskCheck` sees the client's
bytes before aiohttp's reader does and reads only frame headers.
"""

from __future__ import annotations

__all__ = ["MaskCheck", "close_code_problem"]

# Close codes a peer may put on the wire: RFC 6455 §7.4.1 plus IANA's 1012–1014,
# and the 3000–4999 ranges for libraries and applications.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def close_code_problem(code: int) -> str | None:
    """Why a received close code is a protocol error, or None (0: a close without a code)."""
    if code == 0 or code in _SENDABLE or 3000 <= code <= 4999:
        return None
    return f"close code {code} may not be sent on the wire (RFC 6455 §7.4)"


class MaskCheck:
    """Walks client→server frame headers; :meth:`feed` names the first unmasked frame."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = bytearray()  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> str | None:
        pos, n = 0, len(data)
        head = self._head
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            if len(head) < 2:
                take = min(2 - len(head), n - pos)
                head += data[pos : pos + take]
                pos += take
                if len(head) < 2:
                    return None
                if not head[1] & 0x80:
                    return "client frame not masked (RFC 6455 §5.1)"
            short = head[1] & 0x7F
            size = 2 + (2 if short == 126 else 8 if short == 127 else 0) + 4  # + masking key
            take = min(size - len(head), n - pos)
            head += data[pos : pos + take]
            pos += take
            if len(head) < size:
                return None
            self._skip = short if size == 6 else int.from_bytes(head[2 : size - 4], "big")
            head.clear()
        return None
