"""V2 / Open Inference Protocol shapes, sans-I/O: JSON bodies in, plain values out, and back.

The REST face and the gRPC face both turn their wire into these dataclasses,
so validation (datatypes, shapes, element types) and the MLServer-compatible
error bodies live in one place.  Element values are kept flat (row-major) as
the wire's ``data`` list is; ``BYTES`` elements are ``str`` when they came
from JSON and ``bytes`` when they came from gRPC (MLServer's ``StringCodec``
takes both), and ``content_type`` parameters pass through untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from bidistream.errors import InputValidationError, SchemaValidationError

__all__ = [
    "DATATYPES",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "Tensor",
    "parse_request",
    "request_from_dict",
    "request_to_dict",
    "response_from_dict",
    "response_to_dict",
    "response_to_json",
    "sse_event",
]

# Each V2 datatype and the Python element type its JSON ``data`` holds.  FP16
# travels as JSON numbers and as fp32 contents on gRPC (Triton and MLServer agree).
DATATYPES: dict[str, type] = {
    "BOOL": bool,
    "UINT8": int,
    "UINT16": int,
    "UINT32": int,
    "UINT64": int,
    "INT8": int,
    "INT16": int,
    "INT32": int,
    "INT64": int,
    "FP16": float,
    "FP32": float,
    "FP64": float,
    "BYTES": str,
}

# Parameters are a JSON object of scalars (the gRPC InferParameter oneof:
# bool, int64, string); ``headers`` is MLServer's nested exception.
Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    """One input or output tensor; ``data`` is flat, ``shape`` says how to fold it."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: Parameters = field(default_factory=dict)

    @property
    def content_type(self) -> str | None:
        value = self.parameters.get("content_type")
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    model_name: str = ""
    model_version: str | None = None

    @property
    def content_type(self) -> str | None:
        value = self.parameters.get("content_type")
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    id: str | None = None
    model_version: str | None = None
    parameters: Parameters = field(default_factory=dict)


# ------------------------------------------------------------------ validation
def _schema_error(loc: list[str | int], msg: str, value: object, kind: str = "value_error") -> NoReturn:
    """Raise the 422 FastAPI/pydantic body MLServer's REST face answers for schema errors."""
    raise SchemaValidationError(
        f"{'.'.join(str(p) for p in loc)}: {msg}",
        detail={"detail": [{"type": kind, "loc": ["body", *loc], "msg": msg, "input": _jsonable(value)}]},
    )


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _flatten(data: object) -> Iterator[object]:
    if isinstance(data, list | tuple):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _parameters(obj: object, loc: list[str | int]) -> Parameters:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        _schema_error(loc, "Input should be a valid dictionary", obj, "dict_type")
    # pydantic's .dict() sends "headers": null and "content_type": null; drop nulls.
    return {str(k): v for k, v in obj.items() if v is not None}


def _check_elements(tensor: Tensor, loc: list[str | int]) -> None:
    expected = DATATYPES[tensor.datatype]
    for index, item in enumerate(tensor.data):
        ok: bool
        if expected is bool:
            ok = isinstance(item, bool)
        elif expected is int:
            ok = isinstance(item, int) and not isinstance(item, bool)
        elif expected is float:
            ok = isinstance(item, int | float) and not isinstance(item, bool)
        else:
            ok = isinstance(item, str | bytes)
        if not ok:
            raise InputValidationError(
                f"input {tensor.name!r}: element {index} is {type(item).__name__}, "
                f"not valid for datatype {tensor.datatype}"
            )


def check_shape(tensor: Tensor) -> None:
    """The element count must equal the shape's product (V2's one structural rule)."""
    if any(dim < 0 for dim in tensor.shape):
        raise InputValidationError(f"tensor {tensor.name!r}: negative dimension in shape {tensor.shape}")
    count = math.prod(tensor.shape)
    if count != len(tensor.data):
        raise InputValidationError(
            f"tensor {tensor.name!r}: shape {tensor.shape} holds {count} element(s) "
            f"but data has {len(tensor.data)}"
        )


def tensor_from_dict(obj: object, loc: list[str | int], *, validate: bool = True) -> Tensor:
    if not isinstance(obj, dict):
        _schema_error(loc, "Input should be a valid dictionary", obj, "dict_type")
    assert isinstance(obj, dict)
    for key in ("name", "shape", "datatype", "data"):
        if key not in obj:
            _schema_error([*loc, key], "Field required", obj, "missing")
    name, shape, datatype = obj["name"], obj["shape"], obj["datatype"]
    if not isinstance(name, str):
        _schema_error([*loc, "name"], "Input should be a valid string", name, "string_type")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        _schema_error([*loc, "shape"], "Input should be a valid list of integers", shape, "list_type")
    if datatype not in DATATYPES:
        allowed = ", ".join(f"'{d}'" for d in DATATYPES)
        _schema_error([*loc, "datatype"], f"Input should be {allowed}", datatype, "enum")
    tensor = Tensor(
        name=name,
        datatype=datatype,
        shape=list(shape),
        data=list(_flatten(obj["data"])),
        parameters=_parameters(obj.get("parameters"), [*loc, "parameters"]),
    )
    if validate:
        _check_elements(tensor, loc)
        check_shape(tensor)
    return tensor


