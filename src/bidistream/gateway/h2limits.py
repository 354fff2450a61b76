"""Connection-level limits of the HTTP/2 front door, sans-I/O.

``h2`` parses a frame only once all of it has arrived and counts nothing, so
three attacks cost the gateway without costing the client: a frame header
declaring 16 MiB makes h2 buffer up to 16 MiB before it checks the length
(RFC 9113 §4.2 says reject at once); a flood of cheap frames (PING, SETTINGS,
RST_STREAM, PRIORITY, WINDOW_UPDATE, empty DATA: the CVE-2019-9512/9515/9518
and CVE-2023-44487 class) burns CPU and starves every other session; a client
that stops in the middle of a frame or of the connection preface holds its
buffer forever.  :class:`FrameGuard` sees every byte before h2 does, reads
only the 9-byte frame headers (payloads are skipped, never copied) and says
when the connection must end and with which GOAWAY code.  It keeps no clock:
the caller passes ``now`` and asks :meth:`FrameGuard.deadline` when to call
:meth:`FrameGuard.check` again.

:class:`BodyBudget` bounds the InvokeEndpoint bodies one connection holds in
memory: a body is admitted whole while the connection's reservations fit, and
a waiting body's DATA is not acknowledged (WINDOW_UPDATE) until an earlier
body is consumed, so a client that opens many large bodies waits on its own
windows instead of growing the gateway.

:func:`request_header_problem` applies RFC 9113 §8.2–8.3 to a request's header
block.  h2 can do it itself (``validate_inbound_headers=True``), but it then
treats a malformed request as a *connection* error and every neighbour stream
dies with it; §8.1.1 makes it a stream error, so the front door validates per
stream and resets only the offender.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import h2.exceptions
import h2.utilities

__all__ = ["BodyBudget", "ErrorCode", "FrameGuard", "Violation", "request_header_problem"]

PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113 §3.4)
HEADER_LEN = 9


class ErrorCode(IntEnum):
    """The RFC 9113 §7 codes this module can ask for (values as on the wire)."""

    PROTOCOL_ERROR = 0x1
    FRAME_SIZE_ERROR = 0x6
    ENHANCE_YOUR_CALM = 0xB


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


_END_STREAM = 0x1

# Frames that carry no application data and cost the server work to answer
# or book-keep; a client sends a handful of them per stream, not thousands a
# second.  Empty DATA counts unless it ends the stream (that one is legal once).
_CONTROL = frozenset({FrameType.PING, FrameType.SETTINGS, FrameType.PRIORITY, FrameType.RST_STREAM})


@dataclass(frozen=True, slots=True)
class Violation:
    """Why the connection must end: the GOAWAY code and a message for its debug data."""

    code: ErrorCode
    message: str


class _Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = now

    def take(self, n: int, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.last = now
        self.tokens -= n
        return self.tokens >= 0


class FrameGuard:
    """Watches one server-side HTTP/2 connection's inbound bytes, frame header by frame header.

    Feed it exactly the bytes given to ``H2Connection.receive_data``, before
    h2 sees them.  It is cheap on the hot path: one slice and three integer
    reads per frame, token buckets charged once per read.
    """

    __slots__ = (
        "_control",
        "_head",
        "_preface_left",
        "_skip",
        "_started",
        "_updates",
        "frame_timeout",
        "max_frame_size",
    )

    def __init__(
        self,
        *,
        max_frame_size: int,
        control_frames_per_second: float,
        control_frame_burst: int,
        window_updates_per_second: float,
        window_update_burst: int,
        frame_timeout: float,
        now: float,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.frame_timeout = frame_timeout
        self._control = _Bucket(control_frames_per_second, control_frame_burst, now)
        self._updates = _Bucket(window_updates_per_second, window_update_burst, now)
        self._preface_left = PREFACE_LEN
        self._head = bytearray()  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._started = now  # when the incomplete frame (or the preface) began

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes | bytearray | memoryview, now: float) -> Violation | None:
        """Account ``data``; a :class:`Violation` means send GOAWAY with its code and close."""
        n = len(data)
        pos = 0
        if self._preface_left:
            take = min(self._preface_left, n)
            self._preface_left -= take
            pos = take
            if self._preface_left:
                return None
            self._started = now
        control = 0
        updates = 0
        max_size = self.max_frame_size
        head = self._head
        while pos < n:
            skip = self._skip
            if skip:
                take = min(skip, n - pos)
                self._skip = skip - take
                pos += take
                continue
            if head:
                need = HEADER_LEN - len(head)
                head += data[pos : pos + need]
                pos += need
                if len(head) < HEADER_LEN:
                    break
                header: bytes | bytearray | memoryview = bytes(head)
                head.clear()
            elif n - pos >= HEADER_LEN:
                header = data[pos : pos + HEADER_LEN]
                pos += HEADER_LEN
                self._started = now
            else:
                self._started = now
                head += data[pos:]
                break
            length = (header[0] << 16) | (header[1] << 8) | header[2]
            if length > max_size:
                return Violation(
                    ErrorCode.FRAME_SIZE_ERROR,
                    f"frame declares {length} bytes, above SETTINGS_MAX_FRAME_SIZE {max_size}",
                )
            ftype = header[3]
            if ftype in _CONTROL:
                control += 1
            elif ftype == FrameType.WINDOW_UPDATE:
                updates += 1
            elif ftype == FrameType.DATA and length == 0 and not header[4] & _END_STREAM:
                control += 1
            self._skip = length
        if control and not self._control.take(control, now):
            return Violation(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"more than {self._control.rate:g} control frames a second "
                "(PING, SETTINGS, PRIORITY, RST_STREAM, empty DATA)",
            )
        if updates and not self._updates.take(updates, now):
            return Violation(
                ErrorCode.ENHANCE_YOUR_CALM, f"more than {self._updates.rate:g} WINDOW_UPDATE frames a second"
            )
        return None

    # ------------------------------------------------------------------ time
    @property
    def incomplete(self) -> bool:
        """True while the preface or a frame has begun but not fully arrived."""
        return bool(self._preface_left or self._skip or self._head)

    def deadline(self) -> float | None:
        """When the incomplete preface or frame times out; None when nothing is pending."""
        return self._started + self.frame_timeout if self.incomplete else None

    def check(self, now: float) -> Violation | None:
        """A violation if the preface or the current frame has not arrived within ``frame_timeout``."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return None
        what = "connection preface" if self._preface_left else "frame"
        return Violation(
            ErrorCode.PROTOCOL_ERROR, f"{what} not complete within {self.frame_timeout:g} s of its first byte"
        )


