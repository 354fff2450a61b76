"""MLServer ``InferenceResponse`` objects as ``ModelInferResponse`` bytes, for the gRPC stream.

MLServer's converter (``ModelInferResponseConverter.from_types``) builds a
protobuf message per response through pydantic dumps and nested message
constructors; for a token stream that was ~60 µs of each response.  A
streamed response of BYTES outputs differs from the one before it only in
its elements, so :class:`ResponseEncoder` serialises everything else (model
name, version, id, parameters, each tensor's name, datatype, shape and
parameters) once with the stubs, mirroring the converter field for field,
and writes each response as those bytes plus its elements' length-delimited
fields.  Any other response (a non-BYTES output, an element that is not
bytes) goes through MLServer's converter unchanged.  Tests hold both paths
to the converter's bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from bidistream.container.v2_grpc import (
    TAG_BYTES_CONTENTS,
    TAG_CONTENTS,
    TAG_OUTPUTS,
    TAG_RAW_OUTPUT,
    varint,
)

__all__ = ["ResponseEncoder"]

# Distinct response shapes one stream remembers (a stream's responses share one or two).
SHAPES_PER_STREAM = 8
_EMPTY_CONTENTS = TAG_CONTENTS + b"\x00"
_LENGTH = struct.Struct("<I")
_PARAMETER_TYPES = (bool, str, int)  # what InferParameter holds (None is none of them)


def _param_items(params: Any) -> tuple[tuple[str, Any], ...]:
    """The entries ``ParametersConverter.from_types`` keeps: set, not None, and bool, str or int.

    MLServer's ``model_dump`` drops unset and None fields; dicts (``headers``),
    floats and lists have no ``InferParameter`` form and are skipped, as there.
    """
    if params is None:
        return ()
    values = params.__dict__
    extra = params.__pydantic_extra__
    if extra:
        values = {**values, **extra}
    return tuple([(key, value) for key, value in values.items() if isinstance(value, _PARAMETER_TYPES)])


def _set_params(target: Any, items: tuple[tuple[str, Any], ...]) -> None:
    for key, value in items:
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            slot.int64_param = value


class ResponseEncoder:
    """One stream's responses as bytes; the converter for what the fast form does not cover."""

    __slots__ = ("_pb", "_raw", "_shapes")

    def __init__(self, pb: Any, *, use_raw: bool) -> None:
        self._pb = pb
        self._raw = use_raw
        self._shapes: dict[tuple[Any, ...], tuple[bytes, tuple[bytes, ...]]] = {}

    def encode(self, result: Any) -> Any:
        """``result`` as bytes, or as the converter's message when it is not BYTES elements."""
        outputs = result.outputs
        elements: list[list[bytes]] = []
        signature: list[Any] = [
            result.model_name,
            result.model_version,
            result.id,
            _param_items(result.parameters),
        ]
        for output in outputs:
            if output.datatype != "BYTES":
                return self._convert(result)
            items = output.data.root
            if type(items) is not list:
                return self._convert(result)
            for item in items:
                if type(item) is not bytes:
                    return self._convert(result)
            elements.append(items)
            signature.append((output.name, tuple(output.shape), _param_items(output.parameters)))
        key = tuple(signature)
        fixed = self._shapes.get(key)
        if fixed is None:
            fixed = self._fixed(result)
            if len(self._shapes) < SHAPES_PER_STREAM:
                self._shapes[key] = fixed
        head, tensors = fixed
        parts = [head]
        if self._raw:
            for tensor in tensors:
                parts += (TAG_OUTPUTS, varint(len(tensor)), tensor)
            for items in elements:
                raw = b"".join(_LENGTH.pack(len(item)) + item for item in items)
                parts += (TAG_RAW_OUTPUT, varint(len(raw)), raw)
            return b"".join(parts)
        for tensor, items in zip(tensors, elements, strict=True):
            contents = b"".join(TAG_BYTES_CONTENTS + varint(len(item)) + item for item in items)
            size = len(tensor) + 1 + len(varint(len(contents))) + len(contents)
            parts += (TAG_OUTPUTS, varint(size), tensor, TAG_CONTENTS, varint(len(contents)), contents)
        return b"".join(parts)

    def _fixed(self, result: Any) -> tuple[bytes, tuple[bytes, ...]]:
        """The response without outputs, and each output without contents, as the converter sets them."""
        pb = self._pb
        head = pb.ModelInferResponse(model_name=result.model_name)
        if result.model_version is not None:
            head.model_version = result.model_version
        if result.id is not None:
            head.id = result.id
        _set_params(head.parameters, _param_items(result.parameters))
        tensors = []
        for output in result.outputs:
            tensor = pb.ModelInferResponse.InferOutputTensor(
                name=output.name, shape=output.shape, datatype=str(output.datatype)
            )
            _set_params(tensor.parameters, _param_items(output.parameters))
            fixed = tensor.SerializeToString()
            # With raw outputs the converter still sets an empty contents message.
            tensors.append(fixed + _EMPTY_CONTENTS if self._raw else fixed)
        return head.SerializeToString(), tuple(tensors)

    def _convert(self, result: Any) -> Any:
        from mlserver.grpc.converters import ModelInferResponseConverter

        return ModelInferResponseConverter.from_types(result, use_raw=self._raw)
