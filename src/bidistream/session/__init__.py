"""The sans-I/O bidi session core: events in, actions out, transitions in one table.

Every door that relays a session (the gateway's HTTP/2 event stream and
WebSocket front door, the model server's WebSocket) feeds one
:class:`BidiSession` with :mod:`events <bidistream.session.events>` and executes
the :mod:`actions <bidistream.session.actions>` it returns.  See
:mod:`bidistream.session.machine` for the state diagram and the table.
"""

from bidistream.session import actions, events
from bidistream.session.machine import TRANSITIONS, BidiSession, Input, SessionLimits, State
from bidistream.session.reason import MAX_CLOSE_REASON, close_reason

__all__ = [
    "MAX_CLOSE_REASON",
    "TRANSITIONS",
    "BidiSession",
    "Input",
    "SessionLimits",
    "State",
    "actions",
    "close_reason",
    "events",
]