class BodyBudget:
    """Request bodies one connection may buffer at once, admitted whole so none starves.

    A body is *admitted* with a reservation (its ``content-length``, or the
    largest body allowed when it declares none) if the reservations fit in
    ``limit``, or if nothing else is admitted (one body always proceeds).  An
    admitted body's DATA is acknowledged as it arrives; a waiting body's
    acknowledgements are owed, which keeps its client's stream window shut,
    and paid when an earlier body is consumed and the waiting one is admitted.
    Admission is first come, first served, so bodies never deadlock each other
    halfway, and what the connection holds stays within ``limit`` plus one
    initial stream window per waiting body.
    """

    __slots__ = ("admitted", "limit", "reserved", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0
        self.admitted: dict[int, int] = {}  # stream id -> bytes reserved
        self.waiting: dict[int, list[int]] = {}  # stream id -> [reservation, owed acknowledgement]

    def open(self, sid: int, reserve: int) -> bool:
        """A body begins; True when it is admitted at once."""
        if not self.waiting and (not self.admitted or self.reserved + reserve <= self.limit):
            self.admitted[sid] = reserve
            self.reserved += reserve
            return True
        self.waiting[sid] = [reserve, 0]
        return False

    def hold(self, sid: int, fc_len: int) -> int:
        """DATA of ``fc_len`` flow-controlled bytes arrived for ``sid``; return what to acknowledge now."""
        entry = self.waiting.get(sid)
        if entry is None:
            return fc_len
        entry[1] += fc_len
        return 0

    def release(self, sid: int) -> list[tuple[int, int]]:
        """``sid``'s body is consumed or dropped; return ``(sid, n)`` acknowledgements now due."""
        self.waiting.pop(sid, None)
        reserve = self.admitted.pop(sid, None)
        if reserve is not None:
            self.reserved -= reserve
        due: list[tuple[int, int]] = []
        for wsid, (want, owed) in list(self.waiting.items()):
            if self.admitted and self.reserved + want > self.limit:
                break
            del self.waiting[wsid]
            self.admitted[wsid] = want
            self.reserved += want
            if owed:
                due.append((wsid, owed))
        return due


_REQUEST_FLAGS = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)


def request_header_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """What makes this request header block malformed (RFC 9113 §8.2–8.3), or None.

    Uses h2's own validator (so the rules are the maintained ones: lowercase
    names, no connection-specific fields, ``te`` only ``trailers``, each
    mandatory pseudo-header once and before regular fields, no ``:protocol``
    without extended CONNECT), but per stream.
    """
    try:
        for _ in h2.utilities.validate_headers(headers, _REQUEST_FLAGS):
            pass
    except h2.exceptions.ProtocolError as exc:
        return str(exc)
    return None
