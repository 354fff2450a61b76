"""V2 tensors ↔ Frames: how a bidistream Model wears the Open Inference Protocol.

Each ``BYTES`` element of a request is one input frame: text when it is a JSON
string or declared ``content_type: str``, binary when it is raw gRPC bytes or
declared ``base64`` (decoded first).  A non-``BYTES`` tensor has no frame form
of its own, so it reaches the model as one text frame holding the tensor's
compact JSON (name, datatype, shape, data).  Each output frame becomes one
``BYTES`` element: text frames say ``content_type: str`` (MLServer's
``StringCodec`` decodes them), binary frames carry raw bytes on gRPC and
base64 on JSON with ``content_type: base64``.
"""

from __future__ import annotations

import json

from bidistream.errors import InputValidationError
from bidistream.frames import Frame, InvalidTextFrame
from bidistream.protocols.v2.codec import InferRequest, Tensor, decode_base64

__all__ = ["DEFAULT_OUTPUT", "frame_tensor", "request_frames"]

# MLServer's examples and the seed notebook name the one output "output".
DEFAULT_OUTPUT = "output"


def request_frames(request: InferRequest) -> list[Frame]:
    frames: list[Frame] = []
    for tensor in request.inputs:
        ctype = tensor.content_type or request.content_type
        if tensor.datatype != "BYTES":
            as_json = {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": tensor.shape,
                "data": tensor.data,
            }
            frames.append(Frame.text(json.dumps(as_json, separators=(",", ":"))))
            continue
        for item in tensor.data:
            if ctype == "base64":
                frames.append(Frame.binary(decode_base64(item, tensor.name)))
            elif isinstance(item, str):
                frames.append(Frame.text(item))
            elif ctype == "str":
                try:
                    frames.append(Frame.text_from_bytes(item))
                except InvalidTextFrame as exc:
                    raise InputValidationError(f"input {tensor.name!r}: {exc}") from exc
            else:
                frames.append(Frame.binary(item))
    return frames


def output_name(request: InferRequest) -> str:
    return request.outputs[0].name if request.outputs else DEFAULT_OUTPUT


def frame_tensor(frame: Frame, name: str = DEFAULT_OUTPUT) -> Tensor:
    """One output frame as a ``[1, 1]`` BYTES tensor (the shape MLServer's StringCodec gives one item)."""
    if frame.is_text:
        return Tensor(name, "BYTES", [1, 1], [frame.as_text()], {"content_type": "str"})
    return Tensor(name, "BYTES", [1, 1], [frame.data])


def frames_tensor(frames: list[Frame], name: str = DEFAULT_OUTPUT) -> Tensor:
    """Several output frames of one unary answer as an ``[N, 1]`` tensor."""
    if frames and all(f.is_text for f in frames):
        return Tensor(name, "BYTES", [len(frames), 1], [f.as_text() for f in frames], {"content_type": "str"})
    return Tensor(name, "BYTES", [len(frames), 1], [f.data for f in frames])
