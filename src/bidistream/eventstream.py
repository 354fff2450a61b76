"""AWS event-stream framing for the SageMaker runtime API, over ``smithy-aws-event-stream``.

The codec (CRCs, header types, limits) is the library's: it is the one the
official client uses, so what we encode is byte-identical to what it expects
(the response vectors in ``shared/vectors`` re-encode exactly).  This module
adds only what the library leaves to a server:

* reassembly by length prefix (:class:`EventStreamDecoder`): HTTP/2 DATA frames
  split and join events freely, so events are cut by their own 4-byte total
  length, never by frame, and an oversized length is refused *before* its bytes
  are buffered;
* the signed envelope: every request event is an outer message holding only
  ``:date`` and ``:chunk-signature`` whose payload is the encoded inner event;
  :func:`unwrap` returns both parts so :mod:`bidistream.sigv4` can check the
  chain, and tells the final empty envelope (client 0.12) apart;
* the three response shapes the client knows: ``PayloadPart``,
  ``ModelStreamError`` and ``InternalStreamFailure``.

Everything here is sans-I/O and raises only :mod:`bidistream.errors` types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from struct import error as struct_error
from struct import unpack_from

from smithy_aws_event_stream.events import (
    HEADERS_DICT,
    EventHeaderDecoder,
    EventHeaderEncoder,
    EventMessage,
    _EventEncoder,
    _validate_checksum,
)
from smithy_aws_event_stream.exceptions import EventError

from bidistream.errors import InputValidationError, InvalidFrameError, MessageTooLargeError

__all__ = [
    "MAX_EVENT_SIZE",
    "EventStreamDecoder",
    "PayloadPart",
    "SignedEvent",
    "decode_message",
    "encode_internal_stream_failure",
    "encode_model_stream_error",
    "encode_payload_part",
    "parse_payload_part",
    "unwrap",
]

# The codec's own bounds: 128 KiB of headers, 16 MiB of payload, 16 bytes of
# prelude and CRCs.  A signed envelope adds its 67 header bytes and 16 framing
# bytes around an inner event that may itself be this big.
MAX_EVENT_SIZE = 16 * 1024 * 1024 + 128 * 1024 + 16
_ENVELOPE_OVERHEAD = 83
_MIN_EVENT_SIZE = 16
_MAX_HEADERS = 128 * 1024
_PRELUDE = 12

DATA_TYPES = frozenset({"UTF8", "BINARY"})
COMPLETION_STATES = frozenset({"PARTIAL", "COMPLETE"})

# ``:date`` as encoded on the wire (name length, name, type 8 = timestamp); the
# chunk signature covers these bytes plus the 8-byte value, exactly as sent.
_DATE_HEADER_PREFIX = b"\x05:date\x08"


# PayloadPart and SignedEvent are built once per relayed request event; they are
# not frozen because a frozen dataclass sets each field through
# object.__setattr__ (2 µs per instance here, a tenth of unwrap's cost).  Treat
# them as read-only.
@dataclass(slots=True)
class PayloadPart:
    """One ``PayloadPart`` event, request or response.

    ``data_type`` and ``completion_state`` are None when the event omits them
    (the API then means BINARY and COMPLETE).
    """

    data: bytes
    data_type: str | None = None
    completion_state: str | None = None
    p: str | None = None

    @property
    def is_text(self) -> bool:
        return self.data_type == "UTF8"

    @property
    def complete(self) -> bool:
        return self.completion_state != "PARTIAL"


@dataclass(slots=True)
class SignedEvent:
    """A request event as received: its envelope (if signed) and its inner event.

    ``part`` is None for the final empty envelope that ends client 0.12's input.
    ``date_header`` holds the raw ``:date`` header bytes the chunk signature
    covers; ``signature`` the 32 raw signature bytes (both None when unsigned).
    """

    part: PayloadPart | None
    inner: bytes
    date_header: bytes | None = None
    date_ms: int | None = None
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded event message: its headers and payload (library types for the values)."""

    headers: HEADERS_DICT
    payload: bytes


# Why not ``Event.decode`` for every message: on this project's VMs it costs
# ~40 µs per message, nearly all of it in decoding headers, against a budget of
# ~30 µs of gateway CPU per relayed message pair.  Header blocks repeat (every
# PayloadPart of one kind has identical header bytes), so decoded blocks are
# cached; prelude bounds (``EventPrelude``) and both CRCs (``_validate_checksum``)
# are still the library's code.  The envelope's two headers are recognised by
# their exact wire layout and fall back to the library decoder otherwise.
_HEADER_CACHE: dict[bytes, HEADERS_DICT] = {}
_HEADER_CACHE_MAX = 256
_SIG_HEADER_PREFIX = b"\x10:chunk-signature\x06\x00\x20"


