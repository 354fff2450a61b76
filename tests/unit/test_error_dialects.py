"""The error table's dialect columns: the only place a wire status is chosen."""

from __future__ import annotations

import json

import pytest

from bidistream import errors as e
from bidistream.gateway.http import Api, error_response


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (e.ModelError("boom"), 500),  # a failing model is a 500 from the container
        (e.ModelTimeoutError("slow"), 504),
        (e.ModelLoadError("bad weights"), 503),  # the instance cannot serve: the gateway tries another
        (e.ServiceUnavailableError("loading"), 503),
        (e.ShuttingDownError("draining"), 503),
        (e.MessageTooLargeError("big"), 413),
        (e.NotFoundError("no route"), 404),
        (e.MethodNotAllowedError("GET only"), 405),
        (e.InputValidationError("bad"), 400),
        (e.UnauthenticatedError("no key"), 401),
    ],
)
def test_container_statuses(error: e.BidistreamError, status: int) -> None:
    assert e.wire_form(error).container_status == status


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (e.NotFoundError("x"), 400, "ValidationException"),  # boto3's waiters expect this
        (e.InputValidationError("x"), 400, "ValidationException"),
        (e.ResourceLimitExceeded("x"), 400, "ResourceLimitExceeded"),
        (e.UnknownOperationError("x"), 400, "UnknownOperationException"),
        (e.SerializationError("x"), 400, "SerializationException"),
        (e.AuthError("x"), 400, "UnrecognizedClientException"),
        (e.InternalError("x"), 500, "InternalFailure"),
        (e.ServiceUnavailableError("x"), 500, "InternalFailure"),
    ],
)
def test_control_plane_columns(error: e.BidistreamError, status: int, type_: str) -> None:
    form = e.wire_form(error)
    assert (form.control_status, form.control_type) == (status, type_)
    resp = error_response(error, Api.CONTROL, "rid")
    assert resp.status == status and ("x-amzn-errortype", type_) in resp.headers
    assert isinstance(resp.body, bytes) and json.loads(resp.body) == {"__type": type_, "message": "x"}


def test_a_relayed_close_code_is_an_attribute_not_a_parsed_code() -> None:
    relayed = e.error_from_close(4001, "model said no")
    assert relayed is not None and relayed.close_code == 4001
    assert e.ws_close_code(relayed) == 4001
    # 1006 may never be sent (RFC 6455 §7.4.1): the table's code for the class is used.
    died = e.error_from_close(None, "")
    assert died is not None and died.close_code == 1006 and e.ws_close_code(died) == 1011
    # An error whose code merely looks like digits carries no close code.
    assert e.ws_close_code(e.ModelStreamError("x", code="4001")) == 1011


def test_every_code_names_its_class() -> None:
    for cls in (
        e.NotFoundError,
        e.InstanceFullError,
        e.ModelTimeoutError,
        e.IdleTimeoutError,
        e.InternalError,
    ):
        assert e.error_for_code(cls.code) is cls
    assert e.error_for_code("nope") is None and e.error_for_code(None) is None
