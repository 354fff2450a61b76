"""One socket write per batch of small WebSocket data frames, not one per frame.

Profiling the model server's echo under load (32 messages in flight, 64 B
each) put a third of its CPU in ``transport.write``: one ``write()`` system
call per frame, and on loopback the kernel also runs the receiver's TCP input
inside that call.  The frames of one batch (everything the session task
produces before it next waits) leave in one write instead.

:class:`CorkedTransport` sits where aiohttp's WebSocket writer keeps its
transport, so every frame the writer sends (data, ping, pong, close) passes
it in order.  A small data frame is held until the end of the current turn
of the event loop (``call_soon``); anything else flushes what is held and
goes out at once:

* a control frame (close, ping, pong): aiohttp may close the transport right
  after sending its close, and nothing held may be lost or overtake it;
* a write of :data:`CORK_LIMIT` bytes or more, or a batch that reaches it:
  the real transport then sees the bytes (and pauses the writer when its
  buffer is full) exactly as before, so backpressure holds with at most
  :data:`CORK_LIMIT` bytes in between.

Nothing is held across an await of the session task: the flush runs before
the loop polls the sockets again, so one message in flight (latency) sees no
difference.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CORK_LIMIT", "CorkedTransport"]

# Bytes held before they are written at once; larger writes are never held.
CORK_LIMIT = 16 * 1024
# Opcodes 8-15 are control frames (RFC 6455 §5.5): their first byte has this bit.
_CONTROL = 0x08


class CorkedTransport:
    """The transport aiohttp's ``WebSocketWriter`` writes to; holds small data frames for one loop turn."""

    __slots__ = ("_held", "_loop", "_scheduled", "_size", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        n = len(data)
        if n and not data[0] & _CONTROL and self._size + n < CORK_LIMIT:
            self._held.append(data)
            self._size += n
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush_soon)
            return
        if self._held:
            self.flush()
        self.transport.write(data)

    def flush(self) -> None:
        """Write what is held, in one call."""
        held = self._held
        if not held:
            return
        self._held = []
        self._size = 0
        if self.transport.is_closing():
            return  # the peer is gone: aiohttp refuses writes from here on too
        self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def writelines(self, data: Any) -> None:
        self.flush()
        self.transport.writelines(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = []
        self._size = 0
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Whatever else a caller asks of a transport (none of it writes).
        return getattr(self.transport, name)
