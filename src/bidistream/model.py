"""The model API users implement: ``load``, ``invoke`` and ``stream``.

One object serves every transport: the SageMaker WebSocket contract,
``POST /invocations``, and the gateway's front doors.  The model never sees a
socket; it sees Frames, a Request, and a Session describing the connection.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl

from bidistream.errors import InputValidationError
from bidistream.frames import Frame

__all__ = ["Model", "Request", "Response", "Session"]

DEFAULT_INVOCATION_PATH = "invocations-bidirectional-stream"


class GrpcService(Protocol):
    """A gRPC servicer that knows how to register itself on a ``grpc.aio.Server``.

    The generated ``add_XServicer_to_server`` functions take (servicer, server);
    wrapping that call keeps the model server ignorant of every face's stubs.
    """

    def add_to_server(self, server: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Session:
    """What a model may know about one bidirectional session.

    ``path`` is the invocation path without its leading ``/`` (the default is
    ``invocations-bidirectional-stream``; SageMaker's ModelInvocationPath
    replaces it).  ``raw_query`` is kept byte for byte because SageMaker passes
    ModelQueryString verbatim; ``query`` is its parsed form, repeated keys kept.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    path: str = DEFAULT_INVOCATION_PATH
    raw_query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)

    def param(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query parameter (later values win, as most servers do)."""
        value = default
        for key, val in self.query:
            if key == name:
                value = val
        return value


@dataclass(frozen=True, slots=True)
class Request:
    """One ``POST /invocations`` call; content type and accept passed through."""

    body: bytes
    content_type: str | None = None
    accept: str | None = None
    path: str = "invocations"
    raw_query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def custom_attributes(self) -> str | None:
        return _header(self.headers, "X-Amzn-SageMaker-Custom-Attributes")

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputValidationError(
                f"request body is not UTF-8 text (byte {exc.start}); send text or set Content-Type"
            ) from exc


@dataclass(slots=True)
class Response:
    """The answer to one invocation.

    ``body`` may be an async iterator of chunks: the server then streams it
    with chunked transfer encoding (what ``InvokeEndpointWithResponseStream``
    relays as PayloadPart events).
    """

    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: object, *, status: int = 200) -> Response:
        return cls(json.dumps(value).encode(), "application/json", status)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


class Model:
    """Base class for a bidistream model.

    Subclasses override what they support.  ``invocation_paths`` lists extra
    WebSocket paths (for example ``v1/listen``) served besides the default
    ``invocations-bidirectional-stream``; ``http_paths`` lists extra POST
    paths routed to :meth:`invoke` besides ``invocations``.
    """

    name: ClassVar[str] = "model"
    invocation_paths: ClassVar[tuple[str, ...]] = ()
    http_paths: ClassVar[tuple[str, ...]] = ()
    # WebSocket subprotocols the server may select (e.g. Deepgram's "token").
    subprotocols: ClassVar[tuple[str, ...]] = ()
    # Extra GET health paths an API face expects beside /ping (NIM's /v1/health/live and
    # /v1/health/ready): "live" answers 200 while the process serves, "ready" as /ping does.
    live_paths: ClassVar[tuple[str, ...]] = ()
    ready_paths: ClassVar[tuple[str, ...]] = ()

    async def load(self) -> None:
        """Load weights; the server answers ``/ping`` with 503 until this returns."""

    def grpc_services(self) -> Sequence[GrpcService]:
        """Extra gRPC services this model serves on the model server's gRPC port.

        The V2 inference service is mounted for every model; a model that wears
        another gRPC face (the speech model's Riva ASR) returns its servicers here
        so the one gRPC server in the container hosts them all.
        """
        return ()

    def check_session(self, session: Session) -> None:
        """Validate a session before the upgrade is accepted.

        Runs inside the handshake, so it must be cheap (the contract gives the
        whole accept 250 ms).  Raise :class:`InputValidationError` to refuse the
        upgrade with HTTP 400 and a JSON error body.
        """

    async def invoke(self, request: Request) -> Response:
        raise InputValidationError(f"model {self.name!r} does not support POST /invocations")

    def stream(self, frames: AsyncIterator[Frame], session: Session) -> AsyncIterator[Frame]:
        """One bidirectional session: read frames as they arrive, yield output any time.

        Implement as an async generator.  Not reading ``frames`` pauses the
        socket read (backpressure); returning ends the session with a normal
        close; raising closes it with 1011 and the exception's message.
        """
        raise NotImplementedError(f"model {self.name!r} does not support bidirectional streams")
