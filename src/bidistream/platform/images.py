"""What ``PrimaryContainer.Image`` may name, and how an instance runs it.

SageMaker only knows OCI images.  Locally, pulling and running images is the
slow, Docker-dependent path, so bidistream accepts four spellings, checked in
this order (the first match wins):

``bidistream/<name>`` (optionally ``:tag``), for each name of :mod:`bidistream.models.registry`
    A built-in model, run as ``bidistream serve NAME``.  The tag is accepted
    for familiarity and ignored: built-ins ship with the package.
``python:package.module:Class``
    A user's :class:`bidistream.Model` subclass, run as ``bidistream serve
    package.module:Class``.  Put its directory on ``PYTHONPATH`` through the
    model's ``Environment`` if it is not installed.
``cmd:<shell words>``
    Any server that honours the container contract, run as a local process.
    The words are split like a POSIX shell (no shell is run); ``$VAR`` and
    ``${VAR}`` expand from the instance environment, which always holds
    ``SAGEMAKER_BIND_TO_PORT``.  A first word ``python``/``python3`` means the
    interpreter running bidistream, so the user's virtualenv is used.
An OCI image reference (``repo/name:tag``, ``host:5000/name@sha256:…``)
    Run through a Docker engine.  Without a reachable engine the endpoint goes
    ``Failed`` with a FailureReason that says so.

Anything else is rejected at CreateModel with a ValidationException naming
the rule, so a typo never becomes a Failed endpoint minutes later.
"""

from __future__ import annotations

import re
import shlex
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bidistream.errors import InputValidationError
from bidistream.models import registry

__all__ = ["ImageSpec", "builtin_available", "parse_image"]

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PY_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*")
# The distribution spec's reference grammar, slightly simplified: optional
# registry host[:port], lowercase path components, optional tag and digest.
_OCI = re.compile(
    r"(?:(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+:[a-f0-9]{32,}))?"
)

ImageKind = Literal["builtin", "python", "command", "oci"]


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """A parsed ``Image``.  ``target`` is the built-in name, the ``module:Class``,
    the split command words or the OCI reference, depending on ``kind``."""

    kind: ImageKind
    image: str
    target: str
    words: tuple[str, ...] = field(default=())

    def argv(self, *, host: str, port: int, env: Mapping[str, str]) -> list[str]:
        """The command that starts one instance of this image as a local process."""
        if self.kind in ("builtin", "python"):
            return [
                sys.executable,
                "-m",
                "bidistream.cli",
                "serve",
                self.target,
                "--host",
                host,
                "--port",
                str(port),
            ]
        if self.kind == "command":
            words = [string.Template(w).safe_substitute(env) for w in self.words]
            if words and words[0] in ("python", "python3"):
                words[0] = sys.executable
            return words
        raise InputValidationError(f"image {self.image!r} is an OCI image; it runs through Docker")


def builtin_available(name: str) -> bool:
    """A built-in whose module is absent from this build is refused early (at CreateModel)."""
    builtin = registry.by_name(name)
    return builtin is not None and builtin.available()


def parse_image(image: str, field_name: str = "PrimaryContainer.Image") -> ImageSpec:
    """Classify an Image string or raise InputValidationError naming the field and rule."""
    if not image or image != image.strip():
        raise InputValidationError(f"{field_name} must be a non-empty string without surrounding spaces")
    repo, sep, tag = image.partition(":")
    builtin = registry.by_image(repo)
    if builtin is not None and not image.startswith(("python:", "cmd:")):
        if sep and not _TAG.fullmatch(tag):
            raise InputValidationError(
                f"{field_name} {image!r}: the tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
            )
        name = builtin.name
        if not builtin.available():
            raise InputValidationError(
                f"{field_name} {image!r}: the built-in model {name!r} is not available in this build"
            )
        return ImageSpec("builtin", image, name)
    if repo.startswith(registry.IMAGE_PREFIX) or repo == registry.IMAGE_PREFIX.rstrip("/"):
        known = ", ".join(sorted(m.image for m in registry.BUILTINS))
        raise InputValidationError(f"{field_name} {image!r} is not a built-in model; built-ins are {known}")
    if image.startswith("python:"):
        spec = image.removeprefix("python:")
        if not _PY_SPEC.fullmatch(spec):
            raise InputValidationError(
                f"{field_name} {image!r}: expected python:package.module:Class (a bidistream.Model subclass)"
            )
        return ImageSpec("python", image, spec)
    if image.startswith("cmd:"):
        try:
            words = tuple(shlex.split(image.removeprefix("cmd:")))
        except ValueError as exc:
            raise InputValidationError(f"{field_name} {image!r}: cannot split the command: {exc}") from exc
        if not words:
            raise InputValidationError(f"{field_name} {image!r}: cmd: needs a command after the colon")
        return ImageSpec("command", image, words[0], words)
    if _OCI.fullmatch(image):
        return ImageSpec("oci", image, image)
    raise InputValidationError(
        f"{field_name} {image!r} is not a valid image: use {registry.IMAGE_PREFIX}"
        f"{'|'.join(registry.names())}[:tag], "
        "python:package.module:Class, cmd:<command> or an OCI image reference (lowercase repository[:tag])"
    )