def request_from_dict(obj: object, *, model_name: str = "", model_version: str | None = None) -> InferRequest:
    """Validate a decoded JSON request the way MLServer's REST face does (422 for schema, 400 for data)."""
    if not isinstance(obj, dict):
        _schema_error([], "Input should be a valid dictionary or object", obj, "model_attributes_type")
    assert isinstance(obj, dict)
    inputs = obj.get("inputs")
    if inputs is None:
        _schema_error(["inputs"], "Field required", obj, "missing")
    if not isinstance(inputs, list):
        _schema_error(["inputs"], "Input should be a valid list", inputs, "list_type")
    assert isinstance(inputs, list)
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        _schema_error(["id"], "Input should be a valid string", request_id, "string_type")
    outputs: list[RequestedOutput] = []
    for index, out in enumerate(obj.get("outputs") or []):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            _schema_error(["outputs", index, "name"], "Field required", out, "missing")
        outputs.append(RequestedOutput(out["name"], _parameters(out.get("parameters"), ["outputs", index])))
    return InferRequest(
        inputs=[tensor_from_dict(t, ["inputs", i]) for i, t in enumerate(inputs)],
        id=request_id,
        parameters=_parameters(obj.get("parameters"), ["parameters"]),
        outputs=outputs,
        model_name=model_name,
        model_version=model_version,
    )


def parse_request(body: bytes, *, model_name: str, model_version: str | None = None) -> InferRequest:
    """A REST request body; malformed JSON is a 400 naming where it broke."""
    try:
        obj = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InputValidationError(f"request body is not UTF-8 JSON (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise InputValidationError(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return request_from_dict(obj, model_name=model_name, model_version=model_version)


# ------------------------------------------------------------------ encoding
def _json_data(tensor: Tensor) -> tuple[list[Any], Parameters]:
    """JSON cannot carry raw bytes: binary elements go as base64 and say so."""
    if tensor.datatype != "BYTES" or not any(isinstance(x, bytes) for x in tensor.data):
        return tensor.data, tensor.parameters
    ctype = tensor.content_type
    if ctype == "str" or (ctype is None and _all_utf8(tensor.data)):
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in tensor.data], tensor.parameters
    data = [base64.b64encode(x).decode("ascii") if isinstance(x, bytes) else x for x in tensor.data]
    return data, {**tensor.parameters, "content_type": "base64"}


def _all_utf8(items: list[Any]) -> bool:
    for item in items:
        if isinstance(item, bytes):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError:
                return False
    return True


def tensor_to_dict(tensor: Tensor) -> dict[str, Any]:
    data, params = _json_data(tensor)
    out: dict[str, Any] = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
    if params:
        out["parameters"] = params
    out["data"] = data
    return out


def response_to_dict(response: InferResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        out["model_version"] = response.model_version
    if response.id is not None:
        out["id"] = response.id
    out["parameters"] = response.parameters
    out["outputs"] = [tensor_to_dict(t) for t in response.outputs]
    return out


def request_to_dict(request: InferRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.id is not None:
        out["id"] = request.id
    if request.parameters:
        out["parameters"] = request.parameters
    out["inputs"] = [
        {
            "name": t.name,
            "shape": t.shape,
            "datatype": t.datatype,
            **({"parameters": t.parameters} if t.parameters else {}),
            "data": t.data,
        }
        for t in request.inputs
    ]
    if request.outputs:
        out["outputs"] = [
            {"name": o.name, **({"parameters": o.parameters} if o.parameters else {})}
            for o in request.outputs
        ]
    return out


def response_from_dict(obj: Mapping[str, Any]) -> InferResponse:
    """A response produced by trusted code (an MLServer model's ``model_dump``); no schema errors."""
    return InferResponse(
        model_name=obj.get("model_name") or "",
        model_version=obj.get("model_version"),
        id=obj.get("id"),
        parameters=_parameters(obj.get("parameters"), ["parameters"]),
        outputs=[tensor_from_dict(t, ["outputs", i], validate=False) for i, t in enumerate(obj["outputs"])],
    )


_COMPACT = (",", ":")


def response_to_json(response: InferResponse) -> bytes:
    return json.dumps(response_to_dict(response), separators=_COMPACT, ensure_ascii=False).encode("utf-8")


def sse_event(response: InferResponse) -> bytes:
    """One SSE event exactly as MLServer frames it: ``data: <compact JSON>\\n\\n``, nothing else."""
    return b"data: " + response_to_json(response) + b"\n\n"


def decode_base64(item: str | bytes, name: str) -> bytes:
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputValidationError(f"input {name!r}: content_type base64 but element is not base64") from exc
