"""Which operation a request is: one sans-I/O function for every front door.

The HTTP/2 door, the HTTP/1.1 door, the WebSocket door and the gateway's
request handler all ask :func:`classify`, so a path pattern lives in one place
(the SageMaker ones in :mod:`bidistream.contract`) and no door imports another
for a suffix.  Classifying only extracts; validating the extracted names is
the caller's next step, so each door answers a bad name in its own wire form.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from bidistream.contract import BIDI_SUFFIX, ENDPOINT_PREFIX, INVOKE_SUFFIX, STREAM_SUFFIX, WS_SEGMENT
from bidistream.gateway.grpcwire import ENDPOINT_KEY, is_grpc_content_type

__all__ = ["PAGE_PREFIX", "Route", "RouteKind", "classify"]

PAGE_PREFIX = "/web/"


class RouteKind(enum.Enum):
    PING = "ping"  # GET /ping
    METRICS = "metrics"  # GET /metrics: Prometheus text exposition
    PAGE = "page"  # GET|HEAD / and /web/... : the browser demo page
    CONTROL = "control"  # POST / with X-Amz-Target: the control API
    INVOKE = "invoke"  # POST /endpoints/{name}/invocations
    INVOKE_STREAM = "invoke-stream"  # POST /endpoints/{name}/invocations-response-stream
    BIDI = "bidi"  # POST /endpoints/{name}/invocations-bidirectional-stream (HTTP/2 only)
    WEBSOCKET = "websocket"  # GET upgrade /endpoints/{name}/ws[/<path>]
    # Any request with content-type application/grpc[+codec] (HTTP/2 only): relayed to an
    # instance's gRPC port; ``endpoint`` is the x-bidistream-endpoint metadata (may be empty).
    GRPC = "grpc"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    endpoint: str = ""  # as it appeared in the path; not yet validated
    # The WS door's model invocation path (after ``/ws/``); None for plain ``/ws``.
    invocation_path: str | None = None


_UNKNOWN = Route(RouteKind.UNKNOWN)
_SUFFIXES = (
    (BIDI_SUFFIX, RouteKind.BIDI),
    (STREAM_SUFFIX, RouteKind.INVOKE_STREAM),
    (INVOKE_SUFFIX, RouteKind.INVOKE),
)


def classify(method: str, path: str, headers: Mapping[str, str], *, upgrade: bool = False) -> Route:
    """The route of ``method path`` (no query); ``upgrade`` for a WebSocket upgrade request."""
    if upgrade:
        return _websocket(path)
    # gRPC is told by its content type, whatever the path and method (a bad method is the
    # relay's to refuse, in gRPC's wire form).
    if is_grpc_content_type(headers.get("content-type", "")):
        return Route(RouteKind.GRPC, headers.get(ENDPOINT_KEY, "").strip())
    if method == "GET" and path == "/ping":
        return Route(RouteKind.PING)
    if method == "GET" and path == "/metrics":
        return Route(RouteKind.METRICS)
    if method in ("GET", "HEAD") and (path in ("/", PAGE_PREFIX[:-1]) or path.startswith(PAGE_PREFIX)):
        return Route(RouteKind.PAGE)
    if method == "POST" and path == "/" and "x-amz-target" in headers:
        return Route(RouteKind.CONTROL)
    if method == "POST" and path.startswith(ENDPOINT_PREFIX):
        for suffix, kind in _SUFFIXES:
            if path.endswith(suffix):
                return Route(kind, path[len(ENDPOINT_PREFIX) : -len(suffix)])
    return _UNKNOWN


def _websocket(path: str) -> Route:
    if not path.startswith(ENDPOINT_PREFIX):
        return Route(RouteKind.WEBSOCKET)
    endpoint, _, tail = path[len(ENDPOINT_PREFIX) :].partition("/")
    if tail == WS_SEGMENT:
        return Route(RouteKind.WEBSOCKET, endpoint)
    if tail.startswith(WS_SEGMENT + "/"):
        return Route(RouteKind.WEBSOCKET, endpoint, tail[len(WS_SEGMENT) + 1 :])
    return Route(RouteKind.WEBSOCKET)
