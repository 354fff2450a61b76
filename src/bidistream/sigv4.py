"""SigV4 verification for the runtime and control APIs and the WS door: request, presigned URL
and per-event signatures.

Verification is on when credentials are configured and off otherwise, so a
laptop demo needs no keys while a shared gateway can insist on them.  They are
configured by, in this order: ``--credentials AKID:SECRET[,AKID:SECRET]``;
else ``BIDISTREAM_CREDENTIALS`` (same form); else ``AWS_ACCESS_KEY_ID`` +
``AWS_SECRET_ACCESS_KEY`` **only together with** ``BIDISTREAM_VERIFY_SIGV4=1``.
The AWS pair alone never turns verification on: it is what every *client*
shell exports (``bidistream env`` prints placeholders), and a gateway started
from such a shell must not start refusing everyone.

A signature is accepted only for the scope this gateway answers as: service
``sagemaker`` and the gateway's region (a signature made for ``s3`` or for
another region is refused, as AWS refuses it).  A declared
``x-amz-content-sha256`` must be the body's hash, unless it is one of the
literals that say the body is not signed this way (``UNSIGNED-PAYLOAD``, or
a ``STREAMING-…`` literal on a streamed request).

The algorithms are AWS's documented ones (see the wire spec sections 3.3 and
3.6); they only need ``hmac`` and ``hashlib``, and only verification is done
here, so no signing library is pulled in.  The request signature seeds the
event chain: each event's signature covers the previous one, so a dropped,
reordered or replayed event breaks the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from bidistream.defaults import DEFAULT_REGION
from bidistream.errors import AuthError, InputValidationError, InvalidSignatureError

__all__ = [
    "SERVICE",
    "STREAMING_PAYLOAD",
    "UNSIGNED_PAYLOAD",
    "CredentialStore",
    "EventChain",
    "RequestSignature",
    "canonical_request",
    "is_presigned",
    "signing_key",
    "strip_presign",
    "verify_presigned",
    "verify_request",
]

STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-EVENTS"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
SERVICE = "sagemaker"
_ALGORITHM = "AWS4-HMAC-SHA256"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# A presigned URL lives at most 7 days (AWS's limit for X-Amz-Expires).
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600


@dataclass
class CredentialStore:
    """Access key id → secret; empty means verification is off.

    ``region`` and ``service`` are the only credential scope accepted.
    """

    secrets: dict[str, str]
    # Largest clock difference accepted between x-amz-date and now (AWS: 15 min).
    # None disables the check (replaying captured vectors).
    max_skew: float | None = 15 * 60.0
    region: str = DEFAULT_REGION
    service: str = SERVICE
    # Keys the WebSocket door accepts as ``Authorization: Bearer|Token <key>`` or as the
    # subprotocols ``token, <key>`` (browsers cannot set headers).  Not for SigV4 routes.
    api_keys: frozenset[str] = frozenset()

    @property
    def enabled(self) -> bool:
        """SigV4 verification is on (every runtime and control-plane request must be signed)."""
        return bool(self.secrets)

    @property
    def ws_protected(self) -> bool:
        """The WebSocket door refuses unauthenticated upgrades (SigV4 or an API key configured)."""
        return bool(self.secrets) or bool(self.api_keys)

    def knows_api_key(self, key: str) -> bool:
        found = False
        for known in self.api_keys:  # compare with every key: the time says nothing about which
            found |= hmac.compare_digest(known.encode(), key.encode())
        return found

    @classmethod
    def from_spec(
        cls,
        spec: str | None,
        *,
        use_env: bool = True,
        region: str = DEFAULT_REGION,
        api_keys: Iterable[str] = (),
    ) -> CredentialStore:
        """``AKID:SECRET[,AKID2:SECRET2]``; falls back to the environment when ``spec`` is None
        (see the module docstring).  A malformed spec is an InputValidationError."""
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
                raise InputValidationError(
                    "credentials must look like AKID:SECRET[,AKID:SECRET] (from --credentials or "
                    f"$BIDISTREAM_CREDENTIALS); got an item without the two parts: {akid or item.strip()!r}…"
                )
            secrets[akid] = secret
        keys = frozenset(k for k in api_keys if k)
        return cls(secrets, region=region, api_keys=keys)


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
    secret = _secret_for(store, akid, region, service)
    amz_date = headers.get("x-amz-date", "")
    _check_date(store, date, amz_date)
    payload_hash = _payload_hash(headers.get("x-amz-content-sha256"), body)
    creq = canonical_request(method, path, query, headers, signed, payload_hash)
    return _check_signature(secret, akid, amz_date, date, region, service, creq, signature)


def _secret_for(store: CredentialStore, akid: str, region: str, service: str) -> str:
    if service != store.service:
        raise AuthError(
            f"credential scope names service {service!r}; this gateway accepts only {store.service!r}"
        )
    if region != store.region:
        raise AuthError(f"credential scope names region {region!r}; this gateway answers as {store.region!r}")
    secret = store.secrets.get(akid)
    if secret is None:
        raise AuthError(f"the security token included in the request is invalid (unknown key {akid})")
    return secret


def _parse_date(scope_date: str, amz_date: str) -> float:
    if not amz_date.startswith(scope_date):
        raise AuthError("x-amz-date does not match the credential scope date")
    try:
        return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise AuthError("malformed x-amz-date") from exc


def _check_date(store: CredentialStore, scope_date: str, amz_date: str) -> None:
    when = _parse_date(scope_date, amz_date)
    if store.max_skew is not None and abs(when - time.time()) > store.max_skew:
        raise AuthError("signature expired: x-amz-date is too far from the server's clock")


def _payload_hash(declared: str | None, body: bytes | None) -> str:
    """The payload hash the signature must cover: the declared one, checked against the body."""
    if body is None:  # a streamed request: the events carry their own signatures
        return declared or STREAMING_PAYLOAD
    if declared is None or declared == "":
        return hashlib.sha256(body).hexdigest()
    if declared == UNSIGNED_PAYLOAD:
        return declared
    if declared.startswith("STREAMING-"):
        raise AuthError(f"x-amz-content-sha256 {declared} is for streamed requests; this one has a body")
    if not hmac.compare_digest(declared.lower(), hashlib.sha256(body).hexdigest()):
        raise AuthError(
            "x-amz-content-sha256 does not match the body: the body is not the one that was signed"
        )
    return declared


def _check_signature(
    secret: str, akid: str, amz_date: str, date: str, region: str, service: str, creq: str, signature: str
) -> RequestSignature:
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([_ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(secret, date, region, service)
    expected = hmac.new(key, to_sign.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise InvalidSignatureError(
            "the request signature we calculated does not match the signature you provided; "
            "check your secret access key and signing method"
        )
    return RequestSignature(akid, key, scope, signature)


def _query_params(query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in query.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def is_presigned(query: str) -> bool:
    return any(name == "X-Amz-Signature" for name, _ in _query_params(query))


def strip_presign(query: str) -> str:
    """``query`` without the ``X-Amz-*`` parameters of a presigned URL (what the model must not see)."""
    return "&".join(item for item in query.split("&") if item and not unquote(item).startswith("X-Amz-"))


def verify_presigned(
    store: CredentialStore, method: str, path: str, query: str, headers: Mapping[str, str]
) -> RequestSignature:
    """Check a SigV4 presigned URL (query-string authentication, as AWS's WebSocket APIs use).

    The canonical query is every parameter but ``X-Amz-Signature``; the payload is
    empty; ``X-Amz-Expires`` bounds the URL's life from ``X-Amz-Date``.
    """
    params = dict(_query_params(query))
    if params.get("X-Amz-Algorithm") != _ALGORITHM:
        raise AuthError(f"presigned URL: X-Amz-Algorithm must be {_ALGORITHM}")
    try:
        akid, date, region, service, terminal = params["X-Amz-Credential"].split("/")
        signed = params["X-Amz-SignedHeaders"].split(";")
        signature = params["X-Amz-Signature"]
        amz_date = params["X-Amz-Date"]
        expires = int(params.get("X-Amz-Expires", "900"))
    except (KeyError, ValueError) as exc:
        raise AuthError("presigned URL: malformed X-Amz-* parameters") from exc
    if terminal != "aws4_request" or not 0 < expires <= MAX_PRESIGN_EXPIRES:
        raise AuthError("presigned URL: malformed credential scope or X-Amz-Expires")
    secret = _secret_for(store, akid, region, service)
    when = _parse_date(date, amz_date)
    now = time.time()
    if store.max_skew is not None:
        if now > when + expires:
            raise AuthError("presigned URL expired: X-Amz-Date + X-Amz-Expires is in the past")
        if when > now + store.max_skew:
            raise AuthError("presigned URL: X-Amz-Date is too far in the future for the server's clock")
    if "host" not in headers and ":authority" in headers:
        headers = {**headers, "host": _strip_default_port(headers[":authority"])}
    unsigned_query = "&".join(item for item in query.split("&") if not item.startswith("X-Amz-Signature="))
    # The payload of an upgrade is empty: most signers hash it (botocore, API Gateway's
    # WebSocket clients); S3-style signers write UNSIGNED-PAYLOAD.  Both mean "no body".
    for payload in (_EMPTY_SHA256, UNSIGNED_PAYLOAD):
        creq = canonical_request(method, path, unsigned_query, headers, signed, payload)
        try:
            return _check_signature(secret, akid, amz_date, date, region, service, creq, signature)
        except AuthError:
            if payload == UNSIGNED_PAYLOAD:
                raise
    raise AssertionError("unreachable")


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
