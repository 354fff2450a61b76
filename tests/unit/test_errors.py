from __future__ import annotations

import pytest

from bidistream import errors
from bidistream.errors import (
    BidistreamError,
    IdleTimeoutError,
    InstanceFullError,
    MessageTooLargeError,
    ModelStreamError,
    ShuttingDownError,
    error_from_close,
    wire_form,
)


def all_error_classes() -> list[type[BidistreamError]]:
    found = []
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BidistreamError):
            found.append(obj)
    return found


@pytest.mark.parametrize("cls", all_error_classes())
def test_every_error_has_a_wire_form_on_every_wire(cls: type[BidistreamError]) -> None:
    form = wire_form(cls)
    assert 400 <= form.http_status < 600
    assert form.amzn_error_type
    assert 1000 < form.ws_close < 5000
    assert form.grpc_status.isupper()
    assert form.stream_event in {"ModelStreamError", "InternalStreamFailure"}


def test_specific_rows() -> None:
    assert wire_form(InstanceFullError("x")).ws_close == 1013
    assert wire_form(InstanceFullError).http_status == 503
    assert wire_form(MessageTooLargeError).ws_close == 1009
    assert wire_form(ShuttingDownError).ws_close == 1001
    assert wire_form(IdleTimeoutError).ws_close == 1011
    assert wire_form(errors.ModelRefusedError).http_status == 424
    assert wire_form(errors.InternalError).stream_event == "InternalStreamFailure"


def test_subclass_without_row_speaks_like_parent() -> None:
    class Custom(InstanceFullError):
        pass

    assert wire_form(Custom) == wire_form(InstanceFullError)


def test_close_codes_map_back_to_errors() -> None:
    assert error_from_close(1000, "") is None
    err = error_from_close(1011, "model exploded")
    assert isinstance(err, ModelStreamError) and err.code == "1011" and err.message == "model exploded"
    assert isinstance(error_from_close(1013, ""), InstanceFullError)
    abnormal = error_from_close(None, "")
    assert isinstance(abnormal, ModelStreamError) and abnormal.code == "1006"
    unknown = error_from_close(4000, "custom")
    assert isinstance(unknown, ModelStreamError) and unknown.code == "4000"


def test_detail_and_str() -> None:
    err = errors.InputValidationError("bad", detail={"k": "v"})
    assert str(err) == "bad" and err.detail == {"k": "v"} and err.code == "InputValidationError"
