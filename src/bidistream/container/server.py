"""The model server: SageMaker's container contract around one Model.

aiohttp serves ``/ping``, ``/invocations`` and the WebSocket sessions on one
port (measured at 1.5x the raw-TCP floor per message with 13 KiB per idle
connection, see specs/transport-bench.md).  The model is loaded in the
background after the socket is bound, so ``/ping`` can say 503 while loading
and the port is never silent.

Backpressure: the model pulls its input straight from the socket; when it
stops asking, aiohttp's 64 KiB buffer fills and it pauses the transport.
Output is sent with awaited writes, which wait on the socket's drain; small
frames produced in one turn of the loop leave in one socket write
(``cork.py``: a write per 64 B frame was a third of the echo's CPU).  No
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
from dataclasses import dataclass
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from bidistream import metrics
from bidistream.container import v2_http
from bidistream.container.cork import CorkedTransport
from bidistream.container.limits import ServerLimits
from bidistream.container.wsguard import MaskCheck, close_code_problem
from bidistream.contract import close_reason
from bidistream.errors import (
    BidistreamError,
    InputValidationError,
    InstanceFullError,
    MessageTooLargeError,
    MethodNotAllowedError,
    ModelError,
    ModelLoadError,
    ModelStreamError,
    ModelTimeoutError,
    NotFoundError,
    ProtocolViolationError,
    ServiceUnavailableError,
    ShuttingDownError,
    wire_form,
)
from bidistream.frames import Frame, FrameKind
from bidistream.metrics import CONTAINER, InstanceIdentity, SessionMeter, exposition
from bidistream.model import DEFAULT_INVOCATION_PATH, Model, Request, Response, Session
from bidistream.session import BidiSession, SessionLimits, State
from bidistream.session import actions as a
from bidistream.session import events as e

log = logging.getLogger("bidistream.container")


def error_body(error: BidistreamError) -> tuple[bytes, str]:
    """JSON body for an HTTP error: the protocol's own shape if the error carries one."""
    if error.detail is not None:
        return json.dumps(error.detail).encode(), "application/json"
    return json.dumps({"error": error.code, "message": error.message}).encode(), "application/json"


def http_error(error: BidistreamError) -> web.Response:
    """The model server's answer for ``error``: the status is the table's container column."""
    body, ctype = error_body(error)
    return web.Response(
        status=wire_form(error).container_status, body=body, content_type=ctype, headers=error.headers
    )


_CLOSED = State.CLOSED
_TEXT = FrameKind.TEXT
_WS_TEXT, _WS_BINARY = WSMsgType.TEXT, WSMsgType.BINARY


@dataclass(slots=True)
class _Decided:
    """An action the session returned while earlier actions were still being carried out."""

    action: object


