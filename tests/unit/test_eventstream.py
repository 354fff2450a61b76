"""Event-stream framing against the bytes the real client sent and accepted (shared/vectors)."""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smithy_aws_event_stream.events import EventMessage

from bidistream.errors import BidistreamError, InputValidationError, InvalidFrameError, MessageTooLargeError
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


# ------------------------------------------------------------------ damaged messages
# Random bytes almost never pass the length check, so they never reach the CRC
# or header code.  Instead: build valid messages, damage them the ways a broken
# peer or a cut connection does, and check every result is either a valid event
# or one of our errors -- and that the damage reaches every check on the way.

SIGNATURE = bytes(range(32))
DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def signed(inner: bytes) -> bytes:
    """The official client's envelope (:date, :chunk-signature) around ``inner``."""
    return EventMessage(headers={":date": DATE, ":chunk-signature": SIGNATURE}, payload=inner).encode()


def part(data: bytes = b"hello world", text: bool = True, complete: bool = True) -> bytes:
    return encode_payload_part(data, text=text, complete=complete)


def fix_prelude_crc(raw: bytearray) -> None:
    raw[8:12] = zlib.crc32(bytes(raw[:8])).to_bytes(4, "big")


def fix_crcs(raw: bytearray) -> None:
    """Recompute both CRCs, so the damage gets past them to the lengths and headers."""
    fix_prelude_crc(raw)
    if len(raw) >= 16:
        raw[-4:] = zlib.crc32(bytes(raw[:-4])).to_bytes(4, "big")


Mutation = tuple[str, int, int]


def mutate(raw: bytes, mutation: Mutation) -> bytes:
    """One kind of damage; positions wrap around the message, so every draw applies."""
    kind, a, b = mutation
    out = bytearray(raw)
    if kind == "flip":  # a bit flipped on the wire
        out[a % len(out)] ^= 1 << (b % 8)
    elif kind == "flip+crc":  # ...by a peer that computes CRCs over what it damaged
        out[a % len(out)] ^= 1 << (b % 8)
        fix_crcs(out)
    elif kind == "cut":  # the connection ends mid-message
        del out[a % len(out) :]
    elif kind == "total":  # total-length field edited; b=1: prelude CRC recomputed
        out[0:4] = (a % 2**32).to_bytes(4, "big")
        if b % 2:
            fix_prelude_crc(out)
    elif kind == "headers-length":  # header-length field edited; b=1: both CRCs recomputed
        out[4:8] = (a % 2**32).to_bytes(4, "big")
        if b % 2:
            fix_crcs(out)
        else:
            fix_prelude_crc(out)
    else:
        raise AssertionError(kind)
    return bytes(out)


def outcome(stream: bytes, max_size: int = 4096) -> str:
    """Decode ``stream`` as the gateway does; 'ok' or the kind of our error it ended in.

    Anything that is not one of our errors escapes and fails the test."""
    dec = EventStreamDecoder(max_size=max_size)
    try:
        for raw in dec.feed(stream):
            unwrap(raw)
        dec.finish()
    except BidistreamError as exc:
        text = str(exc)
        if isinstance(exc, MessageTooLargeError):
            return "too-large"
        if not isinstance(exc, InvalidFrameError):
            assert isinstance(exc, InputValidationError), exc
            return "event"  # well-formed frames, but not a request event we accept
        if "ChecksumMismatch" in text:
            return "crc"
        if "headers" in text:
            return "header"
        if "ended inside" in text:
            return "cut"
        if "length" in text or "truncated" in text:
            return "length"
        if "neither an envelope" in text:
            return "envelope"
        raise AssertionError(f"unclassified error: {text}") from exc
    return "ok"


BASES = {
    "bare": part(),
    "binary-partial": part(bytes([0, 1, 2, 0xFE, 0xFF]), text=False, complete=False),
    "signed": signed(part()),
    "signed-final": signed(b""),
    "captured": vec("sagemaker-bidi-request-event-1.hex"),
}
MUTATIONS = st.tuples(
    st.sampled_from(["flip", "flip+crc", "cut", "total", "headers-length"]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 7),
)


@given(st.sampled_from(sorted(BASES)), MUTATIONS, st.booleans())
def test_damaged_messages_never_escape_our_error_tree(base: str, mutation: Mutation, inner: bool) -> None:
    raw = BASES[base]
    if inner:
        # A valid envelope (right lengths, right CRCs) around a damaged inner message.
        damaged = signed(mutate(unwrap(raw).inner or part(), mutation))
    else:
        damaged = mutate(raw, mutation)
    outcome(damaged)  # raises if anything but our errors escapes


def test_damage_reaches_the_crc_header_and_length_checks() -> None:
    """Every single-bit flip of every byte (raw and with CRCs recomputed), every cut and
    length edits, of outer and inner messages: which of our checks caught each."""
    seen: dict[str, Counter[str]] = {"outer": Counter(), "inner": Counter()}
    for raw in BASES.values():
        inner = unwrap(raw).inner or part()
        for where, message, wrap in (("outer", raw, bytes), ("inner", inner, signed)):
            mutations: list[Mutation] = [
                (kind, i, bit) for kind in ("flip", "flip+crc") for i in range(len(message)) for bit in (0, 5)
            ]
            mutations += [("cut", i, 0) for i in range(1, len(message))]
            for value in (0, 5, 15, 16, len(message) - 1, len(message) + 1, 2**31, 2**32 - 1):
                mutations += [("total", value, 0), ("total", value, 1)]
                mutations += [("headers-length", value, 0), ("headers-length", value, 1)]
            for mutation in mutations:
                seen[where][outcome(wrap(mutate(message, mutation)))] += 1
    print({where: dict(counts) for where, counts in seen.items()})
    for where in ("outer", "inner"):
        kinds = set(seen[where])
        assert {"crc", "header", "length", "event"} <= kinds, (where, seen[where])
    assert {"cut", "too-large"} <= set(seen["outer"]), seen["outer"]
    assert "envelope" in set(seen["outer"]), seen["outer"]
