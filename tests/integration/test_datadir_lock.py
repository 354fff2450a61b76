"""A second gateway on a running gateway's data dir refuses at once and changes nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.boto import boto_client
from tests.conftest import BIN, child_env, free_port, listening_process
from tests.support.waiting import scaled, wait_until


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[int, Path, int]]:
    data_dir = tmp_path / "data"
    port = free_port()
    cmd = [
        str(BIN / "bidistream"),
        "run",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--builtins",
        "echo",
    ]
    with listening_process(cmd, port, child_env()) as proc:
        yield port, data_dir, proc.pid


def _describe(port: int, data_dir: Path) -> dict[str, object]:
    sm = boto_client("sagemaker", f"https://127.0.0.1:{port}", data_dir / "ca.pem")
    return dict(sm.describe_endpoint(EndpointName="echo"))


def _endpoints(data_dir: Path) -> str:
    return subprocess.run(
        [str(BIN / "bidistream"), "endpoints", "--data-dir", str(data_dir), "--json"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_second_run_on_the_same_data_dir_refuses_and_leaves_the_first_untouched(
    running: tuple[int, Path, int],
) -> None:
    port, data_dir, pid = running
    wait_until(lambda: _describe(port, data_dir)["EndpointStatus"] == "InService", timeout=60)
    before = _endpoints(data_dir)

    second = subprocess.run(
        [str(BIN / "bidistream"), "run", "--port", str(free_port()), "--data-dir", str(data_dir)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert second.returncode != 0
    assert f"a gateway already runs on this data dir (pid {pid}, https://127.0.0.1:{port})" in second.stderr
    assert "Traceback" not in second.stderr
    assert _endpoints(data_dir) == before  # no endpoint or instance row was rewritten
    assert _describe(port, data_dir)["EndpointStatus"] == "InService"
