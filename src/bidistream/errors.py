"""One exception tree for bidistream, and one table mapping each error to its wire forms.

Every boundary (HTTP/2 runtime API, WebSocket front door, container server,
gRPC services, client SDK) raises or catches these types and asks
:func:`wire_form` how to say them on its own wire, so the same failure reads
the same everywhere::

    BidistreamError
    ├── ClientError                    the caller sent something wrong
    │   ├── InputValidationError       bad header / query / parameter / body
    │   │   ├── InvalidFrameError      malformed frame or event-stream bytes
    │   │   └── SchemaValidationError  a body that parses but breaks its schema (V2: 422)
    │   ├── MessageTooLargeError       frame or body above a named limit
    │   │   └── UnsupportedDataError   bytes that are not the declared media (e.g. audio)
    │   ├── NotFoundError              unknown endpoint, model, config or path
    │   ├── ConflictError              resource already exists / wrong state
    │   └── AuthError                  missing or bad credentials / signature
    │       └── UnauthenticatedError   no valid credentials at all (HTTP 401)
    ├── ModelError                     the model (container) failed
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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "AuthError",
    "BidistreamError",
    "ClientError",
    "ConflictError",
    "IdleTimeoutError",
    "InputValidationError",
    "InstanceFullError",
    "InternalError",
    "InvalidFrameError",
    "MessageTooLargeError",
    "ModelError",
    "ModelRefusedError",
    "ModelStreamError",
    "ModelTimeoutError",
    "NotFoundError",
    "PingTimeoutError",
    "SchemaValidationError",
    "ServiceUnavailableError",
    "SessionClosedError",
    "SessionTimeoutError",
    "ShuttingDownError",
    "UnauthenticatedError",
    "UnsupportedDataError",
    "WireForm",
    "error_from_close",
    "v2_http_status",
    "wire_form",
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
    ) -> None:
        super().__init__(message)
        self.message = message
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


class SchemaValidationError(InputValidationError):
    """A V2 body that is valid JSON but not a valid InferenceRequest (MLServer/FastAPI answer 422)."""

    code = "SchemaValidation"


class UnsupportedDataError(InputValidationError):
    """Payload bytes that are not what the session declared (Deepgram closes such streams with 1002)."""

    code = "UnsupportedData"


class MessageTooLargeError(ClientError):
    code = "MessageTooLarge"


class NotFoundError(ClientError):
    code = "NotFound"


class ConflictError(ClientError):
    code = "Conflict"


class AuthError(ClientError):
    code = "Unauthorized"


class UnauthenticatedError(AuthError):
    """No valid credentials (401), as opposed to valid ones without permission (403)."""

    code = "Unauthenticated"


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
    ) -> None:
        super().__init__(message, code=code, detail=detail, headers=headers)
        self.original_status = original_status
        self.original_message = original_message


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

    ``amzn_error_type`` is the SageMaker runtime error shape (``x-amzn-ErrorType``)
    before streaming starts, in the bidi client's names (the gateway renames them
    for boto3's runtime client, which spells three of them differently);
    ``stream_event`` the in-stream event once it has.
    ``grpc_status`` is a ``grpc.StatusCode`` name so this module imports no gRPC.
    """

    http_status: int
    amzn_error_type: str
    ws_close: int
    grpc_status: str
    stream_event: str


