"""bidistream.client.translate_error: the official client's exceptions as our most specific class.

Unit test of one layer: the official client's own exception classes are built by hand
(as its deserializer would from our gateway's answers) and translated.
"""

from __future__ import annotations

import pytest
from aws_sdk_sagemaker_runtime_http2 import models as m
from smithy_core.exceptions import CallError

from bidistream import errors as e
from bidistream.client import translate_error


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (m.InputValidationError(message="x", error_code="NotFound"), e.NotFoundError),
        (m.InputValidationError(message="x", error_code="InputValidationError"), e.InputValidationError),
        (m.InputValidationError(message="x", error_code="MessageTooLarge"), e.MessageTooLargeError),
        (m.InputValidationError(message="x"), e.InputValidationError),
        (m.InputValidationError(message="x", error_code="SomethingNew"), e.InputValidationError),
        # A code the table says another way is not believed: the modeled class wins.
        (m.InputValidationError(message="x", error_code="InstanceFull"), e.InputValidationError),
        (m.ServiceUnavailableError(message="x", error_code="InstanceFull"), e.InstanceFullError),
        (m.ServiceUnavailableError(message="x", error_code="ServiceUnavailable"), e.ServiceUnavailableError),
        (m.ModelError(message="x", error_code="ModelInvocationTimeExceeded"), e.ModelTimeoutError),
        (m.ModelError(message="x", original_status_code=500), e.ModelError),
        (m.ModelStreamError(message="x", error_code="IdleTimeout"), e.IdleTimeoutError),
        (m.ModelStreamError(message="x", error_code="1011"), e.ModelStreamError),
        (m.InternalStreamFailure(message="x"), e.InternalError),
        (m.InternalServerError(message="x"), e.InternalError),
        (
            CallError(message="Unknown error for operation X - status: 403 - id: AccessDeniedException"),
            e.AuthError,
        ),
        (CallError(message="Unknown error for operation X - status: 401"), e.UnauthenticatedError),
    ],
)
def test_the_most_specific_class(raised: BaseException, expected: type[e.BidistreamError]) -> None:
    got = translate_error(raised)
    assert type(got) is expected
    assert (got is not None and got.message == "x") or "status" in got.message


def test_a_relayed_close_code_is_kept_as_its_own_attribute() -> None:
    got = translate_error(m.ModelStreamError(message="gone", error_code="1006"))
    assert isinstance(got, e.ModelStreamError) and got.close_code == 1006 and got.code == "1006"


def test_model_error_keeps_what_the_container_said() -> None:
    got = translate_error(m.ModelError(message="x", original_status_code=418, original_message="teapot"))
    assert isinstance(got, e.ModelError) and (got.original_status, got.original_message) == (418, "teapot")


@pytest.mark.parametrize(
    "raised",
    [
        AttributeError("a bug"),
        ValueError("not ours"),
        CallError(message="Unknown error for operation X - status: 400 - id: ValidationError"),
    ],
)
def test_what_it_does_not_know_is_not_renamed(raised: BaseException) -> None:
    assert translate_error(raised) is None
