"""The V2 / Open Inference Protocol on the model server's HTTP port, MLServer-compatible.

Routes (each also under ``/versions/{version}``): ``infer`` and its alias
``generate`` answer one JSON response; ``infer_stream`` and its alias
``generate_stream`` answer Server-Sent Events framed exactly as MLServer
frames them (``data: <compact JSON>\\n\\n``, no event names, no sentinel).
Readiness answers 400 when not ready, as MLServer does.

Backpressure: each SSE event is an awaited write, which waits for the socket
to drain, so a client that stops reading pauses the model's generator.  SSE
is never compressed; unary JSON answers are gzipped when the client accepts
it (MLServer must turn gzip off to stream at all).

:func:`mount` also starts the V2 gRPC server with the app (``on_startup``)
when the model server was given a gRPC port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bidistream.container import v2_metrics as metrics
from bidistream.errors import (
    BidistreamError,
    InputValidationError,
    MessageTooLargeError,
    ModelStreamError,
    NotFoundError,
    ServiceUnavailableError,
    v2_http_status,
)
from bidistream.protocols.v2.backend import NativeBackend, V2Backend, V2Repository
from bidistream.protocols.v2.codec import (
    InferRequest,
    InferResponse,
    parse_request,
    response_to_json,
    sse_event,
)

if TYPE_CHECKING:
    from bidistream.container.server import ModelServer

log = logging.getLogger("bidistream.container.v2")

SERVER_NAME = "bidistream"
# MLServer's GZipMiddleware leaves bodies under this many bytes uncompressed.
GZIP_MIN_BYTES = 500
SSE_CONTENT_TYPE = "text/event-stream"

_KEY: web.AppKey[V2Face] = web.AppKey("bidistream_v2", None)


class V2Face:
    """The V2 models one model server serves, and the checks every route shares."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self._backends: dict[str, V2Backend] | None = None

    def server_ready(self) -> bool:
        return self.server._loaded.is_set() and not self.server._draining

    @property
    def backends(self) -> dict[str, V2Backend]:
        if self._backends is None:
            model = self.server.model
            found = (
                list(model.v2_backends())
                if isinstance(model, V2Repository)
                else [NativeBackend(model, self.server_ready)]
            )
            self._backends = {b.name: b for b in found}
        return self._backends

    def lookup(self, name: str, version: str | None) -> V2Backend:
        backend = self.backends.get(name)
        if backend is None or (version and not backend.has_version(version)):
            # MLServer's own wording, which its clients and tests match on.
            suffix = f" with version {version}" if version else ""
            message = f"Model {name}{suffix} not found"
            raise NotFoundError(message, detail={"error": message})
        return backend

    def label(self, name: str) -> str:
        """The metrics label for a model name: unknown names share one child, not one each."""
        return name if name in self.backends else "_unknown"

    def check_ready(self, backend: V2Backend) -> None:
        if self.server._draining:
            raise ServiceUnavailableError("server is shutting down; try another instance")
        if not backend.ready():
            raise ServiceUnavailableError(f"Model {backend.name} is not ready yet.")


def mount(app: web.Application, server: ModelServer) -> None:
    """Add every V2 route (before the server's catch-all) and the gRPC port's lifecycle."""
    face = V2Face(server)
    app[_KEY] = face
    r = app.router
    r.add_get("/v2", _server_metadata)
    r.add_get("/v2/", _server_metadata)
    r.add_get("/v2/health/live", _live)
    r.add_get("/v2/health/ready", _ready)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, _model_metadata)
        r.add_get(base + "/ready", _model_ready)
        r.add_post(base + "/infer", _infer)
        r.add_post(base + "/generate", _infer)
        r.add_post(base + "/infer_stream", _infer_stream)
        r.add_post(base + "/generate_stream", _infer_stream)
    if getattr(server, "grpc_port", None) is not None:
        from bidistream.container import v2_grpc

        v2_grpc.attach(app, server, face)


def _face(request: web.Request) -> V2Face:
    return request.app[_KEY]


def _error(error: BidistreamError) -> web.Response:
    """An error in MLServer's body shape: ``{"error": ...}``, or FastAPI's 422 ``{"detail": [...]}``."""
    body = error.detail if error.detail is not None else {"error": error.message}
    return web.json_response(body, status=v2_http_status(error), headers=error.headers)


def _status(flag: bool) -> web.Response:
    return web.Response(status=200 if flag else 400)


async def _server_metadata(request: web.Request) -> web.Response:
    from bidistream import __version__

    return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": []})


async def _live(request: web.Request) -> web.Response:
    return _status(not _face(request).server._draining)


async def _ready(request: web.Request) -> web.Response:
    face = _face(request)
    return _status(face.server_ready() and all(b.ready() for b in face.backends.values()))


async def _model_ready(request: web.Request) -> web.Response:
    face = _face(request)
    try:
        backend = face.lookup(request.match_info["model"], request.match_info.get("version"))
    except BidistreamError as exc:
        return _error(exc)
    return _status(face.server_ready() and backend.ready())


