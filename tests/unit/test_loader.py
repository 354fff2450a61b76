from __future__ import annotations

import pytest

from bidistream.cli.serve import resolve_port
from bidistream.container.loader import load_model, resolve_spec
from bidistream.errors import InputValidationError
from bidistream.models.echo import EchoModel
from bidistream.models.words import WordsModel


def test_builtin_names() -> None:
    assert isinstance(load_model("echo"), EchoModel)
    words = load_model("words", {"delay": "0.25"})
    assert isinstance(words, WordsModel) and words.delay == 0.25


def test_user_class_by_import_path() -> None:
    model = load_model("tests.fixtures.models:PathQueryModel")
    assert model.invocation_paths == ("v1/listen", "custom/deep.path_1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "neither a built-in"),
        ("no_such_module_xyz:Model", "cannot import"),
        ("bidistream.models.echo:Missing", "has no attribute"),
        ("bidistream.errors:wire_form", "not a subclass"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InputValidationError, match=message):
        load_model(spec)


def test_bad_options() -> None:
    with pytest.raises(InputValidationError, match="bad options"):
        load_model("echo", {"unknown": "1"})
    with pytest.raises(InputValidationError, match="bad options"):
        load_model("words", {"delay": "-1"})


def test_resolve_spec_keeps_user_specs() -> None:
    assert resolve_spec("a.b:C") == "a.b:C"


def test_port_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGEMAKER_BIND_TO_PORT", raising=False)
    assert resolve_port(None) == 8080
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    assert resolve_port(None) == 9123
    assert resolve_port(7000) == 7000
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "abc")
    with pytest.raises(SystemExit, match="not a port"):
        resolve_port(None)