def _decode_headers(block: bytes) -> HEADERS_DICT:
    headers = _HEADER_CACHE.get(block)
    if headers is None:
        headers = EventHeaderDecoder(block).decode_headers()
        if len(_HEADER_CACHE) < _HEADER_CACHE_MAX:
            _HEADER_CACHE[block] = headers
    return headers


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """Check one complete message's prelude and CRCs; return (header block, payload)."""
    try:
        total, head_len, prelude_crc = unpack_from(">III", raw)
        if total != len(raw) or head_len > total - _MIN_EVENT_SIZE or head_len > _MAX_HEADERS:
            raise InvalidFrameError("malformed event-stream message: length prefix does not match its bytes")
        _validate_checksum(raw[:8], prelude_crc)
        _validate_checksum(raw[8 : total - 4], unpack_from(">I", raw, total - 4)[0], prelude_crc)
    except EventError as exc:
        raise InvalidFrameError(f"malformed event-stream message: {type(exc).__name__}: {exc}") from exc
    except struct_error as exc:
        raise InvalidFrameError("malformed event-stream message: truncated") from exc
    return raw[_PRELUDE : _PRELUDE + head_len], raw[_PRELUDE + head_len : total - 4]


def decode_message(raw: bytes) -> Message:
    """Decode exactly one complete event, CRCs checked."""
    block, payload = _split(raw)
    try:
        return Message(_decode_headers(block), payload)
    except EventError as exc:
        raise InvalidFrameError(f"malformed event-stream headers: {type(exc).__name__}: {exc}") from exc
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, struct_error) as exc:
        raise InvalidFrameError(f"malformed event-stream headers: {type(exc).__name__}: {exc}") from exc


