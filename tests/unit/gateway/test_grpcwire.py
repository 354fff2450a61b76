"""The gRPC relay's sans-I/O pieces: classification, first-message model_name, statuses, auth.

The model_name scanner is checked against messages encoded by the stubs that
ship with MLServer and tritonclient (encoded in child processes: the two stub
sets cannot share one process, and this one imports neither).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidistream.errors import (
    AuthError,
    BidistreamError,
    EndpointNotFoundError,
    InputValidationError,
    InstanceFullError,
    InternalError,
    ServiceUnavailableError,
    UnauthenticatedError,
)
from bidistream.gateway.auth import authenticate_grpc
from bidistream.gateway.grpcwire import (
    MAX_ROUTING_PREFIX,
    FirstMessage,
    grpc_message,
    is_busy,
    is_grpc_content_type,
    model_name_method,
    request_problem,
    split_path,
    trailers_only,
)
from bidistream.gateway.routes import Route, RouteKind, classify
from bidistream.routing import StaticRouter
from bidistream.sigv4 import CredentialStore
from tests.conftest import child_env
from tests.support.waiting import scaled

ENCODE = """
import json, sys
kind = sys.argv[1]
if kind == "mlserver":
    import mlserver.grpc.dataplane_pb2 as pb
else:
    import tritonclient.grpc.service_pb2 as pb
