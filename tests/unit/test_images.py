"""Every Image spelling the control plane accepts, and the ones it refuses."""

from __future__ import annotations

import sys

import pytest

from bidistream.errors import InputValidationError
from bidistream.platform.images import parse_image


@pytest.mark.parametrize(
    ("image", "kind", "target"),
    [
        ("bidistream/echo", "builtin", "echo"),
        ("bidistream/words:latest", "builtin", "words"),
        ("python:my_pkg.my_module:MyModel", "python", "my_pkg.my_module:MyModel"),
        ("cmd:python app.py --flag", "command", "python"),
        (
            "123456789012.dkr.ecr.us-west-2.amazonaws.com/sagemaker-bidirectional-streaming:latest",
            "oci",
            None,
        ),
        ("localhost:5000/team/echo@sha256:" + "a" * 64, "oci", None),
        ("ubuntu", "oci", "ubuntu"),
    ],
)
def test_accepted_forms(image: str, kind: str, target: str | None) -> None:
    spec = parse_image(image)
    assert spec.kind == kind
    assert spec.target == (target if target is not None else image)


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        ("bidistream/nope", "not a built-in model"),
        ("bidistream/echo:bad tag", "tag must match"),
        ("python:not a spec", "python:package.module:Class"),
        ("python:pkg.mod", "python:package.module:Class"),
        ("cmd:", "needs a command"),
        ("cmd:'unterminated", "cannot split"),
        ("Not An Image!", "is not a valid image"),
        ("repo/UPPER:tag", "is not a valid image"),
        (" bidistream/echo", "surrounding spaces"),
        ("", "non-empty"),
    ],
)
def test_refused_forms_name_the_field_and_rule(image: str, needle: str) -> None:
    with pytest.raises(InputValidationError) as info:
        parse_image(image, "primaryContainer.image")
    assert needle in info.value.message
    assert "primaryContainer.image" in info.value.message


def test_argv_for_each_runnable_kind() -> None:
    builtin = parse_image("bidistream/echo").argv(host="127.0.0.1", port=9001, env={})
    assert builtin[:2] == [sys.executable, "-m"] and builtin[3:] == [
        "serve",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
    ]
    cmd = parse_image("cmd:python3 -m app --port ${SAGEMAKER_BIND_TO_PORT} --x $UNSET").argv(
        host="127.0.0.1", port=9001, env={"SAGEMAKER_BIND_TO_PORT": "9001"}
    )
    assert cmd == [sys.executable, "-m", "app", "--port", "9001", "--x", "$UNSET"]
    with pytest.raises(InputValidationError):
        parse_image("ubuntu:22.04").argv(host="h", port=1, env={})
