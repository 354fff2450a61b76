"""gRPC-over-HTTP/2 facts the gateway's relay needs (sans-I/O).

The relay (:mod:`bidistream.gateway.grpcrelay`) moves a call's bytes between
the client and an instance's gRPC port unchanged; this module holds the few
decisions it makes about those bytes, as plain functions:

* whether a request is a gRPC call it may relay (:func:`request_problem`);
* where the call goes: the ``x-bidistream-endpoint`` metadata key, else, for a
  V2 ``inference.GRPCInferenceService`` call, the model name in field 1 of the
  first request message (:class:`FirstMessage`, a protobuf scanner that reads
  that one field from the first bytes, without waiting for the whole message);
* how a gateway-side failure is said: a *trailers-only* response (HTTP 200,
  ``content-type: application/grpc``, ``grpc-status``, ``grpc-message``)
  with the status from the one wire table (:func:`trailers_only`);
* which upstream answers mean "busy, try another instance"
  (:func:`is_busy`).

The field numbers are the ones in the stubs that ship with MLServer
(``mlserver.grpc.dataplane_pb2``) and tritonclient
(``tritonclient.grpc.service_pb2``): ``model_name = 1`` in ModelInferRequest
(which ModelStreamInfer also takes), ``name = 1`` in ModelReadyRequest,
ModelMetadataRequest, ModelConfigRequest and ModelStatisticsRequest; the unit
tests check them against both stub sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from bidistream.errors import BidistreamError, InputValidationError, wire_form

__all__ = [
    "ENDPOINT_KEY",
    "GRPC_STATUS",
    "MAX_ROUTING_PREFIX",
    "V2_SERVICE",
    "VARIANT_KEY",
    "FirstMessage",
    "is_busy",
    "is_grpc_content_type",
    "model_name_method",
    "request_problem",
    "split_path",
    "trailers_only",
]

ENDPOINT_KEY = "x-bidistream-endpoint"
VARIANT_KEY = "x-amzn-sagemaker-target-variant"
V2_SERVICE = "inference.GRPCInferenceService"
# V2 methods whose request message carries the model name as field 1 (a string).
_MODEL_NAME_METHODS = frozenset(
    {"ModelInfer", "ModelStreamInfer", "ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"}
)
# How many bytes of a call the gateway reads before it knows where the call goes (the
# first message's length prefix and its first field).  Encoders write field 1 first,
# so a model name is found in its first few dozen bytes; a message that does not
# start with it within this many bytes must name its endpoint in metadata.
MAX_ROUTING_PREFIX = 64 * 1024

# grpc.StatusCode names (as the wire table spells them) → their numbers (gRPC's
# status codes, doc/statuscodes.md); this module imports no gRPC.
GRPC_STATUS: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_RESOURCE_EXHAUSTED = str(GRPC_STATUS["RESOURCE_EXHAUSTED"]).encode()


def is_grpc_content_type(value: str) -> bool:
    """``application/grpc`` itself, or with a codec (``+proto``, ``+json``) or parameters."""
    value = value.strip().lower()
    return value == "application/grpc" or value.startswith(("application/grpc+", "application/grpc;"))


def split_path(path: str) -> tuple[str, str] | None:
    """``/package.Service/Method`` → (service, method); None for any other shape."""
    if not path.startswith("/"):
        return None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None
    return service, method


def request_problem(method: str, path: str, headers: Mapping[str, str]) -> BidistreamError | None:
    """What makes this request no gRPC call the gateway relays; None when it is one.

    gRPC over HTTP/2 (PROTOCOL-HTTP2.md) is ``POST /Service/Method`` with
    ``te: trailers``; a relay that let a call without ``te`` through would lose
    its trailers at the next proxy that honours TE, so it is refused here,
    in a status the client reads, as gRPC servers refuse it.
    """
    if method != "POST":
        return InputValidationError(f"gRPC calls are POST requests; got {method}")
    if split_path(path) is None:
        return InputValidationError(f"gRPC path {path!r} is not /package.Service/Method")
    if headers.get("te", "").strip().lower() != "trailers":
        return InputValidationError("gRPC request without 'te: trailers'")
    return None


def model_name_method(path: str) -> bool:
    """True for a V2 call whose first message names its model in field 1."""
    parts = split_path(path)
    return parts is not None and parts[0] == V2_SERVICE and parts[1] in _MODEL_NAME_METHODS


def trailers_only(error: BidistreamError) -> list[tuple[bytes, bytes]]:
    """The trailers-only response for ``error``: status from the wire table, message percent-encoded."""
    status = GRPC_STATUS.get(wire_form(error).grpc_status, GRPC_STATUS["INTERNAL"])
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status).encode()),
        (b"grpc-message", grpc_message(error.message)),
    ]


def grpc_message(text: str) -> bytes:
    """``grpc-message`` encoding: UTF-8, percent-encoded outside printable ASCII (and ``%``)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def is_busy(headers: list[tuple[bytes, bytes]]) -> bool:
    """A trailers-only answer with RESOURCE_EXHAUSTED: the instance is full, try the next one."""
    for key, value in headers:
        if key == b"grpc-status":
            return value.strip() == _RESOURCE_EXHAUSTED
    return False