async def _model_metadata(request: web.Request) -> web.Response:
    try:
        backend = _face(request).lookup(request.match_info["model"], request.match_info.get("version"))
    except BidistreamError as exc:
        return _error(exc)
    return web.json_response(backend.metadata())


def _headers(request: web.Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


async def _read(request: web.Request, backend: V2Backend) -> InferRequest:
    face = _face(request)
    face.check_ready(backend)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        limit = face.server.limits.max_invoke_body
        raise MessageTooLargeError(f"request body exceeds {limit} bytes") from exc
    return parse_request(body, model_name=backend.name, model_version=request.match_info.get("version"))


async def _infer(request: web.Request) -> web.StreamResponse:
    face = _face(request)
    name = request.match_info["model"]
    began = time.perf_counter()
    try:
        backend = face.lookup(name, request.match_info.get("version"))
        payload = await _read(request, backend)
        async with asyncio.timeout(face.server.limits.invoke_timeout):
            result = await backend.infer(payload, _headers(request))
    except BidistreamError as exc:
        metrics.error(face.label(name), "rest", "infer", exc)
        return _error(exc)
    except TimeoutError:
        err = ModelStreamError(f"model did not answer within {face.server.limits.invoke_timeout:g} s")
        metrics.error(face.label(name), "rest", "infer", err)
        return _error(err)
    except Exception as exc:
        log.exception("V2 infer failed", extra={"model": name})
        err = ModelStreamError(f"{type(exc).__name__}: {exc}")
        metrics.error(face.label(name), "rest", "infer", err)
        return _error(err)
    body = response_to_json(result)
    metrics.request(name, "rest", "infer", time.perf_counter() - began, 1)
    response = web.Response(body=body, content_type="application/json", headers=_cloudevent(result.id, name))
    if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", ""):
        response.enable_compression()
    return response


def _cloudevent(request_id: str | None, model: str) -> dict[str, str]:
    """The CloudEvents headers MLServer puts on unary answers (KServe tooling reads them)."""
    rid = request_id or ""
    return {
        "ce-specversion": "0.3",
        "ce-source": f"io.seldon.serving.deployment.{SERVER_NAME}",
        "ce-type": "io.seldon.serving.inference.response",
        "ce-modelid": model,
        "ce-inferenceservicename": SERVER_NAME,
        "ce-endpoint": model,
        "ce-id": rid,
        "ce-requestid": rid,
    }


async def _once(payload: InferRequest) -> AsyncIterator[InferRequest]:
    yield payload


async def _infer_stream(request: web.Request) -> web.StreamResponse:
    """One request in, one SSE event per response; errors before the first byte are JSON."""
    face = _face(request)
    name = request.match_info["model"]
    began = time.perf_counter()
    try:
        backend = face.lookup(name, request.match_info.get("version"))
        payload = await _read(request, backend)
    except BidistreamError as exc:
        metrics.error(face.label(name), "rest", "infer_stream", exc)
        return _error(exc)
    # A backend that can render its own events (MLServer's pydantic types) skips our dataclasses.
    render = getattr(backend, "sse_events", None)
    responses: AsyncIterator[bytes] = (
        render(_once(payload), _headers(request))
        if render is not None
        else _as_events(backend.infer_stream(_once(payload), _headers(request)))
    )
    stream = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
    stream.content_type = SSE_CONTENT_TYPE
    stream.charset = "utf-8"
    count = 0
    try:
        async for event in responses:
            if count == 0:
                await stream.prepare(request)
                metrics.first_response(name, "rest", time.perf_counter() - began)
            await stream.write(event)
            count += 1
    except asyncio.CancelledError:
        metrics.error(face.label(name), "rest", "infer_stream", ModelStreamError("client went away"))
        raise
    except ConnectionError:
        # The client hung up mid-stream; the finally below stops the model's generator.
        metrics.error(face.label(name), "rest", "infer_stream", ModelStreamError("client went away"))
        return stream
    except Exception as exc:
        err = exc if isinstance(exc, BidistreamError) else ModelStreamError(f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, BidistreamError | InputValidationError):
            log.warning("V2 stream failed", extra={"model": name}, exc_info=exc)
        metrics.error(face.label(name), "rest", "infer_stream", err)
        if not stream.prepared:
            return _error(err)
        # Headers are gone: say it as one last event, then cut the body so no
        # client mistakes the stream for a complete one.
        await stream.write(b"data: " + json.dumps({"error": err.message}).encode() + b"\n\n")
        if request.transport is not None:
            request.transport.abort()
        return stream
    finally:
        await _close(responses)
    if not stream.prepared:
        await stream.prepare(request)
    await stream.write_eof()
    metrics.request(name, "rest", "infer_stream", time.perf_counter() - began, count)
    return stream


async def _as_events(responses: AsyncIterator[InferResponse]) -> AsyncIterator[bytes]:
    try:
        async for result in responses:
            yield sse_event(result)
    finally:
        await _close(responses)


async def _close(responses: AsyncIterator[Any]) -> None:
    closer = getattr(responses, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            log.debug("closing a V2 response stream raised", exc_info=True)