class _LiveSession:
    """One WebSocket session on the model server: the container's adapter of the session core.

    The "client" is the WebSocket peer (the gateway), the "instance" is the
    model in this process.  The session decides; this object carries out: a
    client frame the session sends to the instance lands in ``inbox`` (the
    model's input iterator yields it), an instance frame it sends to the client
    lands in ``outbox`` (the output loop awaits its send), timers are loop
    handles that come back as events.  Ending the instance means cancelling
    the session's task, so a model stuck in its own code is interrupted too.
    """

    __slots__ = (
        "_busy",
        "_queue",
        "_timers",
        "close_error",
        "core",
        "ended",
        "inbox",
        "input_done",
        "meter",
        "outbox",
        "session",
        "started",
        "task",
        "ws",
    )

    def __init__(
        self, session: Session, ws: web.WebSocketResponse, task: asyncio.Task[object], limits: ServerLimits
    ) -> None:
        self.session = session
        self.ws = ws
        self.task = task
        self.core = BidiSession(
            SessionLimits(
                confirm_timeout=None,
                close_timeout=None,
                idle_timeout=limits.idle_timeout,
                max_duration=limits.max_session_duration,
            )
        )
        self.started = time.monotonic()
        self.inbox: list[Frame] = []
        self.outbox: list[tuple[bytes, bool]] = []
        self.input_done = False
        # Set once the session ended the client's side (None: a normal close).
        self.ended = False
        self.close_error: BidistreamError | None = None
        # METRICS/LOGS: frames and bytes each way, first output (None while metering is off).
        self.meter: SessionMeter | None = None
        self._timers: dict[e.Timer, asyncio.TimerHandle] = {}
        self._busy = False
        self._queue: list[object] = []

    def feed(self, event: object) -> None:
        if self._busy:
            self._queue.append(event)
            return
        self._carry_out(self.core.handle(event))

    def frame_in(self, data: bytes, text: bool) -> Frame | None:
        """A client frame: the frame the model gets, when the session relays it as is (the hot path)."""
        if not self._busy and self.core.pass_client_frame():
            if self.meter is not None:  # METRICS/LOGS: the hot paths count like _carry_out
                self.meter.inbound(len(data))
            return Frame(data, FrameKind.TEXT if text else FrameKind.BINARY)
        acts = self.core.handle(e.ClientPart(data, text, True))
        if len(acts) == 1 and not self._busy:
            act = acts[0]
            if type(act) is a.SendToInstance:
                if self.meter is not None:
                    self.meter.inbound(len(act.data))
                return Frame(act.data, FrameKind.TEXT if act.text else FrameKind.BINARY, act.fin)
        self._carry_out(acts)
        return None

    def frame_out(self, data: bytes, text: bool) -> tuple[bytes, bool] | None:
        """A model frame: what to send the client, when the session relays it as is (the hot path)."""
        if not self._busy and self.core.pass_instance_frame():
            if self.meter is not None:
                self.meter.outbound(len(data))
            return data, text
        acts = self.core.handle(e.InstanceFrame(data, text, True))
        if len(acts) == 1 and not self._busy:
            act = acts[0]
            if type(act) is a.SendToClient:
                if self.meter is not None:
                    self.meter.outbound(len(act.data))
                return act.data, act.text
        self._carry_out(acts)
        return None

    def _carry_out(self, acts: list[object]) -> None:
        if self._busy:
            # Raised while actions run: the session already decided; queue the actions' effects.
            self._queue.extend(_Decided(act) for act in acts)
            return
        self._busy = True
        try:
            self._do(acts)
            while self._queue:
                item = self._queue.pop(0)
                if type(item) is _Decided:
                    self._do([item.action])
                else:
                    self._do(self.core.handle(item))
        finally:
            self._busy = False
        if self.core.state is _CLOSED:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()

    def _do(self, acts: list[object]) -> None:
        for act in acts:
            kind = type(act)
            if kind is a.SendToInstance:
                if self.meter is not None:
                    self.meter.inbound(len(act.data))  # type: ignore[attr-defined]
                self.inbox.append(
                    Frame(act.data, FrameKind.TEXT if act.text else FrameKind.BINARY, act.fin)  # type: ignore[attr-defined]
                )
            elif kind is a.SendToClient:
                if self.meter is not None:
                    self.meter.outbound(len(act.data))  # type: ignore[attr-defined]
                self.outbox.append((act.data, act.text))  # type: ignore[attr-defined]
            elif kind is a.ConnectInstance:
                self._queue.append(e.InstanceConnected())  # the model is right here
            elif kind is a.CloseInstanceInput:
                self.input_done = True
            elif kind is a.EndClient or kind is a.Refuse:
                self.ended = True
                self.close_error = act.error  # type: ignore[attr-defined]
            elif kind is a.CloseInstance or kind is a.DisconnectInstance:
                self.input_done = True
                if asyncio.current_task() is not self.task and not self.task.done():
                    self.task.cancel()
            elif kind is a.StartTimer:
                old = self._timers.pop(act.timer, None)  # type: ignore[attr-defined]
                if old is not None:
                    old.cancel()
                self._timers[act.timer] = asyncio.get_running_loop().call_later(  # type: ignore[attr-defined]
                    act.seconds,  # type: ignore[attr-defined]
                    self._fire,
                    act.timer,  # type: ignore[attr-defined]
                )
            elif kind is a.CancelTimer:
                handle = self._timers.pop(act.timer, None)  # type: ignore[attr-defined]
                if handle is not None:
                    handle.cancel()
            # Accept, Acknowledge, reads: aiohttp's own buffer is the backpressure here.

    def _fire(self, timer: e.Timer) -> None:
        self._timers.pop(timer, None)
        self.feed(e.TimerFired(timer))

    def cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()


