"""SigV4 verification for the runtime and control APIs: request and per-event signatures.

Verification is on when credentials are configured (``--credentials AKID:SECRET``
or ``BIDISTREAM_CREDENTIALS`` / ``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY``)
and off otherwise, so a laptop demo needs no keys while a shared gateway can
insist on them.  The algorithms are AWS's documented ones (see the wire spec
sections 3.3 and 3.6); signing only needs ``hmac`` and ``hashlib``, and only
verification is done here, so no signing library is pulled in.

The request signature seeds the event chain: each event's signature covers the
previous one, so a dropped, reordered or replayed event breaks the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from bidistream.errors import AuthError

__all__ = [
    "STREAMING_PAYLOAD",
    "CredentialStore",
    "EventChain",
    "RequestSignature",
    "canonical_request",
    "signing_key",
    "verify_request",
]

STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
_ALGORITHM = "AWS4-HMAC-SHA256"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class CredentialStore:
    """Access key id → secret; empty means verification is off."""

    secrets: dict[str, str]
    # Largest clock difference accepted between x-amz-date and now (AWS: 15 min).
    # None disables the check (replaying captured vectors).
    max_skew: float | None = 15 * 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.secrets)

    @classmethod
    def from_spec(cls, spec: str | None, *, use_env: bool = True) -> CredentialStore:
        """``AKID:SECRET[,AKID2:SECRET2]``; falls back to the environment when ``spec`` is None."""
        secrets: dict[str, str] = {}
        if spec is None and use_env:
            spec = os.environ.get("BIDISTREAM_CREDENTIALS")
            if spec is None:
                akid, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
                if akid and secret and os.environ.get("BIDISTREAM_VERIFY_SIGV4") == "1":
                    secrets[akid] = secret
        for item in (spec or "").split(","):
            if not item.strip():
                continue
            akid, sep, secret = item.strip().partition(":")
            if not sep or not akid or not secret:
                raise ValueError("credentials must look like AKID:SECRET")
            secrets[akid] = secret
        return cls(secrets)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.digest(("AWS4" + secret).encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: list[str],
    payload_hash: str,
) -> str:
    """The SigV4 canonical request; ``headers`` keyed by lower-case name."""
    lines = [method, path or "/", _canonical_query(query)]
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise AuthError(f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{' '.join(value.split())}")
    return "\n".join([*lines, "", ";".join(signed_headers), payload_hash])


@dataclass(frozen=True, slots=True)
class RequestSignature:
    """A verified request: the seed of its event chain and the key that signs it."""

    access_key: str
    key: bytes
    scope: str
    signature: str


def _parse_authorization(value: str) -> tuple[str, str, str, str, list[str], str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != _ALGORITHM:
        raise AuthError(f"unsupported authorization algorithm {algorithm!r}; expected {_ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, _, val = part.strip().partition("=")
        fields[key] = val
    try:
        akid, date, region, service, terminal = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except (KeyError, ValueError) as exc:
        raise AuthError("malformed Authorization header") from exc
    if terminal != "aws4_request":
        raise AuthError("malformed Authorization credential scope")
    return akid, date, region, service, signed, signature


def _strip_default_port(authority: str) -> str:
    return authority[: -len(":443")] if authority.endswith(":443") else authority


def verify_request(
    store: CredentialStore,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes | None = None,
) -> RequestSignature:
    """Check a request's SigV4 signature; ``headers`` keyed by lower-case name.

    ``body`` None means the streaming form (``x-amz-content-sha256`` carries the
    literal); otherwise the payload hash is the body's SHA-256.
    """
    if "host" not in headers and ":authority" in headers:
        # HTTP/2 has no Host header; the client signs ``host`` with the value it
        # sends as ``:authority`` (RFC 9113 8.3.1), minus the scheme's default port.
        headers = {**headers, "host": _strip_default_port(headers[":authority"])}
    auth = headers.get("authorization")
    if not auth:
        raise AuthError("missing Authorization header: this gateway requires SigV4-signed requests")
    akid, date, region, service, signed, signature = _parse_authorization(auth)
    secret = store.secrets.get(akid)
    if secret is None:
        raise AuthError(f"the security token included in the request is invalid (unknown key {akid})")
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        raise AuthError("x-amz-date does not match the credential scope date")
    if store.max_skew is not None:
        try:
            when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError as exc:
            raise AuthError("malformed x-amz-date") from exc
        if abs(when - time.time()) > store.max_skew:
            raise AuthError("signature expired: x-amz-date is too far from the server's clock")
    if body is None:
        payload_hash = headers.get("x-amz-content-sha256", STREAMING_PAYLOAD)
    else:
        payload_hash = headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    creq = canonical_request(method, path, query, headers, signed, payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([_ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(secret, date, region, service)
    expected = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise AuthError(
            "the request signature we calculated does not match the signature you provided; "
            "check your secret access key and signing method"
        )
    return RequestSignature(akid, key, scope, signature)


class EventChain:
    """Verifies the per-event signatures of one streamed request, in order."""

    __slots__ = ("_key", "_prior", "_scope")

    def __init__(self, request: RequestSignature) -> None:
        self._key = request.key
        self._scope = request.scope
        self._prior = request.signature

    def verify(self, date_header: bytes, date_ms: int, payload: bytes, signature: bytes) -> None:
        stamp = datetime.fromtimestamp(date_ms // 1000, UTC).strftime("%Y%m%dT%H%M%SZ")
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                stamp,
                self._scope,
                self._prior,
                hashlib.sha256(date_header).hexdigest(),
                hashlib.sha256(payload).hexdigest() if payload else _EMPTY_SHA256,
            ]
        )
        expected = hmac.digest(self._key, to_sign.encode(), "sha256")
        if not hmac.compare_digest(expected, signature):
            raise AuthError("event signature does not match: the event stream was altered or reordered")
        self._prior = expected.hex()
