"""The V2 codec: parsing, validation errors in MLServer's shapes, Frame mapping, SSE framing."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.errors import InputValidationError, SchemaValidationError, v2_http_status, wire_form
from bidistream.frames import Frame
from bidistream.protocols.v2.codec import (
    InferResponse,
    Tensor,
    parse_request,
    request_from_dict,
    request_to_dict,
    response_from_dict,
    response_to_dict,
    sse_event,
)
from bidistream.protocols.v2.frames import frame_tensor, request_frames
from bidistream.protocols.v2.triton import stream_envelope

SEED_REQUEST = {
    "inputs": [
        {
            "name": "prompt",
            "shape": [1],
            "datatype": "BYTES",
            "data": ["What is the capital of France?"],
            "parameters": {"content_type": "str"},
        }
    ],
    "outputs": [{"name": "output"}],
}


def test_seed_request_parses_and_round_trips_content_type() -> None:
    req = parse_request(json.dumps(SEED_REQUEST).encode(), model_name="text-model")
    assert req.inputs[0].content_type == "str"
    assert request_to_dict(req)["inputs"][0]["parameters"] == {"content_type": "str"}
    assert request_frames(req) == [Frame.text("What is the capital of France?")]


def test_pydantic_dict_nulls_are_accepted() -> None:
    # What `InferenceRequest.dict()` sends: every optional field present as null.
    body = {
        "id": None,
        "parameters": None,
        "inputs": [
            {
                "name": "p",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "str", "headers": None},
                "data": ["x"],
            }
        ],
        "outputs": [{"name": "output", "parameters": None}],
    }
    req = request_from_dict(body)
    assert req.inputs[0].parameters == {"content_type": "str"}
    assert req.id is None


def test_malformed_json_is_400() -> None:
    with pytest.raises(InputValidationError) as info:
        parse_request(b"{nope", model_name="m")
    assert not isinstance(info.value, SchemaValidationError)
    assert v2_http_status(info.value) == 400
    assert "not valid JSON" in str(info.value)


def test_unknown_datatype_is_422_with_fastapi_body() -> None:
    body = {"inputs": [{"name": "a", "shape": [1], "datatype": "TEXT", "data": ["x"]}]}
    with pytest.raises(SchemaValidationError) as info:
        request_from_dict(body)
    assert v2_http_status(info.value) == 422
    assert wire_form(info.value).grpc_status == "FAILED_PRECONDITION"
    detail = info.value.detail
    assert detail is not None
    [item] = detail["detail"]  # type: ignore[misc]
    assert item["loc"] == ["body", "inputs", 0, "datatype"]


def test_missing_field_is_422() -> None:
    with pytest.raises(SchemaValidationError):
        request_from_dict({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES"}]})


def test_shape_mismatch_and_wrong_element_type_are_400() -> None:
    with pytest.raises(InputValidationError, match="holds 2 element"):
        request_from_dict({"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2, 3]}]})
    with pytest.raises(InputValidationError, match="not valid for datatype INT32"):
        request_from_dict({"inputs": [{"name": "a", "shape": [1], "datatype": "INT32", "data": ["x"]}]})


def test_nested_data_is_flattened_row_major() -> None:
    req = request_from_dict(
        {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}
    )
    assert req.inputs[0].data == [1, 2, 3, 4.5]


def test_base64_input_becomes_binary_frame_and_bytes_without_type_too() -> None:
    raw = bytes(range(256))
    body = {
        "inputs": [
            {
                "name": "a",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(raw).decode()],
            }
        ]
    }
    assert request_frames(request_from_dict(body)) == [Frame.binary(raw)]
    grpc_like = request_from_dict(
        {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    )
    grpc_like.inputs[0].data = [b"\xff\x00"]
    assert request_frames(grpc_like) == [Frame.binary(b"\xff\x00")]


def test_output_frames_map_to_tensors_and_binary_goes_base64_in_json() -> None:
    text = frame_tensor(Frame.text("hello"))
    assert (text.shape, text.data, text.parameters) == ([1, 1], ["hello"], {"content_type": "str"})
    binary = frame_tensor(Frame.binary(b"\xff\x01"))
    out = response_to_dict(InferResponse("m", [binary], id="1"))["outputs"][0]
    assert out["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(out["data"][0]) == b"\xff\x01"


def test_sse_event_is_exactly_data_line_and_blank_line() -> None:
    event = sse_event(InferResponse("text-model", [frame_tensor(Frame.text("hi"))], id="x"))
    assert event.startswith(b"data: {") and event.endswith(b"}\n\n")
    assert event.count(b"\n") == 2
    assert b": " not in event[6:] and b", " not in event  # compact JSON
    parsed = json.loads(event[6:-2])
    assert parsed["outputs"][0]["data"] == ["hi"]
    assert response_from_dict(parsed).outputs[0] == Tensor(
        "output", "BYTES", [1, 1], ["hi"], {"content_type": "str"}
    )


def test_triton_envelope_matches_protobuf_encoding() -> None:
    # Triton's stubs run in a child: they cannot share a descriptor pool with MLServer's.
    script = f"""
from tritonclient.grpc import service_pb2
parsed = service_pb2.ModelStreamInferResponse.FromString({stream_envelope(INNER)!r})
assert parsed.infer_response.model_name == "m" and parsed.infer_response.id == "7", parsed
err = service_pb2.ModelStreamInferResponse.FromString({stream_envelope(None, "boom " * 40)!r})
assert err.error_message == "boom " * 40 and not err.HasField("infer_response")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


# ModelInferResponse{model_name: "m", id: "7"} as protobuf writes it (fields 1 and 3).
INNER = b"\x0a\x01m\x1a\x017"


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_text_elements_round_trip_through_frames(items: list[str]) -> None:
    req = request_from_dict(
        {"inputs": [{"name": "a", "shape": [len(items)], "datatype": "BYTES", "data": items}]}
    )
    assert [f.as_text() for f in request_frames(req)] == items
