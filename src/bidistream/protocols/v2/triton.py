"""Triton's stream envelope, encoded by hand so it needs no second set of stubs.

Triton's ``ModelStreamInfer`` answers ``ModelStreamInferResponse {string
error_message = 1; ModelInferResponse infer_response = 2;}`` where MLServer
answers the bare ``ModelInferResponse``.  The two generated stub sets cannot
share one process's descriptor pool (both define package ``inference``), so
the envelope is written here from its two field tags: the inner message stays
the bytes the V2 gRPC face already serialised, never re-encoded.
"""

from __future__ import annotations

__all__ = ["FINAL_RESPONSE_PARAMETER", "stream_envelope"]

# Response parameter Triton sets on the last response of a request.
FINAL_RESPONSE_PARAMETER = "triton_final_response"
# Request parameter that asks for an empty final response.
EMPTY_FINAL_PARAMETER = "triton_enable_empty_final_response"

_ERROR_TAG = b"\x0a"  # field 1, wire type 2 (length-delimited)
_RESPONSE_TAG = b"\x12"  # field 2, wire type 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def stream_envelope(infer_response: bytes | None = None, error_message: str = "") -> bytes:
    """Serialised ``ModelStreamInferResponse`` around an already serialised ``ModelInferResponse``."""
    out = bytearray()
    if error_message:
        text = error_message.encode("utf-8")
        out += _ERROR_TAG + _varint(len(text)) + text
    if infer_response is not None:
        out += _RESPONSE_TAG + _varint(len(infer_response)) + infer_response
    return bytes(out)
