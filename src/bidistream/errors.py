"""One exception tree for bidistream, and one table mapping each error to its wire forms.

Every boundary (HTTP/2 runtime API, WebSocket front door, container server,
gRPC services, client SDK) raises or catches these types and asks
:func:`wire_form` how to say them on its own wire, so the same failure reads
the same everywhere::

    BidistreamError
    ├── ClientError                    the caller sent something wrong
    │   ├── InputValidationError       bad header / query / parameter / body
    │   │   ├── InvalidFrameError      malformed frame or event-stream bytes
    │   │   │   └── ProtocolViolationError  a WebSocket peer broke RFC 6455 (WS 1002)
    │   │   ├── SerializationError     a control-plane body that is not a JSON object
    │   │   └── SchemaValidationError  a V2 body that parses but breaks its schema (422)
    │   ├── UnknownOperationError      no such operation (control plane X-Amz-Target)
    │   ├── MethodNotAllowedError      a known path asked with the wrong method
    │   ├── ResourceLimitExceeded      a named platform limit would be passed
    │   ├── MessageTooLargeError       frame or body above a named limit
    │   │   └── UnsupportedDataError   bytes that are not the declared media (e.g. audio)
    │   ├── NotFoundError              unknown endpoint, model, config or path
    │   │   └── EndpointNotFoundError  unknown endpoint or variant on the runtime API (SageMaker: 400)
    │   ├── EndpointNotReadyError      the endpoint exists but cannot take requests (e.g. Failed)
    │   ├── ConflictError              resource already exists / wrong state
    │   └── AuthError                  missing or bad credentials / signature
    │       ├── UnauthenticatedError   no valid credentials at all (HTTP 401)
    │       └── InvalidSignatureError  a known key whose signature does not match
    ├── ModelError                     the model (container) failed
    │   ├── ModelLoadError             the model failed to load (the instance cannot serve)
    │   ├── ModelRefusedError          container refused the WebSocket upgrade
    │   ├── ModelStreamError           model failed in the middle of a stream
    │   └── ModelTimeoutError          model exceeded its time limit
    ├── ServiceUnavailableError        no healthy instance / instance full
    │   └── InstanceFullError          session limit reached on one instance
    ├── SessionClosedError             session ended by a limit or shutdown
    │   ├── IdleTimeoutError
    │   ├── SessionTimeoutError        max session duration reached
    │   ├── PingTimeoutError           peer stopped answering pings
    │   └── ShuttingDownError          server draining (SIGTERM)
    └── InternalError                  our fault

Third-party exceptions never cross a boundary: they are wrapped in the most
specific type here with ``raise ... from exc``.

The table (:data:`_WIRE`, read through :func:`wire_form`) is the only place
that chooses a wire status: the gateway's runtime API (HTTP status and
``x-amzn-ErrorType``), the model server's HTTP status (the container
dialect), the control plane's JSON 1.1 ``__type`` and status, the WebSocket
close code, the gRPC status and the in-stream event.  A close code an error
*carries* (a container's own close, relayed) is :attr:`BidistreamError.close_code`,
read by :func:`ws_close_code`, never parsed out of ``code``.
"""

# ruff: noqa: E501  (the wire table is laid out in columns, one row per error class)
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "AuthError",
    "BidistreamError",
    "ClientError",
    "ConflictError",
    "EndpointNotFoundError",
    "EndpointNotReadyError",
    "IdleTimeoutError",
    "InputValidationError",
    "InstanceFullError",
    "InternalError",
    "InvalidFrameError",
    "InvalidSignatureError",
    "MessageTooLargeError",
    "MethodNotAllowedError",
    "ModelError",
    "ModelLoadError",
    "ModelRefusedError",
    "ModelStreamError",
    "ModelTimeoutError",
    "NotFoundError",
    "PingTimeoutError",
    "ProtocolViolationError",
    "ResourceLimitExceeded",
    "SchemaValidationError",
    "SerializationError",
    "ServiceUnavailableError",
    "SessionClosedError",
    "SessionTimeoutError",
    "ShuttingDownError",
    "UnauthenticatedError",
    "UnknownOperationError",
    "UnsupportedDataError",
    "WireForm",
    "error_for_code",
    "error_from_close",
    "v2_http_status",
    "wire_form",
    "ws_close_code",
]


