"""What a transport tells the session: one typed event per observable fact.

The adapters (HTTP/2 door, WebSocket door, the model server) translate their
wire into these and feed them to :meth:`BidiSession.handle`.  "Client" is the
party that opened the session (an SDK behind the gateway, or the gateway
behind the model server); "instance" is what serves it (the model container's
WebSocket, or the model itself inside the container).

Frame payloads travel as ``(data, text, fin)`` rather than as
:class:`~bidistream.frames.Frame` objects: the relay's hot path creates one
event and one action per frame and nothing else.  ``text=None`` is a
continuation fragment (WebSocket opcode CONT): the session knows which kind of
message it continues.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bidistream.errors import BidistreamError

__all__ = [
    "ClientBlocked",
    "ClientBytes",
    "ClientEnded",
    "ClientFailed",
    "ClientGone",
    "ClientPart",
    "ClientWritable",
    "ConnectFailed",
    "Event",
    "Failed",
    "InstanceBlocked",
    "InstanceClosed",
    "InstanceConnected",
    "InstanceFrame",
    "InstancePong",
    "InstanceWritable",
    "Start",
    "Timer",
    "TimerFired",
]


class Timer(enum.Enum):
    """The session's timers.  The adapter owns the clock and reports each as :class:`TimerFired`."""

    __hash__ = object.__hash__

    # After the instance accepted: how long to wait for a sign it kept the session.
    CONFIRM = "confirm"
    # After the client ended its input: how long the instance gets to finish.
    CLOSE = "close"
    # After the gateway sent its close to the instance: how long before the transport is cut.
    ABORT = "abort"
    # The keepalive tick (one shared ticker delivers it to every live session).
    PING = "ping"
    # The idle tick: two ticks in a row without a frame close the session.
    IDLE = "idle"
    # The session's whole-life cap.
    MAX_DURATION = "max_duration"


@dataclass(slots=True)
class Start:
    """The adapter validated the request and wants the session opened."""


@dataclass(slots=True)
class ClientPart:
    """One frame (or fragment) from the client."""

    #: the payload, relayed untouched
    data: bytes
    #: True text, False binary, None a continuation of the current message
    text: bool | None
    #: False for a fragment that more of the same message follows
    fin: bool


@dataclass(slots=True)
class ClientBytes:
    """The client's transport received ``n`` flow-controlled bytes (HTTP/2 DATA).

    Delivered once per socket read, after the read's parts: the session
    acknowledges them when the instance can take more, so one read costs one
    window computation.
    """

    n: int


@dataclass(slots=True)
class ClientEnded:
    """The client finished its input (END_STREAM, or a WebSocket close frame)."""


@dataclass(slots=True)
class ClientGone:
    """The client vanished: stream reset, connection lost, socket aborted."""

    reason: str = "client went away"


@dataclass(slots=True)
class ClientFailed:
    """The client sent something invalid (bad event, bad signature)."""

    error: BidistreamError


@dataclass(slots=True)
class ClientBlocked:
    """The client's outbound queue passed its high-water mark."""


@dataclass(slots=True)
class ClientWritable:
    """The client's window opened (WINDOW_UPDATE, transport drained) below low water."""


@dataclass(slots=True)
class InstanceConnected:
    """The instance accepted the upgrade (101)."""

    #: the production variant the router chose, for the response headers
    variant: str = "AllTraffic"


@dataclass(slots=True)
class ConnectFailed:
    """No candidate instance took the session (or the model refused the upgrade)."""

    error: BidistreamError


@dataclass(slots=True)
class InstanceFrame:
    """One frame (or fragment) from the instance; ``text`` as in :class:`ClientPart`."""

    data: bytes
    text: bool | None
    fin: bool


@dataclass(slots=True)
class InstancePong:
    """The instance answered a ping."""


@dataclass(slots=True)
class InstanceClosed:
    """The instance's connection is gone; ``error`` is None for a normal close (1000)."""

    error: BidistreamError | None = None


@dataclass(slots=True)
class InstanceBlocked:
    """Writes to the instance backed up (its transport's ``pause_writing``)."""


@dataclass(slots=True)
class InstanceWritable:
    """The instance's transport drained (``resume_writing``)."""


@dataclass(slots=True)
class TimerFired:
    """A timer the session asked for (or the shared keepalive tick) went off."""

    timer: Timer


@dataclass(slots=True)
class Failed:
    """The serving side ends the session: shutdown, or a fault of its own."""

    error: BidistreamError


Event = (
    Start
    | ClientPart
    | ClientBytes
    | ClientEnded
    | ClientGone
    | ClientFailed
    | ClientBlocked
    | ClientWritable
    | InstanceConnected
    | ConnectFailed
    | InstanceFrame
    | InstancePong
    | InstanceClosed
    | InstanceBlocked
    | InstanceWritable
    | TimerFired
    | Failed
)
