"""SigV4 policy: the body the signature covers, the scope it names, and how verification turns on.

Requests are signed by botocore (an implementation apart from ours) and verified by ours.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from bidistream.errors import AuthError, BidistreamError, InputValidationError
from bidistream.sigv4 import CredentialStore, verify_request

AKID, SECRET = "AKIDTEST", "secret-test"
URL = "https://127.0.0.1:8443/endpoints/echo/invocations"


def signed(
    body: bytes, *, declared: str | None = None, service: str = "sagemaker", region: str = "us-east-1"
):
    request = AWSRequest(
        method="POST", url=URL, data=body, headers={"Content-Type": "application/octet-stream"}
    )
    if declared is not None:
        request.headers["X-Amz-Content-SHA256"] = declared
    SigV4Auth(Credentials(AKID, SECRET), service, region).add_auth(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers["host"] = urlsplit(URL).netloc
    return headers


def verify(headers: dict[str, str], body: bytes, store: CredentialStore | None = None) -> None:
    verify_request(store or CredentialStore({AKID: SECRET}), "POST", urlsplit(URL).path, "", headers, body)


def test_a_signed_body_verifies_with_or_without_a_declared_hash() -> None:
    verify(signed(b"A"), b"A")
    verify(signed(b"A", declared=hashlib.sha256(b"A").hexdigest()), b"A")


def test_the_declared_hash_must_be_the_body_s() -> None:
    headers = signed(b"A", declared=hashlib.sha256(b"A").hexdigest())
    with pytest.raises(AuthError, match="does not match the body"):
        verify(headers, b"B")  # signed over A, sent with B


def test_unsigned_payload_is_the_one_literal_a_body_may_declare() -> None:
    verify(signed(b"A", declared="UNSIGNED-PAYLOAD"), b"anything")
    with pytest.raises(AuthError, match="streamed"):
        verify(signed(b"A", declared="STREAMING-AWS4-HMAC-SHA256-EVENTS"), b"A")


@pytest.mark.parametrize(("service", "region"), [("s3", "us-east-1"), ("sagemaker", "eu-west-1")])
def test_the_scope_is_pinned_to_sagemaker_and_the_gateway_region(service: str, region: str) -> None:
    with pytest.raises(AuthError, match="credential scope"):
        verify(signed(b"A", service=service, region=region), b"A")


def test_a_gateway_in_another_region_accepts_its_own() -> None:
    store = CredentialStore({AKID: SECRET}, region="eu-west-1")
    verify(signed(b"A", region="eu-west-1"), b"A", store)


def test_a_malformed_spec_is_our_error_not_a_bare_value_error() -> None:
    with pytest.raises(InputValidationError, match="AKID:SECRET") as info:
        CredentialStore.from_spec("nocolon", use_env=False)
    assert isinstance(info.value, BidistreamError) and not isinstance(info.value, ValueError)


def test_environment_credentials_need_the_explicit_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the module docstring says: the AWS pair alone (every client shell has it) is not enough.
    monkeypatch.delenv("BIDISTREAM_CREDENTIALS", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "A")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "B")
    monkeypatch.delenv("BIDISTREAM_VERIFY_SIGV4", raising=False)
    assert not CredentialStore.from_spec(None).enabled
    monkeypatch.setenv("BIDISTREAM_VERIFY_SIGV4", "1")
    assert CredentialStore.from_spec(None).secrets == {"A": "B"}
    monkeypatch.setenv("BIDISTREAM_CREDENTIALS", "C:D")
    assert CredentialStore.from_spec(None).secrets == {"C": "D"}  # BIDISTREAM_CREDENTIALS first
    assert CredentialStore.from_spec("E:F").secrets == {"E": "F"}  # the flag before both
