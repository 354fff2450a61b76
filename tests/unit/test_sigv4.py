"""SigV4 request and event-chain verification against the captured client vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidistream.errors import AuthError, InputValidationError
from bidistream.eventstream import unwrap
from bidistream.sigv4 import CredentialStore, EventChain, canonical_request, verify_request

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
SPEC = json.loads((VECTORS / "sagemaker-bidi-vectors.json").read_text())
HEADERS = {k: v for k, v in json.loads((VECTORS / "sagemaker-bidi-request-headers.json").read_text())}
PATH = "/endpoints/my-endpoint/invocations-bidirectional-stream"


def store(secret: str = SPEC["credentials"]["secret_access_key"]) -> CredentialStore:
    s = CredentialStore({SPEC["credentials"]["access_key_id"]: secret})
    s.max_skew = None
    return s


def h2_headers() -> dict[str, str]:
    out = {k: v for k, v in HEADERS.items() if not k.startswith(":")}
    out["host"] = HEADERS[":authority"]
    return out


def test_canonical_request_matches_vector() -> None:
    signed = "content-type;host;x-amz-content-sha256;x-amz-date;x-amzn-sagemaker-target-variant".split(";")
    creq = canonical_request("POST", PATH, "", h2_headers(), signed, "STREAMING-AWS4-HMAC-SHA256-EVENTS")
    assert creq == SPEC["canonical_request"]


def test_request_signature_and_event_chain_verify() -> None:
    sig = verify_request(store(), "POST", PATH, "", h2_headers())
    assert sig.signature == SPEC["seed_signature_hex"]
    chain = EventChain(sig)
    for event in SPEC["request_events"]:
        ev = unwrap(bytes.fromhex((VECTORS / event["file"]).read_text().strip()))
        assert ev.date_header is not None and ev.date_ms is not None and ev.signature is not None
        chain.verify(ev.date_header, ev.date_ms, ev.inner, ev.signature)


def test_headers_exactly_as_received_over_h2_verify() -> None:
    # HTTP/2 carries no Host header: the signed ``host`` is the ``:authority`` value.
    assert "host" not in HEADERS
    sig = verify_request(store(), "POST", PATH, "", dict(HEADERS))
    assert sig.signature == SPEC["seed_signature_hex"]


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(AuthError, match="does not match"):
        verify_request(store("not-the-secret"), "POST", PATH, "", h2_headers())


def test_reordered_events_break_the_chain() -> None:
    chain = EventChain(verify_request(store(), "POST", PATH, "", h2_headers()))
    ev2 = unwrap(bytes.fromhex((VECTORS / "sagemaker-bidi-request-event-2.hex").read_text().strip()))
    assert ev2.date_header and ev2.date_ms and ev2.signature
    with pytest.raises(AuthError, match="altered or reordered"):
        chain.verify(ev2.date_header, ev2.date_ms, ev2.inner, ev2.signature)


def test_missing_authorization_and_unknown_key() -> None:
    headers = h2_headers()
    del headers["authorization"]
    with pytest.raises(AuthError, match="missing Authorization"):
        verify_request(store(), "POST", PATH, "", headers)
    with pytest.raises(AuthError, match="unknown key"):
        verify_request(CredentialStore({"OTHER": "x"}, None), "POST", PATH, "", h2_headers())


def test_skew_is_enforced_by_default() -> None:
    s = CredentialStore({SPEC["credentials"]["access_key_id"]: SPEC["credentials"]["secret_access_key"]})
    with pytest.raises(AuthError, match="too far"):
        verify_request(s, "POST", PATH, "", h2_headers())


def test_store_from_spec() -> None:
    assert CredentialStore.from_spec("A:B,C:D", use_env=False).secrets == {"A": "B", "C": "D"}
    assert not CredentialStore.from_spec(None, use_env=False).enabled
    with pytest.raises(InputValidationError):
        CredentialStore.from_spec("nocolon", use_env=False)