class BidistreamError(Exception):
    """Root of every error bidistream raises on purpose.

    ``code`` is a stable machine-readable name (used as SageMaker's
    ``ErrorCode`` and in logs); ``message`` says what went wrong and what to do.
    """

    code: ClassVar[str] = "InternalFailure"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        detail: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # The WebSocket close code this error arrived as (a container's close), if any.
        self.close_code = close_code
        # A wire body a protocol wants verbatim (e.g. Deepgram's JSON error on a
        # refused upgrade); None means "use the generic shape for this wire".
        self.detail = detail
        # Extra HTTP response headers a protocol sends with the error (e.g. Deepgram's
        # dg-error / dg-request-id); HTTP wires only.
        self.headers = headers or {}
        if code is not None:
            self.code = code  # type: ignore[misc]

    def __str__(self) -> str:
        return self.message


class ClientError(BidistreamError):
    code = "ClientError"


class InputValidationError(ClientError):
    code = "InputValidationError"


class InvalidFrameError(InputValidationError):
    code = "InvalidFrame"


class SerializationError(InputValidationError):
    code = "SerializationError"


class SchemaValidationError(InputValidationError):
    """A V2 body that is valid JSON but not a valid InferenceRequest (MLServer/FastAPI answer 422)."""

    code = "SchemaValidation"


class UnknownOperationError(ClientError):
    code = "UnknownOperation"


class MethodNotAllowedError(ClientError):
    code = "MethodNotAllowed"


class ResourceLimitExceeded(ClientError):
    """A request would pass a named platform limit (SageMaker's ``ResourceLimitExceeded``)."""

    code = "ResourceLimitExceeded"


class ProtocolViolationError(InvalidFrameError):
    """The peer broke the WebSocket protocol itself (an unmasked client frame, a close
    code nobody may send); RFC 6455 makes the answer close code 1002."""

    code = "ProtocolViolation"


class UnsupportedDataError(InputValidationError):
    """Payload bytes that are not what the session declared (Deepgram closes such streams with 1002)."""

    code = "UnsupportedData"


class MessageTooLargeError(ClientError):
    code = "MessageTooLarge"


class NotFoundError(ClientError):
    code = "NotFound"


class EndpointNotFoundError(NotFoundError):
    """A missing endpoint or variant on the runtime API: SageMaker answers 400 ValidationError,
    which clients do not retry, rather than a 404."""


class EndpointNotReadyError(ClientError):
    """The endpoint exists but will not take requests until it changes (Failed): a 503 would
    make boto3 retry a permanent failure."""

    code = "EndpointNotReady"


class ConflictError(ClientError):
    code = "Conflict"


class AuthError(ClientError):
    code = "Unauthorized"


class UnauthenticatedError(AuthError):
    """No valid credentials (401), as opposed to valid ones without permission (403)."""

    code = "Unauthenticated"


class InvalidSignatureError(AuthError):
    """The key is known but the signature is wrong (AWS: InvalidSignatureException)."""


class ModelError(BidistreamError):
    """The model or its container failed; carries what the container said."""

    code = "ModelError"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        original_status: int | None = None,
        original_message: str | None = None,
        detail: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message, code=code, detail=detail, headers=headers, close_code=close_code)
        self.original_status = original_status
        self.original_message = original_message


class ModelLoadError(ModelError):
    code = "ModelLoadFailed"


class ModelRefusedError(ModelError):
    code = "ModelRefused"


class ModelStreamError(ModelError):
    code = "ModelStreamError"


class ModelTimeoutError(ModelError):
    code = "ModelInvocationTimeExceeded"


class ServiceUnavailableError(BidistreamError):
    code = "ServiceUnavailable"


class InstanceFullError(ServiceUnavailableError):
    code = "InstanceFull"


class SessionClosedError(BidistreamError):
    code = "SessionClosed"


class IdleTimeoutError(SessionClosedError):
    code = "IdleTimeout"


class SessionTimeoutError(SessionClosedError):
    code = "SessionTimeout"


class PingTimeoutError(SessionClosedError):
    code = "PingTimeout"


class ShuttingDownError(SessionClosedError):
    code = "ShuttingDown"


class InternalError(BidistreamError):
    code = "InternalFailure"


