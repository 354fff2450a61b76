"""Request validation and response shaping from botocore's own service models.

An AWS JSON 1.1 service checks every request against its model before the
operation runs, and answers ``ValidationException`` with
``1 validation error detected: Value '…' at '…' failed to satisfy constraint: …``.
Rather than copy each shape by hand, this walks botocore's model (shipped with
boto3, the client our users run): required members, types, enums, lengths,
ranges and patterns.  Responses are trimmed to the output shape's members, so
a client never sees a field its model does not know.
"""

from __future__ import annotations

import datetime
import functools
import re
from typing import Any

from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape
from botocore.session import get_session

from bidistream.errors import InputValidationError

__all__ = ["ModelValidationError", "service_model", "shape_output", "validate_input"]


class ModelValidationError(InputValidationError):
    """A request broke a rule of the service model (``ValidationException``)."""

    code = "ValidationException"


@functools.cache
def service_model(name: str) -> ServiceModel:
    return get_session().get_service_model(name)


def violation(value: object, where: str, rule: str) -> ModelValidationError:
    shown = value if isinstance(value, int | float) and not isinstance(value, bool) else str(value)[:100]
    return ModelValidationError(
        f"1 validation error detected: Value '{shown}' at '{where}' failed to satisfy constraint: {rule}"
    )


@functools.cache
def _pattern(text: str) -> re.Pattern[str] | None:
    # Model patterns are Java regexes; those Python cannot read are not checked.
    try:
        return re.compile(text)
    except re.error:
        return None


def validate_input(operation: OperationModel, request: dict[str, Any]) -> None:
    """Raise :class:`ModelValidationError` for the first rule ``request`` breaks."""
    shape = operation.input_shape
    if shape is not None:
        _check(shape, request, "")


def _member_path(where: str, name: str) -> str:
    member = name[:1].lower() + name[1:]
    return f"{where}.{member}" if where else member


def _check(shape: Shape, value: Any, where: str) -> None:
    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        if not isinstance(value, dict):
            raise violation(value, where or "body", "Member must be a structure")
        for name in shape.required_members:
            if value.get(name) is None:
                raise violation(None, _member_path(where, name), "Member must not be null")
        for name, item in value.items():
            member = shape.members.get(name)
            if member is not None and item is not None:
                _check(member, item, _member_path(where, name))
        return
    if kind == "list":
        assert isinstance(shape, ListShape)
        if not isinstance(value, list):
            raise violation(value, where, "Member must be a list")
        _length(value, len(value), meta, where)
        for n, item in enumerate(value, 1):
            _check(shape.member, item, f"{where}.{n}")
        return
    if kind == "map":
        assert isinstance(shape, MapShape)
        if not isinstance(value, dict):
            raise violation(value, where, "Member must be a map")
        for key, item in value.items():
            _check(shape.key, key, f"{where}.key")
            _check(shape.value, item, f"{where}.{key}")
        return
    if kind == "string":
        if not isinstance(value, str):
            raise violation(value, where, "Member must be of type string")
        if shape.enum and value not in shape.enum:
            raise violation(value, where, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        _length(value, len(value), meta, where)
        pattern = meta.get("pattern")
        if pattern and (compiled := _pattern(pattern)) is not None and not compiled.fullmatch(value):
            raise violation(value, where, f"Member must satisfy regular expression pattern: {pattern}")
        return
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise violation(value, where, "Member must be of type integer")
        _range(value, meta, where)
        return
    if kind in ("double", "float"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise violation(value, where, "Member must be of type double")
        _range(value, meta, where)
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            raise violation(value, where, "Member must be of type boolean")
        return
    if kind == "timestamp":
        if not isinstance(value, int | float | str) or isinstance(value, bool):
            raise violation(value, where, "Member must be a timestamp")


def _length(value: object, size: int, meta: dict[str, Any], where: str) -> None:
    if "min" in meta and size < meta["min"]:
        raise violation(value, where, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and size > meta["max"]:
        raise violation(value, where, f"Member must have length less than or equal to {meta['max']}")


def _range(value: float, meta: dict[str, Any], where: str) -> None:
    if "min" in meta and value < meta["min"]:
        raise violation(value, where, f"Member must have value greater than or equal to {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise violation(value, where, f"Member must have value less than or equal to {meta['max']}")


def shape_output(shape: Shape | None, value: Any) -> Any:
    """Keep only what ``shape`` declares; timestamps become epoch seconds."""
    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        return {
            name: shape_output(shape.members[name], item)
            for name, item in value.items()
            if name in shape.members and item is not None
        }
    if kind == "list":
        assert isinstance(shape, ListShape)
        return [shape_output(shape.member, item) for item in value]
    if kind == "map":
        assert isinstance(shape, MapShape)
        return {k: shape_output(shape.value, v) for k, v in value.items()}
    if kind == "timestamp" and isinstance(value, datetime.datetime):
        return value.timestamp()
    return value
