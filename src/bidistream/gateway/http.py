"""Transport-neutral HTTP pieces shared by the HTTP/2 and HTTP/1.1 front doors.

An :class:`HttpResponse` is what a handler returns; both front doors know how
to write it (a streamed body is written with flow control on either wire).
Error responses are built here from :func:`bidistream.errors.wire_form`, in the
dialect of the API being answered: the bidi client and boto3's runtime client
know different names for the same errors (wire spec, surprise 7), and the bidi
client reads only the capitalised ``Message`` key (surprise 8).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum

from bidistream.errors import BidistreamError, ModelError, wire_form

__all__ = ["Api", "HttpResponse", "error_response", "new_request_id"]


class Api(Enum):
    BIDI = "bidi"  # aws-sdk-sagemaker-runtime-http2
    RUNTIME = "runtime"  # boto3 sagemaker-runtime
    CONTROL = "control"  # boto3 sagemaker (JSON 1.1): the gateway's own refusals before the control API


# The table's names are the bidi client's; boto3's runtime client spells some differently.
_RUNTIME_NAMES = {
    "InputValidationError": "ValidationError",
    "InternalServerError": "InternalFailure",
    "ServiceUnavailableError": "ServiceUnavailable",
}


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""


def error_name(error: BidistreamError, api: Api) -> str:
    name = wire_form(error).amzn_error_type
    if api is Api.RUNTIME:
        return _RUNTIME_NAMES.get(name, name)
    return name


def error_body(error: BidistreamError, api: Api) -> dict[str, object]:
    name = error_name(error, api)
    body: dict[str, object] = {"Message": error.message, "ErrorCode": error.code}
    if api is not Api.BIDI:
        body["message"] = error.message
        body["__type"] = name
    if isinstance(error, ModelError) and name == "ModelError":
        if error.original_status is not None:
            body["OriginalStatusCode"] = error.original_status
        if error.original_message is not None:
            body["OriginalMessage"] = error.original_message
    return body


def error_response(error: BidistreamError, api: Api, request_id: str | None = None) -> HttpResponse:
    form = wire_form(error)
    if api is Api.CONTROL:
        data = json.dumps({"__type": form.control_type, "message": error.message}).encode()
        return HttpResponse(
            form.control_status,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", form.control_type),
                ("x-amzn-requestid", request_id or new_request_id()),
                ("content-length", str(len(data))),
            ],
            data,
        )
    payload = json.dumps(error_body(error, api)).encode()
    return HttpResponse(
        form.http_status,
        [
            ("content-type", "application/json"),
            ("x-amzn-errortype", error_name(error, api)),
            ("x-amzn-requestid", request_id or new_request_id()),
            ("content-length", str(len(payload))),
        ],
        payload,
    )
