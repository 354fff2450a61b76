"""The demo page's routes: what is served, what is refused, what falls through."""

from __future__ import annotations

import pytest

from bidistream.gateway.static import static_response


def header(resp: object, name: str) -> str | None:
    return dict(getattr(resp, "headers", [])).get(name)


@pytest.mark.parametrize("path", ["/", "/web"])
def test_root_redirects_to_the_page(path: str) -> None:
    resp = static_response("GET", path)
    assert resp is not None and resp.status == 302
    assert header(resp, "location") == "/web/"


@pytest.mark.parametrize(
    ("path", "ctype", "marker"),
    [
        ("/web/", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/web/index.html", "text/html; charset=utf-8", b"<!doctype html>"),
        ("/web/app.js", "text/javascript; charset=utf-8", b"WebSocket"),
        ("/web/pcm-worklet.js", "text/javascript; charset=utf-8", b"registerProcessor"),
        ("/web/pcm.js", "text/javascript; charset=utf-8", b"Pcm16Downsampler"),
        ("/web/style.css", "text/css; charset=utf-8", b"#transcript"),
    ],
)
def test_page_files_are_served_with_their_type(path: str, ctype: str, marker: bytes) -> None:
    resp = static_response("GET", path)
    assert resp is not None and resp.status == 200
    assert isinstance(resp.body, bytes) and marker in resp.body
    assert header(resp, "content-type") == ctype
    assert header(resp, "content-length") == str(len(resp.body))
    assert "connect-src 'self'" in (header(resp, "content-security-policy") or "")
    assert header(resp, "x-content-type-options") == "nosniff"


def test_head_states_the_length_without_a_body() -> None:
    get, head = static_response("GET", "/web/app.js"), static_response("HEAD", "/web/app.js")
    assert get is not None and head is not None and isinstance(get.body, bytes)
    assert head.status == 200 and head.body == b""
    assert header(head, "content-length") == str(len(get.body))


@pytest.mark.parametrize(
    "path",
    ["/web/nope.js", "/web/../pyproject.toml", "/web/%2e%2e/server.py", "/web/sub/app.js", "/web/.x.js"],
)
def test_anything_else_under_web_is_404(path: str) -> None:
    resp = static_response("GET", path)
    assert resp is not None and resp.status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/"),
        ("POST", "/web/app.js"),
        ("GET", "/ping"),
        ("GET", "/endpoints/echo/ws"),
        ("GET", "/webx"),
    ],
)
def test_other_requests_fall_through(method: str, path: str) -> None:
    # POST / is the control API: the page must never shadow it.
    assert static_response(method, path) is None