class ModelServer:
    """One instance's server.  ``port=0`` picks a free port (read ``.port`` after start)."""

    def __init__(
        self,
        model: Model,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        limits: ServerLimits | None = None,
        grpc_port: int | None = None,
        triton_grpc_port: int | None = None,
        reuse_port: bool = False,
        identity: InstanceIdentity | None = None,
    ) -> None:
        self.model = model
        # Labels for this instance's metrics and logs; the platform passes them
        # in the environment (BIDISTREAM_ENDPOINT / _VARIANT / _INSTANCE).
        self.identity = identity or InstanceIdentity.from_env(f"{host}:{port}")
        self._labels = self.identity.labels
        # V2 gRPC ports (None: no gRPC server); 0 picks a free port, read back after start.
        self.grpc_port = grpc_port
        self.triton_grpc_port = triton_grpc_port
        # SO_REUSEPORT, so N worker processes share the ports (``serve --workers N``).
        self.reuse_port = reuse_port
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
        for path in self.model.ready_paths:
            app.router.add_get("/" + path.strip("/"), self._ping)
        for path in self.model.live_paths:
            app.router.add_get("/" + path.strip("/"), self._live)
        app.router.add_get("/metrics", metrics_handler)
        v2_http.mount(app, self)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        return app

    async def start(self) -> None:
        """Bind the port, then load the model in the background (``/ping`` says 503 until done)."""
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.host, self._requested_port, backlog=1024, reuse_port=self.reuse_port or None
        )
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
            live.feed(e.Failed(ShuttingDownError("server shutting down; reconnect to another instance")))
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

    async def _live(self, request: web.Request) -> web.Response:
        """Liveness: the process answers, whether or not the model has loaded."""
        return web.json_response({"object": "health.response", "message": "live"})

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.strip("/")
        if request.method == "GET" and path in self._ws_paths:
            return await self._websocket(request, path)
        if request.method == "POST" and path in self._http_paths:
            return await self._invoke(request, path)
        if path in self._ws_paths or path in self._http_paths:
            allowed = "GET" if path in self._ws_paths else "POST"
            return http_error(
                MethodNotAllowedError(f"/{path} accepts {allowed} only", headers={"Allow": allowed})
            )
        return http_error(NotFoundError(f"no route for {request.method} /{path} on this model server"))

    def _refusal(self) -> BidistreamError | None:
        error: BidistreamError
        if self._draining:
            reason, error = "draining", ShuttingDownError("server is shutting down; try another instance")
        elif self._load_error is not None:
            reason, error = "failed", ModelLoadError(f"model failed to load: {self._load_error}")
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
            return http_error(refusal)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return http_error(
                MessageTooLargeError(f"request body exceeds {self.limits.max_invoke_body} bytes")
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
                ModelTimeoutError(f"model did not answer within {self.limits.invoke_timeout:g} s")
            )
        except BidistreamError as exc:
            log.info(
                "invoke refused by the model",
                extra={
                    "request": request.headers.get("X-Amzn-SageMaker-Request-Id", ""),
                    "error": exc.code,
                    "reason": exc.message,
                },
            )
            return http_error(exc)
        except Exception as exc:
            log.exception(
                "invoke failed", extra={"request": request.headers.get("X-Amzn-SageMaker-Request-Id", "")}
            )
            return http_error(ModelError(f"model raised {type(exc).__name__}: {exc}"))
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
        # The accept deadline (contract C3) covers what runs before the 101: all of it is
        # synchronous, so the clock read below measures this handler's own work (chiefly
        # the model's check_session), never other sessions' turns of the loop.
        started = time.monotonic()
        refusal = self._refusal()
        if refusal is not None:
            return http_error(refusal)
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
            return http_error(InputValidationError(f"session refused: {exc}"))
        late = time.monotonic() - started
        if late > self.limits.accept_deadline:
            # Accepting now would answer a gateway that may have given up: refuse instead,
            # and the router tries another instance.
            log.warning("session refused: accept took %.0f ms", late * 1000, extra={"session": session.id})
            return http_error(
                ServiceUnavailableError(
                    f"session not accepted within the {self.limits.accept_deadline * 1000:.0f} ms accept "
                    f"deadline (the handshake took {late * 1000:.0f} ms): a model must not work inside "
                    "check_session"
                )
            )

        full = self._full()
        if full is not None:
            log.info(
                "session refused", extra={"session": session.id, "error": full.code, "reason": full.message}
            )
            return http_error(full)

        ws = _CheckedWebSocketResponse(
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
        live = _LiveSession(session, ws, task, self.limits)
        live.meter = CONTAINER.open(*self._labels)
        self._sessions.add(live)
        self._no_sessions.clear()
        live.feed(e.Start())
        try:
            await self._run_session(live)
        finally:
            live.cancel_timers()
            self._sessions.discard(live)
            if not self._sessions:
                self._no_sessions.set()
            self._session_ended(live, path)
        return ws

    def _session_ended(self, live: _LiveSession, path: str) -> None:
        """One line and one count per session end: the gateway's line carries the same id."""
        code = live.ws.close_code if live.ws.close_code is not None else 1006
        err = live.close_error if live.ended else None
        error = err.code if err is not None else ("" if code == 1000 else "ConnectionLost")
        m, live.meter = live.meter, None
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

        Limits, shutdown and the client's disappearance are session events;
        when the session ends the instance side, this task is cancelled (after
        the session recorded the client's error), so a model stuck in its own
        code is interrupted too.
        """
        ws = live.ws
        stream = self.model.stream(self._frames(live), live.session)
        error: BidistreamError | None = None
        gone = False
        # aiohttp's writer itself: ws.send_frame is one coroutine around it, per frame.
        writer = ws._writer
        assert writer is not None
        send = writer.send_frame
        try:
            outbox = live.outbox
            async for out in stream:
                direct = live.frame_out(out.data, out.kind is _TEXT)
                if direct is not None:
                    await send(direct[0], _WS_TEXT if direct[1] else _WS_BINARY)
                while outbox:
                    data, text = outbox.pop(0)
                    await send(data, _WS_TEXT if text else _WS_BINARY)
        except asyncio.CancelledError:
            if not live.ended:
                raise
            live.task.uncancel()
        except ConnectionError:
            gone = True
            live.feed(e.ClientGone())
        except BidistreamError as exc:
            log.info("session ended by model", extra={"session": live.session.id, "error": exc.code})
            error = exc
        except Exception as exc:
            log.warning("model raised", extra={"session": live.session.id}, exc_info=exc)
            error = ModelStreamError(f"model error: {type(exc).__name__}: {exc}")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
        live.feed(e.InstanceClosed(error))
        if not ws.closed:
            if live.ended:
                await _close(ws, live.close_error)
            elif gone:
                await _close(ws, ShuttingDownError("client went away"))

    async def _frames(self, live: _LiveSession) -> AsyncIterator[Frame]:
        """The model's input, read straight from the socket.

        No queue in between: while the model does not ask for the next frame,
        nothing calls ``receive()``, aiohttp's buffer fills and it pauses the
        transport.  That is the backpressure, and it costs no task or buffer
        (``inbox`` holds the one frame the session just let through).
        """
        ws = live.ws
        inbox = live.inbox
        while not live.input_done:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                frame = live.frame_in(msg.data, False)
            elif kind is WSMsgType.TEXT:
                frame = live.frame_in(msg.data.encode("utf-8"), True)
            elif kind is WSMsgType.CLOSE and (problem := close_code_problem(msg.data)) is not None:
                raise ProtocolViolationError(problem)  # the session closes with 1002
            else:
                if kind is WSMsgType.ERROR:
                    # aiohttp has already closed with the matching code (1009 for
                    # an oversized message, 1002/1007 for protocol errors).
                    log.info(
                        "session input error",
                        extra={"session": live.session.id, "error": str(ws.exception())},
                    )
                live.feed(e.ClientEnded())
                return
            if frame is not None:
                yield frame
            while inbox:
                yield inbox.pop(0)


CLOSE_HANDSHAKE_TIMEOUT = 5.0


class _CheckedWebSocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response with its reader behind a :class:`MaskCheck`, its writer corked.

    aiohttp reads unmasked client frames; RFC 6455 §5.1 says close.  The check
    goes in where aiohttp installs its reader (``_post_start``), so bytes that
    came with the upgrade request are checked too.  The writer's transport
    becomes a :class:`CorkedTransport` there, so every frame aiohttp writes
    (data, pong, close) passes it in order.
    """

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler: Any = request.protocol
        tail = bytes(handler._message_tail)  # fed to aiohttp's reader by super()
        super()._post_start(request, protocol, writer)
        checked = _CheckedReader(handler._payload_parser, self)
        if tail:
            checked.check(tail)
        handler._payload_parser = checked
        # Small frames of one loop turn leave in one write (cork.py says why and when not).
        writer.transport = CorkedTransport(writer.transport, request._loop)


class _CheckedReader:
    """Feeds aiohttp's reader only bytes whose frame headers pass the mask check."""

    __slots__ = ("_check", "_inner", "_ws")

    def __init__(self, inner: Any, ws: web.WebSocketResponse) -> None:
        self._inner = inner
        self._ws = ws
        self._check: MaskCheck | None = MaskCheck()

    def check(self, data: bytes) -> bool:
        """False (and the session's next receive() ends it with 1002) if ``data`` breaks the rule."""
        check = self._check
        if check is None:
            return False
        problem = check.feed(data)
        if problem is None:
            return True
        self._fail(problem)
        return False

    def _fail(self, problem: str) -> None:
        self._check = None
        # What aiohttp's own reader does on a protocol error: receive() closes with the code.
        self._ws._reader.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, problem))  # type: ignore[union-attr]

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        # check() inlined: this runs on every read of every session.
        check = self._check
        if check is None:
            return True, b""
        problem = check.feed(data)
        if problem is not None:
            self._fail(problem)
            return True, b""
        result: tuple[bool, bytes] = self._inner.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._inner.feed_eof()


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: every metric of this process, Prometheus text format."""
    body, ctype = exposition()
    return web.Response(body=body, headers={"Content-Type": ctype})


async def _close(ws: web.WebSocketResponse, error: BidistreamError | None) -> None:
    """Close with the error's code and reason; never wait forever on a peer that does not read."""
    code = WSCloseCode.OK if error is None else wire_form(error).ws_close
    reason = b"" if error is None else close_reason(error.message).encode()
    try:
        async with asyncio.timeout(CLOSE_HANDSHAKE_TIMEOUT):
            await ws.close(code=code, message=reason)
    except (TimeoutError, ConnectionError):
        pass
