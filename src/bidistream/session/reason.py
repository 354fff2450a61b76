"""WebSocket close reasons that always fit and always decode.

RFC 6455 §5.5 caps a control frame's payload at 125 bytes, two of which are the close code, and
§5.5.1 requires the reason to be valid UTF-8. The one cut lives in :mod:`bidistream.contract`
(every WebSocket close uses it); the session core re-exports it so its table needs no other layer.
"""

from __future__ import annotations

from bidistream.contract import MAX_CLOSE_REASON, close_reason

__all__ = ["MAX_CLOSE_REASON", "close_reason"]
