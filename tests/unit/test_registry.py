"""models.registry: the one list of built-ins that the loader, images and `run` derive from."""

from __future__ import annotations

from bidistream.cli.run import default_builtins
from bidistream.container.loader import resolve_spec
from bidistream.models import registry
from bidistream.platform.images import parse_image


def test_every_builtin_loads_by_name_and_by_image() -> None:
    for builtin in registry.BUILTINS:
        assert resolve_spec(builtin.name) == builtin.target
        assert registry.by_image(builtin.image) is builtin
        if builtin.available():
            spec = parse_image(builtin.image + ":latest")
            assert (spec.kind, spec.target) == ("builtin", builtin.name)


def test_run_creates_the_available_builtins() -> None:
    assert default_builtins().split(",") == [m.name for m in registry.BUILTINS if m.available()]


def test_unknown_names_are_not_builtins() -> None:
    assert registry.by_name("nope") is None
    assert registry.by_image("bidistream/nope") is None
    assert registry.by_image("echo") is None