out = {}
r = pb.ModelInferRequest(model_name="my-model", model_version="2", id="req-1")
t = r.inputs.add(name="prompt", datatype="BYTES", shape=[1])
t.contents.bytes_contents.append(b"x" * 3000)
out["infer"] = r.SerializeToString().hex()
out["ready"] = pb.ModelReadyRequest(name="other-model").SerializeToString().hex()
out["metadata"] = pb.ModelMetadataRequest(name="m3", version="1").SerializeToString().hex()
out["no_name"] = pb.ModelInferRequest(id="only-id").SerializeToString().hex()
out["fields"] = [
    (m, pb.DESCRIPTOR.message_types_by_name[m].fields_by_number[1].name)
    for m in ("ModelInferRequest", "ModelReadyRequest", "ModelMetadataRequest")
]
svc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
out["stream_input"] = svc.methods_by_name["ModelStreamInfer"].input_type.name
print(json.dumps(out))
"""


@pytest.fixture(scope="module", params=["mlserver", "tritonclient"])
def encoded(request: pytest.FixtureRequest) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", ENCODE, request.param],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )
    return dict(json.loads(done.stdout))


def framed(hex_message: object) -> bytes:
    data = bytes.fromhex(str(hex_message))
    return b"\0" + len(data).to_bytes(4, "big") + data


def scan(data: bytes, cuts: list[int] | None = None) -> FirstMessage:
    first = FirstMessage()
    pos = 0
    for cut in sorted(cuts or []):
        first.feed(data[pos:cut])
        pos = cut
    first.feed(data[pos:])
    return first


def test_field_numbers_in_both_stub_sets(encoded: dict[str, object]) -> None:
    assert encoded["fields"] == [
        ["ModelInferRequest", "model_name"],
        ["ModelReadyRequest", "name"],
        ["ModelMetadataRequest", "name"],
    ]
    assert encoded["stream_input"] == "ModelInferRequest"


def test_model_name_from_stub_encoded_messages(encoded: dict[str, object]) -> None:
    assert scan(framed(encoded["infer"])).name == "my-model"
    assert scan(framed(encoded["ready"])).name == "other-model"
    assert scan(framed(encoded["metadata"])).name == "m3"
    no_name = scan(framed(encoded["no_name"]))
    assert no_name.done and no_name.name is None and "no model name" in no_name.reason


def test_model_name_known_before_the_message_is_complete(encoded: dict[str, object]) -> None:
    """Field 1 is written first: its bytes suffice, the 3 KB tensor need not have arrived."""
    data = framed(encoded["infer"])
    first = FirstMessage()
    assert first.feed(data[:20]) and first.name == "my-model"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_answer(data: st.DataObject) -> None:
    name = data.draw(st.text(min_size=0, max_size=40))
    other = data.draw(st.binary(max_size=300))
    # Field 3 (bytes) before field 1 is legal protobuf too; then field 1.
    before = data.draw(st.booleans())
    body = b""
    if before:
        body += b"\x1a" + _varint(len(other)) + other
    raw = name.encode()
    body += b"\x0a" + _varint(len(raw)) + raw
    if not before:
        body += b"\x1a" + _varint(len(other)) + other
    message = b"\0" + len(body).to_bytes(4, "big") + body + b"\0\0\0\0\0"
    cuts = data.draw(st.lists(st.integers(0, len(message)), max_size=6))
    first = scan(message, cuts)
    assert first.done and first.name == name


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    first = FirstMessage()
    first.feed(data)
    first.end()
    assert first.done


def test_compressed_and_endless_prefixes_name_no_model() -> None:
    compressed = scan(b"\x01\0\0\0\x05" + b"\x0a\x03abc")
    assert compressed.name is None and "compressed" in compressed.reason
    # A huge field 3 before field 1: the gateway does not read further than its prefix limit.
    body = b"\x1a" + _varint(MAX_ROUTING_PREFIX * 2) + b"y" * (MAX_ROUTING_PREFIX * 2) + b"\x0a\x04late"
    endless = FirstMessage()
    assert endless.feed((b"\0" + len(body).to_bytes(4, "big") + body)[: MAX_ROUTING_PREFIX + 10])
    assert endless.name is None and str(MAX_ROUTING_PREFIX) in endless.reason
    short = FirstMessage()
    short.feed(b"\0\0\0")
    short.end()
    assert short.name is None and "ended" in short.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("application/grpc+json", True),
        ("application/grpc; charset=utf-8", True),
        ("Application/GRPC", True),
        ("application/grpc-web", False),
        ("application/grpc-web+proto", False),
        ("application/grpcfoo", False),
        ("application/json", False),
        ("", False),
    ],
)
def test_content_types(value: str, expected: bool) -> None:
    assert is_grpc_content_type(value) is expected


def test_classify_grpc_by_content_type_on_any_path() -> None:
    h = {"content-type": "application/grpc", "x-bidistream-endpoint": " words "}
    assert classify("POST", "/inference.GRPCInferenceService/ModelInfer", h) == Route(RouteKind.GRPC, "words")
    assert classify("POST", "/x.Y/Z", {"content-type": "application/grpc+proto"}) == Route(RouteKind.GRPC, "")
    # A GET is still gRPC's: the relay refuses it in gRPC's wire form.
    assert classify("GET", "/x.Y/Z", {"content-type": "application/grpc"}).kind is RouteKind.GRPC
    # The other routes are untouched.
    path = "/endpoints/e/invocations-bidirectional-stream"
    assert (
        classify("POST", path, {"content-type": "application/vnd.amazon.eventstream"}).kind is RouteKind.BIDI
    )


def test_paths_and_v2_methods() -> None:
    assert split_path("/inference.GRPCInferenceService/ModelInfer") == (
        "inference.GRPCInferenceService",
        "ModelInfer",
    )
    for bad in ("/", "/a", "/a/", "//b", "/a/b/c", "a/b"):
        assert split_path(bad) is None, bad
    for method in ("ModelInfer", "ModelStreamInfer", "ModelReady", "ModelMetadata"):
        assert model_name_method(f"/inference.GRPCInferenceService/{method}")
    assert not model_name_method("/inference.GRPCInferenceService/ServerLive")
    assert not model_name_method("/grpc.health.v1.Health/Check")
    assert not model_name_method("/nvidia.riva.asr.RivaSpeechRecognition/StreamingRecognize")


def test_request_problems() -> None:
    ok = {"te": "trailers"}
    assert request_problem("POST", "/a.B/C", ok) is None
    for method, path, headers, words in [
        ("GET", "/a.B/C", ok, "POST"),
        ("POST", "/nope", ok, "/package.Service/Method"),
        ("POST", "/a.B/C", {}, "te: trailers"),
        ("POST", "/a.B/C", {"te": "gzip"}, "te: trailers"),
    ]:
        problem = request_problem(method, path, headers)
        assert isinstance(problem, InputValidationError) and words in problem.message


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (EndpointNotFoundError("Endpoint x not found."), b"5"),
        (ServiceUnavailableError("no instance"), b"14"),
        (InstanceFullError("all busy"), b"8"),
        (UnauthenticatedError("who?"), b"16"),
        (AuthError("bad key"), b"16"),
        (InputValidationError("bad"), b"3"),
        (InternalError("ours"), b"13"),
    ],
)
def test_trailers_only_status_from_the_wire_table(error: BidistreamError, status: bytes) -> None:
    headers = dict(trailers_only(error))
    assert headers[b":status"] == b"200" and headers[b"content-type"] == b"application/grpc"
    assert headers[b"grpc-status"] == status
    assert headers[b"grpc-message"] == grpc_message(error.message)


def test_grpc_message_percent_encodes_outside_printable_ascii() -> None:
    assert grpc_message("plain: text (ok)") == b"plain: text (ok)"
    assert grpc_message("100% café\n") == b"100%25 caf%C3%A9%0A"


def test_busy_is_a_trailers_only_resource_exhausted() -> None:
    assert is_busy([(b":status", b"200"), (b"grpc-status", b"8"), (b"grpc-message", b"full")])
    assert not is_busy([(b":status", b"200"), (b"grpc-status", b"14")])
    assert not is_busy([(b":status", b"200")])


def test_grpc_credentials_mirror_the_websocket_door() -> None:
    path = "/inference.GRPCInferenceService/ModelInfer"
    open_store = CredentialStore({})
    authenticate_grpc(open_store, path, {})  # nothing configured: nothing checked
    keys = CredentialStore({}, api_keys=frozenset({"k1"}))
    authenticate_grpc(keys, path, {"authorization": "Bearer k1"})
    authenticate_grpc(keys, path, {"authorization": "Token k1"})
    with pytest.raises(UnauthenticatedError):
        authenticate_grpc(keys, path, {})
    with pytest.raises(AuthError, match="invalid API key"):
        authenticate_grpc(keys, path, {"authorization": "Bearer k2"})
    with pytest.raises(AuthError, match="no SigV4"):
        authenticate_grpc(keys, path, {"authorization": "AWS4-HMAC-SHA256 Credential=x"})
    sigv4 = CredentialStore({"AKID": "secret"})
    with pytest.raises(AuthError, match="accepts no API keys"):
        authenticate_grpc(sigv4, path, {"authorization": "Bearer k1"})


def test_static_router_carries_the_grpc_address() -> None:
    router = StaticRouter(
        {"a": "http://127.0.0.1:8080/", "b": "http://127.0.0.1:9090"}, grpc={"a": "127.0.0.1:8081"}
    )
    assert router.candidates("a")[0].grpc_address == "127.0.0.1:8081"
    assert router.candidates("b")[0].grpc_address == ""
