"""The dependency rules of DESIGN.md, checked on the source: dependencies point inward.

Every ``import`` statement counts, including those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.  A new package or
module falls under the rule of the room it lives in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bidistream

SRC = Path(bidistream.__file__).parent

# room -> rooms it must never import (a room is a top-level module or package of bidistream).
FORBIDDEN: dict[str, set[str]] = {
    "models": {"gateway", "platform", "cli", "client"},
    "protocols": {"gateway", "platform", "cli", "client"},
    "container": {"gateway", "platform", "cli", "client"},
    "gateway": {"platform", "client", "cli", "container", "models"},
    "platform": {"gateway", "client", "cli"},
    "client": {"gateway", "platform", "container", "cli", "models"},
    "session": {"gateway", "platform", "container", "cli", "client", "models"},
}
# The innermost modules: they may import only these rooms of ours.  ``model`` is typed in
# Frames, so it may import ``frames`` as well as ``errors``.
ONLY: dict[str, set[str]] = {
    "errors": set(),
    "frames": {"errors"},
    "contract": {"errors"},
    "model": {"errors", "frames"},
    "routing": {"errors"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.add(mod)
            # `from bidistream import logs` imports the module bidistream.logs.
            if mod == "bidistream":
                found.update(f"bidistream.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("bidistream.")}


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _violations() -> list[str]:
    out: list[str] = []
    for path in _sources():
        room = _room(_module_name(path))
        for target in sorted(_imports(path)):
            other = _room(target)
            if other == room:
                continue
            if other == "cli":
                out.append(f"{_module_name(path)} imports {target}: only cli/ imports cli/")
            if other in FORBIDDEN.get(room, set()):
                out.append(f"{_module_name(path)} imports {target}: {room}/ must not import {other}/")
            if room in ONLY and other not in ONLY[room]:
                allowed = ", ".join(sorted(ONLY[room])) or "nothing of ours"
                out.append(f"{_module_name(path)} imports {target}: {room} may import only {allowed}")
    return out


def test_sources_are_found() -> None:
    names = {_module_name(p) for p in _sources()}
    assert {"bidistream.cli", "bidistream.routing", "bidistream.contract", "bidistream.errors"} <= names


def test_dependencies_point_inward() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("room", "target", "expected"),
    [
        ("gateway", "bidistream.platform.app", True),
        ("platform", "bidistream.gateway.server", True),
        ("platform", "bidistream.routing", False),
        ("gateway", "bidistream.routing", False),
    ],
)
def test_the_rules_catch_what_they_should(room: str, target: str, expected: bool) -> None:
    assert (_room(target) in FORBIDDEN[room]) is expected
