"""Turns a model spec from the command line into a Model instance.

Built-in names keep the CLI short (`bidistream serve echo`); any importable
``package.module:Class`` serves a user's own model the same way.
"""

from __future__ import annotations

import importlib
import inspect

from bidistream.errors import InputValidationError
from bidistream.model import Model
from bidistream.models import registry


def resolve_spec(spec: str) -> str:
    """``module:Class`` for a built-in name or a user spec; validates the shape only."""
    builtin = registry.by_name(spec)
    target = builtin.target if builtin is not None else spec
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        known = ", ".join(sorted(registry.names()))
        raise InputValidationError(
            f"model {spec!r} is neither a built-in ({known}) nor 'package.module:Class'"
        )
    return target


def load_model_class(spec: str) -> type[Model]:
    target = resolve_spec(spec)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputValidationError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise InputValidationError(f"{module_name!r} has no attribute {attr!r}") from exc
    if not (inspect.isclass(obj) and issubclass(obj, Model)):
        raise InputValidationError(f"{target!r} is not a subclass of bidistream.Model")
    return obj


def load_model(spec: str, options: dict[str, str] | None = None) -> Model:
    """Instantiate a model; ``options`` (from ``--set key=value``) become keyword arguments."""
    cls = load_model_class(spec)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise InputValidationError(f"bad options for model {spec!r}: {exc}") from exc
    except ValueError as exc:
        raise InputValidationError(f"bad options for model {spec!r}: {exc}") from exc


# CreateModel's PrimaryContainer.Environment reaches an instance as its environment; keys with this
# prefix are model options, the same ones `bidistream serve --set key=value` takes
# (BIDISTREAM_OPTION_PROFILE=accurate is --set profile=accurate). Other keys pass through untouched.
OPTION_ENV_PREFIX = "BIDISTREAM_OPTION_"


def options_from_environment(env: dict[str, str]) -> dict[str, str]:
    """The model options an environment carries, by lower-case option name."""
    return {
        key[len(OPTION_ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(OPTION_ENV_PREFIX) and len(key) > len(OPTION_ENV_PREFIX)
    }


def option_names(spec: str) -> list[str]:
    """The options a model takes: its constructor's keyword parameters."""
    params = inspect.signature(load_model_class(spec).__init__).parameters
    return [
        name
        for name, p in params.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def check_options(spec: str, options: dict[str, str], *, source: str = "option") -> None:
    """Refuse an unknown option by name, and a bad value by the model's own check, before serving.

    Building the model runs only its constructor (weights load later, in ``load()``), so this is
    cheap enough for CreateModel to call and turn a typo into a ValidationException instead of a
    Failed endpoint.
    """
    known = option_names(spec)
    unknown = sorted(set(options) - set(known))
    if unknown:
        shown = ", ".join(known) or "none"
        raise InputValidationError(
            f"unknown {source} {', '.join(map(repr, unknown))} for model {spec!r}; it takes: {shown}"
        )
    load_model(spec, options)