# The one wire-mapping table.  Looked up along the MRO, so a subclass without
# its own row speaks like its parent.
_WIRE: dict[type[BidistreamError], WireForm] = {
    BidistreamError: WireForm(500, "InternalServerError", 1011, "INTERNAL", "InternalStreamFailure"),
    ClientError: WireForm(400, "InputValidationError", 1008, "INVALID_ARGUMENT", "ModelStreamError"),
    InputValidationError: WireForm(400, "InputValidationError", 1008, "INVALID_ARGUMENT", "ModelStreamError"),
    InvalidFrameError: WireForm(400, "InputValidationError", 1007, "INVALID_ARGUMENT", "ModelStreamError"),
    MessageTooLargeError: WireForm(
        413, "InputValidationError", 1009, "RESOURCE_EXHAUSTED", "ModelStreamError"
    ),
    NotFoundError: WireForm(404, "InputValidationError", 1008, "NOT_FOUND", "ModelStreamError"),
    ConflictError: WireForm(409, "InputValidationError", 1008, "ALREADY_EXISTS", "ModelStreamError"),
    AuthError: WireForm(403, "AccessDeniedException", 1008, "UNAUTHENTICATED", "ModelStreamError"),
    UnauthenticatedError: WireForm(401, "AccessDeniedException", 1008, "UNAUTHENTICATED", "ModelStreamError"),
    UnsupportedDataError: WireForm(415, "InputValidationError", 1002, "INVALID_ARGUMENT", "ModelStreamError"),
    # MLServer maps 422 to FAILED_PRECONDITION on gRPC (mlserver/grpc/utils.py).
    SchemaValidationError: WireForm(
        422, "InputValidationError", 1008, "FAILED_PRECONDITION", "ModelStreamError"
    ),
    ModelError: WireForm(424, "ModelError", 1011, "INTERNAL", "ModelStreamError"),
    ModelTimeoutError: WireForm(424, "ModelError", 1011, "DEADLINE_EXCEEDED", "ModelStreamError"),
    ServiceUnavailableError: WireForm(
        503, "ServiceUnavailableError", 1013, "UNAVAILABLE", "InternalStreamFailure"
    ),
    InstanceFullError: WireForm(
        503, "ServiceUnavailableError", 1013, "RESOURCE_EXHAUSTED", "InternalStreamFailure"
    ),
    SessionClosedError: WireForm(408, "ModelError", 1008, "DEADLINE_EXCEEDED", "ModelStreamError"),
    IdleTimeoutError: WireForm(408, "ModelError", 1011, "DEADLINE_EXCEEDED", "ModelStreamError"),
    SessionTimeoutError: WireForm(408, "ModelError", 1008, "DEADLINE_EXCEEDED", "ModelStreamError"),
    PingTimeoutError: WireForm(504, "ModelError", 1011, "UNAVAILABLE", "ModelStreamError"),
    ShuttingDownError: WireForm(503, "ServiceUnavailableError", 1001, "UNAVAILABLE", "InternalStreamFailure"),
    InternalError: WireForm(500, "InternalServerError", 1011, "INTERNAL", "InternalStreamFailure"),
}


def wire_form(error: BidistreamError | type[BidistreamError]) -> WireForm:
    """The wire form of an error (or error class), from the nearest row of the table."""
    cls = error if isinstance(error, type) else type(error)
    for klass in cls.__mro__:
        form = _WIRE.get(klass)
        if form is not None:
            return form
    return _WIRE[BidistreamError]


# The V2 / Open Inference dialect: MLServer answers a failing model with 500 (the
# SageMaker contract's 424 is ours), and a model that is not ready with 400.
_V2_HTTP_STATUS: dict[type[BidistreamError], int] = {
    ModelError: 500,
    ServiceUnavailableError: 400,
}


def v2_http_status(error: BidistreamError) -> int:
    """HTTP status on the V2 REST face: the dialect's row if it has one, else the table's."""
    for klass in type(error).__mro__:
        status = _V2_HTTP_STATUS.get(klass)
        if status is not None:
            return status
    return wire_form(error).http_status


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
    """Translate a container's close code into our error; None for a normal close."""
    if code in NORMAL_CLOSE_CODES:
        return None
    code = code or 1006  # no close frame at all: RFC 6455's "abnormal closure"
    cls = _CLOSE_TO_ERROR.get(code, ModelStreamError)
    return cls(reason or f"connection closed with code {code}", code=str(code))
