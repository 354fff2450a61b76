"""``multipart/form-data`` bodies, parsed by python-multipart (a maintained streaming parser).

Both HTTP ASR faces take multipart uploads: the ``openai`` SDK's (file part
last, scalars as text parts, arrays as repeated ``name[]`` parts) and the NIM
seed's hand-built body (unquoted WebKit boundary, a CRLF left inside every
value but the last).  The parser works on the whole body the server already
holds (its size is bounded by the container's body limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from bidistream.errors import InputValidationError

__all__ = ["FormError", "FormPart", "media_type", "parse_multipart"]

# More parts than this is not an upload form; refuse instead of collecting them.
MAX_PARTS = 256
# The text fields of these APIs are short; a longer text part is refused.
MAX_FIELD_BYTES = 64 * 1024


class FormError(InputValidationError):
    """The body is not a well-formed multipart form (the face re-raises it in its own shape)."""

    code = "InvalidMultipart"


@dataclass(frozen=True, slots=True)
class FormPart:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def text(self) -> str:
        """A text value with surrounding whitespace (the seed's stray CRLF) removed."""
        if len(self.data) > MAX_FIELD_BYTES:
            raise FormError(f"form field {self.name!r} is longer than {MAX_FIELD_BYTES} bytes")
        try:
            return self.data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise FormError(f"form field {self.name!r} is not UTF-8 text") from exc


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``("multipart/form-data", {"boundary": ...})`` from a Content-Type header value."""
    if not content_type:
        return "", {}
    value, params = parse_options_header(content_type)
    return (
        value.decode("latin-1").strip().lower(),
        {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()},
    )


def parse_multipart(body: bytes, content_type: str | None) -> list[FormPart]:
    """Every part of a multipart body, in order; FormError if it is not one."""
    kind, params = media_type(content_type)
    if kind != "multipart/form-data":
        raise FormError(f"expected multipart/form-data, got {kind or 'no Content-Type'!r}")
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise FormError("multipart/form-data without a boundary parameter")
    parts: list[FormPart] = []
    headers: dict[str, str] = {}
    field = bytearray()
    value = bytearray()
    data = bytearray()
    finished = False

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        field.extend(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        value.extend(buf[start:end])

    def on_header_end() -> None:
        headers[field.decode("latin-1").strip().lower()] = value.decode("utf-8", "replace").strip()
        field.clear()
        value.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.extend(buf[start:end])

    def on_part_end() -> None:
        if len(parts) >= MAX_PARTS:
            raise FormError(f"more than {MAX_PARTS} form parts")
        disposition, options = parse_options_header(headers.get("content-disposition", ""))
        if disposition.lower() != b"form-data" or b"name" not in options:
            raise FormError("a form part has no Content-Disposition: form-data; name=...")
        filename = options.get(b"filename")
        parts.append(
            FormPart(
                name=options[b"name"].decode("utf-8", "replace"),
                data=bytes(data),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=headers.get("content-type"),
            )
        )

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError(f"malformed multipart body: {exc}") from exc
    if not finished and not parts:
        raise FormError("multipart body has no parts (boundary not found)")
    return parts