class FirstMessage:
    """Reads the model name (field 1, length-delimited) of a call's first message as bytes arrive.

    Fed the call's DATA bytes in order; :attr:`done` once it knows the
    answer: :attr:`name` is the model name, or None when the message has no
    field 1 string (or is compressed, or does not start with it within
    :data:`MAX_ROUTING_PREFIX` bytes), with :attr:`reason` saying why.
    """

    __slots__ = ("_buf", "done", "name", "reason")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False
        self.name: str | None = None
        self.reason = ""

    def feed(self, data: bytes) -> bool:
        """Add bytes; True once :attr:`done`."""
        if self.done:
            return True
        self._buf += data
        self._scan()
        if not self.done and len(self._buf) >= MAX_ROUTING_PREFIX:
            self._finish(
                None,
                f"the first message does not start with its model name within {MAX_ROUTING_PREFIX} bytes",
            )
        return self.done

    def end(self) -> None:
        """The client ended its input: whatever was not found is not there."""
        if not self.done:
            self._finish(None, "the call ended before its first message was complete")

    def _finish(self, name: str | None, reason: str = "") -> None:
        self.done = True
        self.name = name
        self.reason = reason
        self._buf = bytearray()

    def _scan(self) -> None:
        buf = self._buf
        if len(buf) < 5:
            return
        if buf[0] != 0:
            self._finish(None, "the first message is compressed")
            return
        size = int.from_bytes(buf[1:5], "big")
        end = 5 + size
        pos = 5
        while True:
            limit = min(end, len(buf))
            tag = _varint(buf, pos, limit)
            if tag is None:
                break
            key, pos = tag
            field, wire_type = key >> 3, key & 7
            if wire_type == 0:
                skip = _varint(buf, pos, limit)
                if skip is None:
                    break
                pos = skip[1]
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length = _varint(buf, pos, limit)
                if length is None:
                    break
                n, pos = length
                if field == 1:
                    if pos + n > limit:
                        break
                    self._finish(bytes(buf[pos : pos + n]).decode("utf-8", "replace"))
                    return
                pos += n
            else:
                self._finish(None, "the first message is not a protobuf message")
                return
            if pos >= end:
                if pos > end:
                    self._finish(None, "the first message is not a protobuf message")
                else:
                    self._finish(None, "the first message has no model name (field 1)")
                return
        if len(buf) >= end:
            self._finish(None, "the first message has no model name (field 1)")


def _varint(buf: bytearray, pos: int, limit: int) -> tuple[int, int] | None:
    """A base-128 varint at ``pos``: (value, next position), or None if it runs past ``limit``."""
    value = 0
    shift = 0
    while pos < limit:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None