@dataclass(frozen=True, slots=True)
class WireForm:
    """How one error class is said on each wire.

    ``http_status`` and ``amzn_error_type`` are the SageMaker runtime error
    shape (``x-amzn-ErrorType``) before streaming starts, in the bidi client's
    names (the gateway renames them for boto3's runtime client, which spells
    three of them differently); ``stream_event`` the in-stream event once it has.
    ``container_status`` is what the model server answers over HTTP (a model
    that fails is a 500 there; the gateway turns any container failure into
    SageMaker's 424 ModelError).  ``control_status``/``control_type`` are the
    control plane's JSON 1.1 answer: every client fault is a 400 there, and
    "not found" is ``ValidationException`` because boto3's waiters expect it.
    ``grpc_status`` is a ``grpc.StatusCode`` name so this module imports no gRPC.
    """

    http_status: int
    amzn_error_type: str
    ws_close: int
    grpc_status: str
    stream_event: str
    container_status: int
    control_status: int = 400
    control_type: str = "ValidationException"


_INTERNAL = (500, "InternalFailure")

# The one wire-mapping table.  Looked up along the MRO, so a subclass without
# its own row speaks like its parent.
# fmt: off
_WIRE: dict[type[BidistreamError], WireForm] = {
    #                          http  amzn_error_type            ws    grpc                  stream event             container  control
    BidistreamError:      WireForm(500, "InternalServerError",     1011, "INTERNAL",           "InternalStreamFailure", 500, *_INTERNAL),
    ClientError:          WireForm(400, "InputValidationError",    1008, "INVALID_ARGUMENT",   "ModelStreamError",      400),
    InputValidationError: WireForm(400, "InputValidationError",    1008, "INVALID_ARGUMENT",   "ModelStreamError",      400),
    InvalidFrameError:    WireForm(400, "InputValidationError",    1007, "INVALID_ARGUMENT",   "ModelStreamError",      400),
    ProtocolViolationError: WireForm(400, "InputValidationError", 1002, "INVALID_ARGUMENT", "ModelStreamError",   400),
    SerializationError:   WireForm(400, "InputValidationError",    1007, "INVALID_ARGUMENT",   "ModelStreamError",      400, 400, "SerializationException"),
    # MLServer answers 422 for schema errors and maps 422 to FAILED_PRECONDITION on gRPC.
    SchemaValidationError: WireForm(400, "InputValidationError",   1008, "FAILED_PRECONDITION", "ModelStreamError",     422),
    UnknownOperationError: WireForm(400, "InputValidationError",   1008, "UNIMPLEMENTED",      "ModelStreamError",      404, 400, "UnknownOperationException"),
    MethodNotAllowedError: WireForm(405, "InputValidationError",   1008, "UNIMPLEMENTED",      "ModelStreamError",      405),
    ResourceLimitExceeded: WireForm(400, "InputValidationError",   1008, "RESOURCE_EXHAUSTED", "ModelStreamError",      400, 400, "ResourceLimitExceeded"),
    MessageTooLargeError: WireForm(413, "InputValidationError",    1009, "RESOURCE_EXHAUSTED", "ModelStreamError",      413),
    NotFoundError:        WireForm(404, "InputValidationError",    1008, "NOT_FOUND",          "ModelStreamError",      404),
    EndpointNotFoundError: WireForm(400, "InputValidationError",   1008, "NOT_FOUND",          "ModelStreamError",      404),
    EndpointNotReadyError: WireForm(400, "InputValidationError",   1008, "FAILED_PRECONDITION", "ModelStreamError",     503),
    ConflictError:        WireForm(409, "InputValidationError",    1008, "ALREADY_EXISTS",     "ModelStreamError",      409),
    AuthError:            WireForm(403, "AccessDeniedException",   1008, "UNAUTHENTICATED",    "ModelStreamError",      403, 400, "UnrecognizedClientException"),
    InvalidSignatureError: WireForm(403, "AccessDeniedException",  1008, "UNAUTHENTICATED",    "ModelStreamError",      403, 400, "InvalidSignatureException"),
    UnauthenticatedError: WireForm(401, "AccessDeniedException",   1008, "UNAUTHENTICATED",    "ModelStreamError",      401, 400, "UnrecognizedClientException"),
    UnsupportedDataError: WireForm(415, "InputValidationError",    1002, "INVALID_ARGUMENT",   "ModelStreamError",      415),
    ModelError:           WireForm(424, "ModelError",              1011, "INTERNAL",           "ModelStreamError",      500, *_INTERNAL),
    ModelLoadError:       WireForm(424, "ModelError",              1011, "UNAVAILABLE",        "ModelStreamError",      503, *_INTERNAL),
    ModelTimeoutError:    WireForm(424, "ModelError",              1011, "DEADLINE_EXCEEDED",  "ModelStreamError",      504, *_INTERNAL),
    ServiceUnavailableError: WireForm(503, "ServiceUnavailableError", 1013, "UNAVAILABLE",     "InternalStreamFailure", 503, *_INTERNAL),
    InstanceFullError:    WireForm(503, "ServiceUnavailableError", 1013, "RESOURCE_EXHAUSTED", "InternalStreamFailure", 503, *_INTERNAL),
    SessionClosedError:   WireForm(408, "ModelError",              1008, "DEADLINE_EXCEEDED",  "ModelStreamError",      408, *_INTERNAL),
    IdleTimeoutError:     WireForm(408, "ModelError",              1011, "DEADLINE_EXCEEDED",  "ModelStreamError",      408, *_INTERNAL),
    SessionTimeoutError:  WireForm(408, "ModelError",              1008, "DEADLINE_EXCEEDED",  "ModelStreamError",      408, *_INTERNAL),
    PingTimeoutError:     WireForm(504, "ModelError",              1011, "UNAVAILABLE",        "ModelStreamError",      504, *_INTERNAL),
    ShuttingDownError:    WireForm(503, "ServiceUnavailableError", 1001, "UNAVAILABLE",        "InternalStreamFailure", 503, *_INTERNAL),
    InternalError:        WireForm(500, "InternalServerError",     1011, "INTERNAL",           "InternalStreamFailure", 500, *_INTERNAL),
}
# fmt: on


