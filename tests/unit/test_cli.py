"""The composition root: commands, shared options, and errors that must not escape as tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidistream.cli import build_parser, main


def test_every_command_is_registered_in_help_order() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [  # type: ignore[union-attr]
        "serve",
        "check",
        "gateway",
        "env",
        "invoke",
        "run",
        "endpoints",
        "logs",
        "top",
    ]


@pytest.mark.parametrize("command", ["gateway", "run", "env", "invoke", "endpoints", "top"])
def test_data_dir_is_one_option_everywhere(command: str, tmp_path: Path) -> None:
    argv = [command, "--data-dir", str(tmp_path)] + (["echo"] if command == "invoke" else [])
    assert build_parser().parse_args(argv).data_dir == tmp_path


def test_bad_credentials_are_a_message_and_exit_2_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["gateway", "--credentials", "nocolon", "--data-dir", str(tmp_path), "--port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "bidistream gateway:" in err and "AKID:SECRET" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before the platform touched the data dir
