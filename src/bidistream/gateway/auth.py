"""Who may open a WebSocket on the gateway's front door (sans-I/O).

With ``--credentials`` (or ``--api-key``) set, an upgrade must carry one of:

* a SigV4-presigned URL (query-string authentication, ``X-Amz-Signature`` and
  friends, as AWS's own WebSocket APIs use), scoped to ``sagemaker`` and the
  gateway's region;
* a SigV4 ``Authorization: AWS4-HMAC-SHA256 …`` header on the upgrade request;
* an API key as ``Authorization: Bearer <key>`` or ``Authorization: Token <key>``
  (Deepgram's server SDKs), or as the subprotocols ``token, <key>`` (browsers,
  which cannot set headers on a WebSocket).

The door answers a refusal before the 101, so the client reads a real status:
401 when nothing usable was sent, 403 when what was sent is wrong.  The
presign parameters are removed from the query the model sees.

gRPC calls relayed by the gateway authenticate the same way, with the same
``authorization`` value as call metadata (:func:`authenticate_grpc`): an API
key (``Bearer``/``Token``) or a SigV4 signature of ``POST /Service/Method``
over the call's headers (``x-amz-date``, ``x-amz-content-sha256`` as sent,
usually ``UNSIGNED-PAYLOAD``: the messages are a stream).  A gRPC call has no
URL query, so there is no presigned form.
"""

from __future__ import annotations

from collections.abc import Mapping

from bidistream.errors import AuthError, UnauthenticatedError
from bidistream.sigv4 import CredentialStore, is_presigned, strip_presign, verify_presigned, verify_request

__all__ = ["authenticate_grpc", "authenticate_upgrade"]

_KEY_SCHEMES = ("bearer", "token")


def authenticate_upgrade(store: CredentialStore, path: str, query: str, headers: Mapping[str, str]) -> str:
    """Check an upgrade's credentials; returns the query to hand on (presign parameters removed).

    ``headers`` are keyed by lower-case name.  Raises UnauthenticatedError (401) or AuthError (403).
    """
    presigned = is_presigned(query)
    if not store.ws_protected:
        return strip_presign(query) if presigned else query
    if presigned:
        if not store.enabled:
            raise AuthError(
                "this gateway has no SigV4 credentials: use its API key instead of a presigned URL"
            )
        verify_presigned(store, "GET", path, query, headers)
        return strip_presign(query)
    auth = headers.get("authorization", "").strip()
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme == "AWS4-HMAC-SHA256":
            if not store.enabled:
                raise AuthError("this gateway has no SigV4 credentials: use its API key")
            verify_request(store, "GET", path, query, headers, b"")
            return query
        if scheme.lower() in _KEY_SCHEMES:
            _check_key(store, value.strip())
            return query
        raise AuthError(f"unsupported Authorization scheme {scheme!r}: use Bearer, Token or AWS4-HMAC-SHA256")
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    if len(offered) >= 2 and offered[0].lower() == "token":
        _check_key(store, offered[1])
        return query
    raise UnauthenticatedError(
        "this gateway requires credentials on WebSocket upgrades: a SigV4-presigned URL, "
        "Authorization: Bearer <key>, or the subprotocols 'token, <key>'"
    )


def authenticate_grpc(store: CredentialStore, path: str, headers: Mapping[str, str]) -> None:
    """Check a gRPC call's credentials (metadata keyed by lower-case name), as the WebSocket door does.

    Raises UnauthenticatedError (UNAUTHENTICATED) when nothing usable was sent, AuthError when
    what was sent is wrong.
    """
    if not store.ws_protected:
        return
    auth = headers.get("authorization", "").strip()
    if not auth:
        raise UnauthenticatedError(
            "this gateway requires credentials on gRPC calls: metadata authorization: Bearer <key> "
            "or a SigV4 signature (AWS4-HMAC-SHA256)"
        )
    scheme, _, value = auth.partition(" ")
    if scheme == "AWS4-HMAC-SHA256":
        if not store.enabled:
            raise AuthError("this gateway has no SigV4 credentials: use its API key")
        verify_request(store, "POST", path, "", headers, None)
        return
    if scheme.lower() in _KEY_SCHEMES:
        _check_key(store, value.strip())
        return
    raise AuthError(f"unsupported authorization scheme {scheme!r}: use Bearer, Token or AWS4-HMAC-SHA256")


def _check_key(store: CredentialStore, key: str) -> None:
    if not store.api_keys:
        raise AuthError("this gateway accepts no API keys: sign the URL with SigV4 (a presigned URL)")
    if not key or not store.knows_api_key(key):
        raise AuthError("invalid API key")