class EventStreamDecoder:
    """Cuts a byte stream into complete event messages (sans-I/O).

    ``feed`` returns the raw bytes of each complete message; ``finish`` says
    whether the stream ended cleanly on a message boundary.  ``max_size`` is a
    security limit: a length above it is refused before any of it is buffered.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_EVENT_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        if not buf:
            # Fast path: the common case is one whole event per DATA frame.
            n = len(data)
            if n >= _PRELUDE:
                total = unpack_from(">I", data)[0]
                if total == n and _MIN_EVENT_SIZE <= total <= self.max_size:
                    return [data]
        buf += data
        out: list[bytes] = []
        while len(buf) >= 4:
            total = unpack_from(">I", buf)[0]
            if total < _MIN_EVENT_SIZE:
                raise InvalidFrameError(
                    f"malformed event-stream message: total length {total} is below the 16-byte minimum"
                )
            if total > self.max_size:
                raise MessageTooLargeError(
                    f"event-stream message of {total} bytes exceeds the limit of {self.max_size} bytes"
                )
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    def finish(self) -> None:
        """The input ended: anything still buffered is a truncated message."""
        if self._buf:
            left = len(self._buf)
            self._buf.clear()
            what = "prelude" if left < _PRELUDE else "message"
            raise InvalidFrameError(f"event stream ended inside a {what} ({left} bytes left over)")


def _str_header(headers: object, name: str) -> str | None:
    value = headers.get(name) if isinstance(headers, dict) else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputValidationError(f"event header {name} must be a string")
    return value


def parse_payload_part(message: Message) -> PayloadPart:
    """The inner modeled event; only ``PayloadPart`` exists in the request union."""
    headers = message.headers
    mtype = headers.get(":message-type")
    etype = headers.get(":event-type")
    if mtype != "event" or etype != "PayloadPart":
        raise InputValidationError(
            f"unexpected request event (:message-type={mtype!r}, :event-type={etype!r}); "
            "only PayloadPart events are accepted"
        )
    data_type = _str_header(headers, "DataType")
    if data_type is not None and data_type not in DATA_TYPES:
        raise InputValidationError(f"DataType must be UTF8 or BINARY, not {data_type!r}")
    state = _str_header(headers, "CompletionState")
    if state is not None and state not in COMPLETION_STATES:
        raise InputValidationError(f"CompletionState must be PARTIAL or COMPLETE, not {state!r}")
    return PayloadPart(message.payload, data_type, state, _str_header(headers, "P"))


def unwrap(raw: bytes) -> SignedEvent:
    """Decode one request event: signed envelope around a PayloadPart, or a bare event."""
    block, inner = _split(raw)
    if len(block) == 67 and block.startswith(_DATE_HEADER_PREFIX) and block[15:30] == _SIG_HEADER_PREFIX:
        # The official client's envelope: :date then :chunk-signature, nothing else.
        date_header = block[:15]
        signature = block[35:67]
    else:
        try:
            headers = _decode_headers(block)
        except (EventError, ValueError, IndexError, KeyError, UnicodeDecodeError, struct_error) as exc:
            raise InvalidFrameError(f"malformed event-stream headers: {type(exc).__name__}: {exc}") from exc
        sig = headers.get(":chunk-signature")
        if sig is None and ":message-type" in headers:
            # Unsigned client (no SigV4 configured): the event itself, no envelope.
            return SignedEvent(parse_payload_part(Message(headers, inner)), raw)
        at = block.find(_DATE_HEADER_PREFIX)
        if not isinstance(sig, bytes) or at < 0 or len(block) < at + 15:
            raise InvalidFrameError(
                "request event has neither an envelope (:date, :chunk-signature) nor a type"
            )
        # The signature covers the :date header exactly as sent.
        date_header = block[at : at + 15]
        signature = sig
    date_ms = unpack_from(">q", date_header, 7)[0]
    if not inner:
        return SignedEvent(None, b"", date_header, date_ms, signature)
    inner_block, payload = _split(inner)
    meta = _PART_META.get(inner_block)
    if meta is None:
        part = parse_payload_part(decode_message(inner))
        if len(_PART_META) < _HEADER_CACHE_MAX:
            _PART_META[inner_block] = (part.data_type, part.completion_state, part.p)
        return SignedEvent(part, inner, date_header, date_ms, signature)
    return SignedEvent(PayloadPart(payload, *meta), inner, date_header, date_ms, signature)


# Validated (DataType, CompletionState, P) per inner header block: the official
# client sends the same few blocks over and over.
_PART_META: dict[bytes, tuple[str | None, str | None, str | None]] = {}


# Response headers in the order the real service sends them (see the payload-part
# vector); one dict per (DataType, CompletionState) so the hot path builds none.
_PART_HEADERS: dict[tuple[bool, bool], dict[str, str]] = {
    (text, complete): {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        "DataType": "UTF8" if text else "BINARY",
        "CompletionState": "COMPLETE" if complete else "PARTIAL",
        ":content-type": "application/octet-stream",
    }
    for text in (True, False)
    for complete in (True, False)
}
_BARE_PART_HEADERS = {
    ":message-type": "event",
    ":event-type": "PayloadPart",
    ":content-type": "application/octet-stream",
}


_ENCODER = _EventEncoder()


def _header_bytes(headers: HEADERS_DICT) -> bytes:
    enc = EventHeaderEncoder()
    enc.encode_headers(headers)
    return enc.get_result()


# Header blocks encoded once by the library; per event only the prelude, payload
# and CRCs are produced (again by the library's encoder).
_PART_BLOCKS = {key: _header_bytes(h) for key, h in _PART_HEADERS.items()}
_BARE_PART_BLOCK = _header_bytes(_BARE_PART_HEADERS)


def encode_payload_part(data: bytes, *, text: bool | None = None, complete: bool = True) -> bytes:
    """A response PayloadPart; ``text=None`` omits DataType/CompletionState (response-stream API)."""
    block = _BARE_PART_BLOCK if text is None else _PART_BLOCKS[text, complete]
    return _ENCODER.encode_bytes(headers=block, payload=data)


def _exception(kind: str, body: dict[str, str]) -> bytes:
    return EventMessage(
        headers={
            ":message-type": "exception",
            ":exception-type": kind,
            ":content-type": "application/json",
        },
        payload=json.dumps(body, separators=(",", ":")).encode(),
    ).encode()


def encode_model_stream_error(message: str, error_code: str | None = None) -> bytes:
    """The in-stream failure the client raises as ``ModelStreamError(message, error_code)``."""
    body = {"Message": message}
    if error_code is not None:
        body["ErrorCode"] = error_code
    return _exception("ModelStreamError", body)


def encode_internal_stream_failure(message: str) -> bytes:
    """The in-stream gateway fault the client raises as ``InternalStreamFailure``."""
    return _exception("InternalStreamFailure", {"Message": message})
