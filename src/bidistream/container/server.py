"""The model server: SageMaker's container contract around one Model.

aiohttp serves ``/ping``, ``/invocations`` and the WebSocket sessions on one
port (measured at 1.5x the raw-TCP floor per message with 13 KiB per idle
connection, see specs/transport-bench.md).  The model is loaded in the
background after the socket is bound, so ``/ping`` can say 503 while loading
and the port is never silent.

Backpressure: the model pulls its input straight from the socket; when it
stops asking, aiohttp's 64 KiB buffer fills and it pauses the transport.
Output is sent with awaited writes, which wait on the socket's drain.  No
buffer grows without bound, and a session costs no task besides its handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from bidistream import metrics
from bidistream.container.limits import ServerLimits
from bidistream.errors import (
    BidistreamError,
    IdleTimeoutError,
    InputValidationError,
    InstanceFullError,
    MessageTooLargeError,
    ModelError,
    ModelStreamError,
    ModelTimeoutError,
    ServiceUnavailableError,
    SessionTimeoutError,
    ShuttingDownError,
    wire_form,
)
from bidistream.frames import Frame, FrameKind
from bidistream.metrics import CONTAINER, InstanceIdentity, SessionMeter, exposition
from bidistream.model import DEFAULT_INVOCATION_PATH, Model, Request, Response, Session
from bidistream.session_state import Event, SessionMachine, State

log = logging.getLogger("bidistream.container")

# A close reason is at most 123 bytes on the wire (RFC 6455 section 5.5).
MAX_CLOSE_REASON = 123


def close_reason(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON:
        return data
    return data[: MAX_CLOSE_REASON - 3].decode("utf-8", "ignore").encode() + b"..."


def error_body(error: BidistreamError) -> tuple[bytes, str]:
    """JSON body for an HTTP error: the protocol's own shape if the error carries one."""
    if error.detail is not None:
        return json.dumps(error.detail).encode(), "application/json"
    return json.dumps({"error": error.code, "message": error.message}).encode(), "application/json"


def http_error(error: BidistreamError, status: int | None = None) -> web.Response:
    body, ctype = error_body(error)
    return web.Response(
        status=status or wire_form(error).http_status, body=body, content_type=ctype, headers=error.headers
    )


@dataclass(eq=False, slots=True)
class _LiveSession:
    session: Session
    ws: web.WebSocketResponse
    task: asyncio.Task[object]
    machine: SessionMachine = field(default_factory=SessionMachine)
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    close_error: BidistreamError | None = None
    timer: asyncio.TimerHandle | None = None
    meter: SessionMeter | None = None
    # The error that ended the session (its type and reason go to the log line).
    ended_by: BidistreamError | None = None


