"""The browser demo page (``bidistream/web/``), served by the gateway itself.

A browser can only open ``wss://`` to the origin that trusts it, and the gateway
port is the one origin whose certificate the user already accepted (or whose CA
they installed), so the page lives on that same port: ``GET /`` redirects to
``/web/`` and ``GET /web/<file>`` serves one of the files shipped in the
package.  No build step and no CDN: the page works on a closed network.

Sans-I/O: :func:`static_response` maps a method and a path to an
:class:`~bidistream.gateway.http.HttpResponse` (or ``None`` when the path is
not the page's), and the front door writes it.  Only files present in the
package when first asked are served, by exact name, so no request path can
reach outside the directory.
"""

from __future__ import annotations

import functools
from importlib import resources

from bidistream.gateway.http import HttpResponse

__all__ = ["PAGE_PREFIX", "static_response"]

PAGE_PREFIX = "/web/"
_INDEX = "index.html"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts and worklets refuse other types
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

# The page talks only to its own origin ('self' covers wss:// on the same host and
# port); no inline script, so an injected string in the frame log cannot run.
_SECURITY_HEADERS = [
    (
        "content-security-policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    # no-cache, not no-store: the browser revalidates, so an upgraded gateway
    # never runs an old app.js against a new page.
    ("cache-control", "no-cache"),
]


@functools.cache
def _files() -> dict[str, tuple[bytes, str]]:
    """Name → (content, content type) of every servable file, read once.

    Read through ``importlib.resources`` so the page is found in a wheel as
    well as in a source checkout.
    """
    out: dict[str, tuple[bytes, str]] = {}
    web = resources.files("bidistream") / "web"
    if not web.is_dir():
        return out
    for entry in web.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and not name.startswith(".") and suffix in _TYPES:
            out[name] = (entry.read_bytes(), _TYPES[suffix])
    return out


def _redirect(location: str) -> HttpResponse:
    return HttpResponse(302, [("location", location), ("content-length", "0")], b"")


def _not_found(path: str) -> HttpResponse:
    body = f"no such page file: {path}\n".encode()
    return HttpResponse(
        404,
        [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body)))],
        body,
    )


def static_response(method: str, path: str) -> HttpResponse | None:
    """The page's answer to ``method path``, or ``None`` if it is not a page request.

    Only GET and HEAD are the page's: ``POST /`` is the control API and must
    fall through untouched.
    """
    if method not in ("GET", "HEAD"):
        return None
    if path in ("/", PAGE_PREFIX[:-1]):
        return _redirect(PAGE_PREFIX)
    if not path.startswith(PAGE_PREFIX):
        return None
    name = path[len(PAGE_PREFIX) :] or _INDEX
    found = _files().get(name)
    if found is None:
        return _not_found(path)
    content, content_type = found
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(content))),
        *_SECURITY_HEADERS,
    ]
    # A HEAD answer states the length of the body it does not send.
    return HttpResponse(200, headers, b"" if method == "HEAD" else content)
