"""The session state machine, as a table.

::

    OPENING ──accepted──► OPEN ──input_ended──► HALF_CLOSED
       │                   │                        │
       │                output_ended / failed    output_ended / failed
       │                   ▼                        ▼
       └──failed──────► CLOSING ◄───────────────────┘
                           │ closed
                           ▼
                         CLOSED

"input" is what the client sends, "output" what the model yields.  A pair
missing from the table is a protocol error: the caller closes the session
with a clear reason instead of guessing.
"""

from __future__ import annotations

import enum

from bidistream.errors import InternalError


class State(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    HALF_CLOSED = "half-closed"
    CLOSING = "closing"
    CLOSED = "closed"


class Event(enum.Enum):
    ACCEPTED = "accepted"
    INPUT_ENDED = "input_ended"
    OUTPUT_ENDED = "output_ended"
    FAILED = "failed"
    CLOSED = "closed"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.OPENING, Event.ACCEPTED): State.OPEN,
    (State.OPENING, Event.FAILED): State.CLOSING,
    (State.OPENING, Event.CLOSED): State.CLOSED,
    (State.OPEN, Event.INPUT_ENDED): State.HALF_CLOSED,
    (State.OPEN, Event.OUTPUT_ENDED): State.CLOSING,
    (State.OPEN, Event.FAILED): State.CLOSING,
    (State.OPEN, Event.CLOSED): State.CLOSED,
    (State.HALF_CLOSED, Event.OUTPUT_ENDED): State.CLOSING,
    (State.HALF_CLOSED, Event.FAILED): State.CLOSING,
    (State.HALF_CLOSED, Event.CLOSED): State.CLOSED,
    (State.CLOSING, Event.INPUT_ENDED): State.CLOSING,
    (State.CLOSING, Event.OUTPUT_ENDED): State.CLOSING,
    (State.CLOSING, Event.FAILED): State.CLOSING,
    (State.CLOSING, Event.CLOSED): State.CLOSED,
}


class SessionStateError(InternalError):
    code = "SessionStateError"


class SessionMachine:
    """Tracks one session's state; ``feed`` returns the new state or raises."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.OPENING

    def feed(self, event: Event) -> State:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise SessionStateError(f"event {event.value!r} is not valid in state {self.state.value!r}")
        self.state = nxt
        return nxt
