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
