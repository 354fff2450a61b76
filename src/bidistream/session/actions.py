"""What the session asks its adapter to do, one typed action per side effect.

An adapter executes the actions :meth:`BidiSession.handle` returns, in order,
and owns every socket and clock: the session never touches either.  Frame
actions carry ``cont``: True when the frame continues a fragmented message
(WebSocket opcode CONT), so no adapter tracks fragments itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from bidistream.errors import BidistreamError
from bidistream.session.events import Timer

__all__ = [
    "Accept",
    "Acknowledge",
    "Action",
    "CancelTimer",
    "CloseInstance",
    "CloseInstanceInput",
    "ConnectInstance",
    "DisconnectInstance",
    "EndClient",
    "PauseClientReads",
    "PauseInstanceReads",
    "PingInstance",
    "Refuse",
    "ResumeClientReads",
    "ResumeInstanceReads",
    "SendToClient",
    "SendToInstance",
    "StartTimer",
]


@dataclass(slots=True)
class ConnectInstance:
    """Open a connection to the next candidate instance.

    ``retry`` is set when the last candidate took the upgrade and then said it
    was full; ``after`` is what it said (the error to report if none is left).
    """

    retry: bool = False
    after: BidistreamError | None = None


@dataclass(slots=True)
class SendToInstance:
    data: bytes
    text: bool
    fin: bool
    cont: bool


@dataclass(slots=True)
class SendToClient:
    data: bytes
    text: bool
    fin: bool
    cont: bool


@dataclass(slots=True)
class PingInstance:
    """Send a WebSocket ping to the instance (confirmation probe or keepalive)."""


@dataclass(slots=True)
class CloseInstanceInput:
    """The client is done sending: a normal close (1000); the instance answers with its own."""


@dataclass(slots=True)
class CloseInstance:
    """End the instance connection with ``code`` and ``reason`` (already cut to fit a close frame)."""

    code: int
    reason: str


@dataclass(slots=True)
class DisconnectInstance:
    """Cut the instance transport now: cancel a connect in flight and abort its socket."""


@dataclass(slots=True)
class Accept:
    """The session is on: start the client's response (HTTP/2: status 200 and headers)."""

    variant: str


@dataclass(slots=True)
class Refuse:
    """Fail before the response started: the client's wire says ``error`` its own way."""

    error: BidistreamError


@dataclass(slots=True)
class EndClient:
    """End the client's side: with ``error`` said in-stream, or cleanly when it is None."""

    error: BidistreamError | None


@dataclass(slots=True)
class Acknowledge:
    """Give the client ``n`` bytes of flow-control window back (HTTP/2 WINDOW_UPDATE)."""

    n: int


@dataclass(slots=True)
class PauseClientReads:
    pass


@dataclass(slots=True)
class ResumeClientReads:
    pass


@dataclass(slots=True)
class PauseInstanceReads:
    pass


@dataclass(slots=True)
class ResumeInstanceReads:
    pass


@dataclass(slots=True)
class StartTimer:
    timer: Timer
    seconds: float


@dataclass(slots=True)
class CancelTimer:
    timer: Timer


Action = (
    ConnectInstance
    | SendToInstance
    | SendToClient
    | PingInstance
    | CloseInstanceInput
    | CloseInstance
    | DisconnectInstance
    | Accept
    | Refuse
    | EndClient
    | Acknowledge
    | PauseClientReads
    | ResumeClientReads
    | PauseInstanceReads
    | ResumeInstanceReads
    | StartTimer
    | CancelTimer
)
