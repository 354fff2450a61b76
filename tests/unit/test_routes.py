"""gateway.routes.classify: one sans-I/O answer to "which operation is this request"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.gateway.routes import Route, RouteKind, classify

CONTROL = {"x-amz-target": "SageMaker.ListEndpoints"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("GET", "/ping", {}, Route(RouteKind.PING)),
        ("GET", "/", {}, Route(RouteKind.PAGE)),
        ("HEAD", "/web/index.html", {}, Route(RouteKind.PAGE)),
        ("GET", "/web", {}, Route(RouteKind.PAGE)),
        ("POST", "/", CONTROL, Route(RouteKind.CONTROL)),
        ("POST", "/", {}, Route(RouteKind.UNKNOWN)),  # POST / without a target is not the control API
        ("GET", "/", CONTROL, Route(RouteKind.PAGE)),
        ("POST", "/endpoints/echo/invocations", {}, Route(RouteKind.INVOKE, "echo")),
        ("POST", "/endpoints/echo/invocations-response-stream", {}, Route(RouteKind.INVOKE_STREAM, "echo")),
        ("POST", "/endpoints/echo/invocations-bidirectional-stream", {}, Route(RouteKind.BIDI, "echo")),
        ("GET", "/endpoints/echo/invocations-bidirectional-stream", {}, Route(RouteKind.UNKNOWN)),
        ("GET", "/endpoints/echo/invocations", {}, Route(RouteKind.UNKNOWN)),
        ("POST", "/endpoints/echo/other", {}, Route(RouteKind.UNKNOWN)),
        # Extraction only: the name is validated by the caller, in its own wire form.
        ("POST", "/endpoints/a/b/invocations", {}, Route(RouteKind.INVOKE, "a/b")),
        ("POST", "/elsewhere/invocations", {}, Route(RouteKind.UNKNOWN)),
    ],
)
def test_requests(method: str, path: str, headers: dict[str, str], expected: Route) -> None:
    assert classify(method, path, headers) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/endpoints/echo/ws", Route(RouteKind.WEBSOCKET, "echo")),
        ("/endpoints/speech/ws/v1/listen", Route(RouteKind.WEBSOCKET, "speech", "v1/listen")),
        ("/endpoints/echo/ws/", Route(RouteKind.WEBSOCKET, "echo", "")),
        ("/endpoints/echo/wsx", Route(RouteKind.WEBSOCKET)),
        ("/endpoints/echo", Route(RouteKind.WEBSOCKET)),
        ("/ws", Route(RouteKind.WEBSOCKET)),
    ],
)
def test_websocket_upgrades(path: str, expected: Route) -> None:
    assert classify("GET", path, {}, upgrade=True) == expected


_NAME = st.from_regex(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,20}", fullmatch=True)


@given(
    _NAME,
    st.sampled_from(["/invocations", "/invocations-response-stream", "/invocations-bidirectional-stream"]),
)
def test_the_endpoint_name_round_trips(name: str, suffix: str) -> None:
    route = classify("POST", f"/endpoints/{name}{suffix}", {})
    assert route.endpoint == name
    assert route.kind is not RouteKind.UNKNOWN


@given(st.text(max_size=60), st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE"]), st.booleans())
def test_any_input_gets_a_route(path: str, method: str, upgrade: bool) -> None:
    route = classify(method, path, {}, upgrade=upgrade)
    assert isinstance(route.kind, RouteKind)
    if route.kind in (RouteKind.INVOKE, RouteKind.INVOKE_STREAM, RouteKind.BIDI):
        assert method == "POST" and path.startswith("/endpoints/")