def wire_form(error: BidistreamError | type[BidistreamError]) -> WireForm:
    """The wire form of an error (or error class), from the nearest row of the table."""
    cls = error if isinstance(error, type) else type(error)
    for klass in cls.__mro__:
        form = _WIRE.get(klass)
        if form is not None:
            return form
    return _WIRE[BidistreamError]


# The V2 / Open Inference dialect on the model server: the container status, except
# that MLServer answers 400 (not 503) for a model or server that is not ready.
_V2_HTTP_STATUS: dict[type[BidistreamError], int] = {
    ServiceUnavailableError: 400,
}


def v2_http_status(error: BidistreamError) -> int:
    """HTTP status on the V2 REST face: the dialect's row if it has one, else the container status."""
    for klass in type(error).__mro__:
        status = _V2_HTTP_STATUS.get(klass)
        if status is not None:
            return status
    return wire_form(error).container_status


# WebSocket close codes a peer may send, and the error each one means.
_CLOSE_TO_ERROR: dict[int, type[BidistreamError]] = {
    1001: ShuttingDownError,
    1007: InvalidFrameError,
    1008: InputValidationError,
    1009: MessageTooLargeError,
    1011: ModelStreamError,
    1013: InstanceFullError,
}

NORMAL_CLOSE_CODES = frozenset({1000})


def error_from_close(code: int | None, reason: str) -> BidistreamError | None:
    """Translate a container's close code into our error; None for a normal close.

    The close code travels as :attr:`~BidistreamError.close_code`; ``code`` (the
    in-stream ``ErrorCode``) keeps SageMaker's habit of carrying it as digits.
    """
    if code in NORMAL_CLOSE_CODES:
        return None
    code = code or 1006  # no close frame at all: RFC 6455's "abnormal closure"
    cls = _CLOSE_TO_ERROR.get(code, ModelStreamError)
    return cls(reason or f"connection closed with code {code}", code=str(code), close_code=code)


def _sendable(code: int) -> bool:
    # RFC 6455 §7.4: 1005, 1006 and 1015 must never be sent; 1004 and 1016-2999 are reserved.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def ws_close_code(error: BidistreamError) -> int:
    """The close code to send for ``error``: the one it arrived with if that may be sent, else the table's."""
    if error.close_code is not None and _sendable(error.close_code):
        return error.close_code
    return wire_form(error).ws_close


# ErrorCode (as our servers send it) → the most specific class: what the client SDK
# raises for an error it received.  Built from the tree, so a new class is found too.
def _codes() -> dict[str, type[BidistreamError]]:
    found: dict[str, type[BidistreamError]] = {}
    pending: list[type[BidistreamError]] = [BidistreamError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    found["InternalFailure"] = InternalError
    return found


def error_for_code(code: str | None) -> type[BidistreamError] | None:
    """The class whose ``code`` is ``code`` (``"NotFound"`` → NotFoundError), or None if unknown."""
    if not code:
        return None
    return _codes().get(code)
