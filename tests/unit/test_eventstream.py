"""Event-stream framing against the bytes the real client sent and accepted (shared/vectors)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bidistream.errors import InputValidationError, InvalidFrameError, MessageTooLargeError
from bidistream.eventstream import (
    EventStreamDecoder,
    decode_message,
    encode_internal_stream_failure,
    encode_model_stream_error,
    encode_payload_part,
    unwrap,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def vec(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def spec() -> dict[str, object]:
    return json.loads((VECTORS / "sagemaker-bidi-vectors.json").read_text())  # type: ignore[no-any-return]


def test_request_event_1_unwraps_to_utf8_complete_part() -> None:
    ev = unwrap(vec("sagemaker-bidi-request-event-1.hex"))
    assert ev.part is not None
    assert ev.part.data == b'{"prompt":"Hello"}'
    assert ev.part.data_type == "UTF8" and ev.part.is_text
    assert ev.part.completion_state == "COMPLETE" and ev.part.complete
    assert ev.date_ms == 1795433854130
    assert ev.signature is not None
    assert ev.signature.hex() == "3b452dc23bb8b47349b7432a83c335f6d6cb1d67b129bf152de02727cb9d4c6e"
    assert len(ev.inner) == 166


def test_request_event_2_is_binary_partial() -> None:
    ev = unwrap(vec("sagemaker-bidi-request-event-2.hex"))
    assert ev.part is not None
    assert ev.part.data == bytes([0, 1, 2, 3, 0xFE, 0xFF])
    assert not ev.part.is_text and not ev.part.complete


def test_final_empty_envelope_has_no_part() -> None:
    ev = unwrap(vec("sagemaker-bidi-request-final.hex"))
    assert ev.part is None and ev.inner == b""
    assert ev.signature is not None and len(ev.signature) == 32


def test_decoder_reassembles_events_split_anywhere() -> None:
    stream = b"".join(
        vec(n)
        for n in (
            "sagemaker-bidi-request-event-1.hex",
            "sagemaker-bidi-request-event-2.hex",
            "sagemaker-bidi-request-final.hex",
        )
    )
    for cut in (1, 3, 11, 12, 13, 100, 249, 250, 400):
        dec = EventStreamDecoder()
        out = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert [len(m) for m in out] == [249, 238, 83]
        dec.finish()


def test_response_payload_part_matches_captured_bytes() -> None:
    assert encode_payload_part(b'{"generated_text":"Hi"}', text=True, complete=True) == vec(
        "sagemaker-bidi-response-payloadpart.hex"
    )


def test_exception_events_match_captured_bytes() -> None:
    assert encode_model_stream_error("model container crashed", "ModelCrashed") == vec(
        "sagemaker-bidi-response-modelstreamerror.hex"
    )
    assert encode_internal_stream_failure("internal stream failure") == vec(
        "sagemaker-bidi-response-internalstreamfailure.hex"
    )


def test_response_stream_parts_match_captured_bytes() -> None:
    body = encode_payload_part(b'{"token":"Hel') + encode_payload_part(b'lo"}\n')
    assert body == vec("sagemaker-response-stream-two-parts.hex")


def test_bad_crc_is_invalid_frame() -> None:
    raw = bytearray(vec("sagemaker-bidi-request-event-1.hex"))
    raw[-1] ^= 0xFF
    with pytest.raises(InvalidFrameError, match="ChecksumMismatch"):
        unwrap(bytes(raw))


def test_bad_prelude_crc_is_invalid_frame() -> None:
    raw = bytearray(vec("sagemaker-bidi-request-event-1.hex"))
    raw[9] ^= 0xFF
    with pytest.raises(InvalidFrameError):
        unwrap(bytes(raw))


def test_truncated_prelude_is_reported_at_end_of_stream() -> None:
    dec = EventStreamDecoder()
    assert dec.feed(vec("sagemaker-bidi-request-event-1.hex")[:7]) == []
    with pytest.raises(InvalidFrameError, match="inside a prelude"):
        dec.finish()


def test_oversized_length_refused_before_buffering() -> None:
    dec = EventStreamDecoder(max_size=1024)
    with pytest.raises(MessageTooLargeError, match="exceeds the limit of 1024"):
        dec.feed((5000).to_bytes(4, "big") + b"\0" * 8)


def test_tiny_length_is_invalid() -> None:
    with pytest.raises(InvalidFrameError, match="below the 16-byte minimum"):
        EventStreamDecoder().feed(b"\0\0\0\x05" + b"\0" * 20)


def test_unknown_data_type_is_refused() -> None:
    from smithy_aws_event_stream.events import EventMessage

    inner = EventMessage(
        headers={":message-type": "event", ":event-type": "PayloadPart", "DataType": "JSON"}, payload=b"x"
    ).encode()
    with pytest.raises(InputValidationError, match="DataType must be UTF8 or BINARY"):
        unwrap(inner)


def test_decode_rejects_length_mismatch() -> None:
    raw = vec("sagemaker-bidi-request-final.hex")
    with pytest.raises(InvalidFrameError):
        decode_message(raw + b"xx")


@given(st.binary(max_size=300), st.booleans(), st.booleans(), st.lists(st.integers(1, 50), max_size=10))
def test_roundtrip_any_payload_any_split(data: bytes, text: bool, complete: bool, cuts: list[int]) -> None:
    msg = encode_payload_part(data, text=text, complete=complete)
    stream = msg * 2
    dec = EventStreamDecoder()
    out: list[bytes] = []
    pos = 0
    for c in cuts:
        out += dec.feed(stream[pos : pos + c])
        pos += c
    out += dec.feed(stream[pos:])
    dec.finish()
    assert out == [msg, msg]
    part = unwrap(msg).part
    assert part is not None and part.data == data and part.is_text == text and part.complete == complete
    assert zlib.crc32(msg[:-4]) == int.from_bytes(msg[-4:], "big")


@given(st.binary(min_size=1, max_size=200))
def test_garbage_never_escapes_our_error_tree(data: bytes) -> None:
    dec = EventStreamDecoder(max_size=4096)
    try:
        for raw in dec.feed(data):
            unwrap(raw)
        dec.finish()
    except (InvalidFrameError, MessageTooLargeError, InputValidationError):
        pass