class ModelServer:
    """One instance's server.  ``port=0`` picks a free port (read ``.port`` after start)."""

    def __init__(
        self,
        model: Model,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        limits: ServerLimits | None = None,
        identity: InstanceIdentity | None = None,
    ) -> None:
        self.model = model
        # Labels for this instance's metrics and logs; the platform passes them
        # in the environment (BIDISTREAM_ENDPOINT / _VARIANT / _INSTANCE).
        self.identity = identity or InstanceIdentity.from_env(f"{host}:{port}")
        self._labels = self.identity.labels
        self.host = host
        self._requested_port = port
        self.limits = limits or ServerLimits()
        self._sessions: set[_LiveSession] = set()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._loaded = asyncio.Event()
        self._load_error: BaseException | None = None
        self._draining = False
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._ws_paths = {DEFAULT_INVOCATION_PATH, *(p.strip("/") for p in model.invocation_paths)}
        self._http_paths = {"invocations", *(p.strip("/") for p in model.http_paths)}
        self.port = port

    # ----------------------------------------------------------------- lifecycle
    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_invoke_body)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/metrics", metrics_handler)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    async def start(self) -> None:
        """Bind the port, then load the model in the background (``/ping`` says 503 until done)."""
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._requested_port, backlog=1024)
        await self._site.start()
        sockets = getattr(self._site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._load_task = asyncio.create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        began = time.monotonic()
        try:
            await self.model.load()
        except Exception as exc:
            self._load_error = exc
            log.error("model load failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return
        self._loaded.set()
        log.info("model %s loaded in %.2f s", self.model.name, time.monotonic() - began)

    async def wait_loaded(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            while not self._loaded.is_set():
                if self._load_error is not None:
                    raise ModelError(f"model failed to load: {self._load_error}") from self._load_error
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._loaded.wait()

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """SIGTERM semantics: stop accepting, let sessions finish, then close them with 1001."""
        if self._runner is None:
            return
        self._draining = True
        if self._site is not None:
            await self._site.stop()  # closes the listening socket only
        limit = self.limits.drain_timeout if drain_timeout is None else drain_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + limit):
                await self._no_sessions.wait()
        for live in list(self._sessions):
            live.close_error = ShuttingDownError("server shutting down; reconnect to another instance")
            live.task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_HANDSHAKE_TIMEOUT + 1):
                await self._no_sessions.wait()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self._runner.cleanup()
        self._runner = None

    # ----------------------------------------------------------------- handlers
    async def _ping(self, request: web.Request) -> web.Response:
        if self._loaded.is_set() and not self._draining:
            return web.Response(status=200)
        return web.Response(status=503)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.strip("/")
        if request.method == "GET" and path in self._ws_paths:
            return await self._websocket(request, path)
        if request.method == "POST" and path in self._http_paths:
            return await self._invoke(request, path)
        if path in self._ws_paths or path in self._http_paths:
            allowed = "GET" if path in self._ws_paths else "POST"
            return web.json_response(
                {"error": "MethodNotAllowed", "message": f"/{path} accepts {allowed} only"},
                status=405,
                headers={"Allow": allowed},
            )
        return web.json_response(
            {"error": "NotFound", "message": f"no route for {request.method} /{path} on this model server"},
            status=404,
        )

    def _refusal(self) -> BidistreamError | None:
        error: BidistreamError
        if self._draining:
            reason, error = "draining", ShuttingDownError("server is shutting down; try another instance")
        elif self._load_error is not None:
            reason, error = "failed", ModelError(f"model failed to load: {self._load_error}")
        elif not self._loaded.is_set():
            reason = "loading"
            error = ServiceUnavailableError("model is still loading; retry when /ping answers 200")
        else:
            return None
        metrics.CONTAINER_REFUSALS.labels(*self._labels, reason).inc()
        return error

    def _full(self) -> BidistreamError | None:
        """Admission control: at the session limit the upgrade itself is refused (503, no 101)."""
        if len(self._sessions) < self.limits.max_sessions:
            return None
        metrics.CONTAINER_REFUSALS.labels(*self._labels, "full").inc()
        return InstanceFullError(f"instance full ({self.limits.max_sessions} sessions); try again later")

    async def _invoke(self, request: web.Request, path: str) -> web.StreamResponse:
        """One line and one count per invocation, whatever the outcome."""
        began = time.monotonic()
        response = await self._invoke_inner(request, path)
        seconds = time.monotonic() - began
        metrics.CONTAINER_INVOCATIONS.labels(*self._labels, str(response.status)).inc()
        metrics.CONTAINER_INVOCATION_SECONDS.labels(*self._labels).observe(seconds)
        log.info(
            "invocation",
            extra={
                "request": request.headers.get("X-Amzn-SageMaker-Request-Id", ""),
                "path": path,
                "status": response.status,
                "seconds": round(seconds, 4),
                "bytes_in": request.content_length or 0,
                **self._log_location(),
            },
        )
        return response

    def _log_location(self) -> dict[str, str]:
        endpoint, variant, instance = self._labels
        return {"endpoint": endpoint, "variant": variant, "instance": instance}

    async def _invoke_inner(self, request: web.Request, path: str) -> web.StreamResponse:
        refusal = self._refusal()
        if refusal is not None:
            return http_error(refusal, 503)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return http_error(
                MessageTooLargeError(f"request body exceeds {self.limits.max_invoke_body} bytes"), 413
            )
        req = Request(
            body=body,
            content_type=request.headers.get("Content-Type"),
            accept=request.headers.get("Accept"),
            path=path,
            raw_query=request.raw_path.partition("?")[2],
            headers=dict(request.headers),
        )
        try:
            async with asyncio.timeout(self.limits.invoke_timeout):
                response = await self.model.invoke(req)
        except TimeoutError:
            return http_error(
                ModelTimeoutError(f"model did not answer within {self.limits.invoke_timeout:g} s"), 504
            )
        except BidistreamError as exc:
            status = wire_form(exc).http_status
            log.info(
                "invoke refused by the model",
                extra={
                    "request": request.headers.get("X-Amzn-SageMaker-Request-Id", ""),
                    "error": exc.code,
                    "reason": exc.message,
                },
            )
            return http_error(exc, 500 if status == 424 else status)
        except Exception as exc:
            log.exception(
                "invoke failed",
                extra={"request": request.headers.get("X-Amzn-SageMaker-Request-Id", "")},
            )
            return http_error(ModelError(f"model raised {type(exc).__name__}: {exc}"), 500)
        return await self._write_response(request, response)

    async def _write_response(self, request: web.Request, response: Response) -> web.StreamResponse:
        headers = dict(response.headers)
        if isinstance(response.body, bytes | bytearray):
            return web.Response(
                status=response.status,
                body=bytes(response.body),
                headers={**headers, "Content-Type": response.content_type},
            )
        stream = web.StreamResponse(status=response.status, headers=headers)
        stream.content_type = response.content_type
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        chunks: AsyncIterator[bytes] = response.body
        try:
            async for chunk in chunks:
                await stream.write(chunk)
        except Exception as exc:
            # Headers are gone: the only honest signal left is an aborted body.
            log.warning("streamed invoke failed mid-body: %s", exc)
            if request.transport is not None:
                request.transport.abort()
            return stream
        await stream.write_eof()
        return stream

    async def _websocket(self, request: web.Request, path: str) -> web.StreamResponse:
        refusal = self._refusal()
        if refusal is not None:
            return http_error(refusal, 503)
        headers = request.headers
        session = Session(
            id=headers.get("X-Amzn-SageMaker-Request-Id") or uuid.uuid4().hex,
            path=path,
            raw_query=request.raw_path.partition("?")[2],
            headers=headers,
        )
        try:
            self.model.check_session(session)
        except BidistreamError as exc:
            return http_error(exc)
        except Exception as exc:
            log.exception("check_session failed")
            return http_error(InputValidationError(f"session refused: {exc}"), 400)

        full = self._full()
        if full is not None:
            log.info(
                "session refused", extra={"session": session.id, "error": full.code, "reason": full.message}
            )
            return http_error(full, 503)

        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_message_size,
            autoping=True,
            protocols=self.model.subprotocols,
            compress=False,
            timeout=CLOSE_HANDSHAKE_TIMEOUT,
            # The client's close ends its input, not the session: the model may
            # still owe output (echoes, final transcripts), sent before our close.
            autoclose=False,
        )
        await ws.prepare(request)
        # Sessions that raced past the check above during prepare() still close with 1013.
        full = self._full()
        if full is not None:
            await _close(ws, full)
            return ws
        task = asyncio.current_task()
        assert task is not None
        live = _LiveSession(session, ws, task, meter=CONTAINER.open(*self._labels))
        live.machine.feed(Event.ACCEPTED)
        self._sessions.add(live)
        self._no_sessions.clear()
        self._arm_timer(live)
        try:
            await self._run_session(live)
        finally:
            if live.timer is not None:
                live.timer.cancel()
            self._sessions.discard(live)
            if not self._sessions:
                self._no_sessions.set()
            self._session_ended(live, path)
        return ws

    def _session_ended(self, live: _LiveSession, path: str) -> None:
        """One line and one count per session end: the gateway's line carries the same id."""
        code = live.ws.close_code if live.ws.close_code is not None else 1006
        err = live.ended_by
        error = err.code if err is not None else ("" if code == 1000 else "ConnectionLost")
        m = live.meter
        seconds = m.close(code, error) if m is not None else time.monotonic() - live.started
        log.info(
            "session end",
            extra={
                "session": live.session.id,
                **self._log_location(),
                "path": path,
                "seconds": round(seconds, 3),
                "frames_in": m.frames_in if m is not None else None,
                "bytes_in": m.bytes_in if m is not None else None,
                "frames_out": m.frames_out if m is not None else None,
                "bytes_out": m.bytes_out if m is not None else None,
                "code": code,
                "error": error,
                "reason": err.message if err is not None else "",
            },
        )

    async def _run_session(self, live: _LiveSession) -> None:
        """Pump the model's output to the socket; the model pulls its input itself.

        Limits, shutdown and the client's disappearance end the session by
        cancelling this task after recording ``close_error``, so a model stuck
        in its own code is interrupted too.
        """
        ws = live.ws
        error: BidistreamError | None = None
        m = live.meter
        try:
            async for out in self.model.stream(self._frames(live), live.session):
                live.last_activity = time.monotonic()
                if m is not None:
                    m.outbound(len(out.data))
                await ws.send_frame(
                    out.data, WSMsgType.TEXT if out.kind is FrameKind.TEXT else WSMsgType.BINARY
                )
        except asyncio.CancelledError:
            if live.close_error is None:
                raise
            live.task.uncancel()
        except ConnectionError:
            error = ShuttingDownError("client went away")
        except BidistreamError as exc:
            log.info("session ended by model", extra={"session": live.session.id, "error": exc.code})
            error = exc
        except Exception as exc:
            log.warning("model raised", extra={"session": live.session.id}, exc_info=exc)
            error = ModelStreamError(f"model error: {type(exc).__name__}: {exc}")
        error = live.close_error or error
        live.ended_by = error
        live.machine.feed(Event.OUTPUT_ENDED if error is None else Event.FAILED)
        if not ws.closed:
            await _close(ws, error)
        live.machine.feed(Event.CLOSED)

    async def _frames(self, live: _LiveSession) -> AsyncIterator[Frame]:
        """The model's input, read straight from the socket.

        No queue in between: while the model does not ask for the next frame,
        nothing calls ``receive()``, aiohttp's buffer fills and it pauses the
        transport.  That is the backpressure, and it costs no task or buffer.
        """
        ws = live.ws
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                frame = Frame(msg.data, FrameKind.BINARY)
            elif kind is WSMsgType.TEXT:
                frame = Frame(msg.data.encode("utf-8"), FrameKind.TEXT)
            else:
                if kind is WSMsgType.ERROR:
                    # aiohttp has already closed with the matching code (1009 for
                    # an oversized message, 1002/1007 for protocol errors).
                    log.info(
                        "session input error",
                        extra={"session": live.session.id, "error": str(ws.exception())},
                    )
                if live.machine.state is State.OPEN:
                    live.machine.feed(Event.INPUT_ENDED)
                return
            live.last_activity = time.monotonic()
            m = live.meter
            if m is not None:
                m.inbound(len(frame.data))
            yield frame

    def _arm_timer(self, live: _LiveSession) -> None:
        """One timer handle per session enforces idle timeout and max duration."""
        limits = self.limits
        now = time.monotonic()
        idle_at = live.last_activity + limits.idle_timeout
        end_at = live.started + limits.max_session_duration
        if now >= end_at:
            live.close_error = SessionTimeoutError(
                f"max session duration {limits.max_session_duration:g} s reached; reconnect"
            )
        elif now >= idle_at:
            live.close_error = IdleTimeoutError(
                f"no frames for {limits.idle_timeout:g} s; closing idle session"
            )
        else:
            # time.monotonic() and the loop's clock are the same clock on CPython.
            live.timer = asyncio.get_running_loop().call_at(
                min(idle_at, end_at) + 0.001, self._arm_timer, live
            )
            return
        live.timer = None
        live.task.cancel()


CLOSE_HANDSHAKE_TIMEOUT = 5.0


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: every metric of this process, Prometheus text format."""
    body, ctype = exposition()
    return web.Response(body=body, headers={"Content-Type": ctype})


async def _close(ws: web.WebSocketResponse, error: BidistreamError | None) -> None:
    """Close with the error's code and reason; never wait forever on a peer that does not read."""
    code = WSCloseCode.OK if error is None else wire_form(error).ws_close
    reason = b"" if error is None else close_reason(error.message)
    try:
        async with asyncio.timeout(CLOSE_HANDSHAKE_TIMEOUT):
            await ws.close(code=code, message=reason)
    except (TimeoutError, ConnectionError):
        pass
