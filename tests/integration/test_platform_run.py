"""``bidistream run`` (the main job) and ``bidistream endpoints``, as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.boto import boto_client
from tests.conftest import free_port
from tests.support.waiting import scaled

BIN = Path(sys.executable).parent / "bidistream"


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [
            str(BIN),
            "run",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            "--builtins",
            "echo,words",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    # A bound that turns a hang into a failure, not a speed bar: two endpoints' instance
    # processes start on a loaded 2-core machine in well over 25 s (seen at load average 13).
    deadline = time.monotonic() + scaled(90)
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "bidistream invoke" in line:  # the last line of the instructions
            return proc, lines
    proc.kill()
    raise AssertionError("bidistream run did not print its instructions:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=scaled(20)) == 0


def _endpoints(data_dir: Path) -> str:
    out = subprocess.run(
        [str(BIN), "endpoints", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=scaled(20),
        check=True,
    )
    return out.stdout


def test_run_creates_builtins_once_and_endpoints_lists_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proc, lines = _start(data_dir, port)
    try:
        text = "".join(lines)
        assert f"https://127.0.0.1:{port}" in text and "endpoints: echo, words" in text
        assert "boto3.client" in text and "AsyncSageMakerRuntimeHTTP2Config" in text
        sm = boto_client("sagemaker", f"https://127.0.0.1:{port}", data_dir / "ca.pem")
        statuses = {e["EndpointName"]: e["EndpointStatus"] for e in sm.list_endpoints()["Endpoints"]}
        assert statuses == {"echo": "InService", "words": "InService"}
        table = _endpoints(data_dir)
        assert table.splitlines()[0].split()[:3] == ["ENDPOINT", "STATUS", "VARIANT"]
        rows = [line.split() for line in table.splitlines()[1:] if line and not line.startswith("(")]
        assert {(r[0], r[1], r[2], r[6]) for r in rows} == {
            ("echo", "InService", "AllTraffic", "healthy"),
            ("words", "InService", "AllTraffic", "healthy"),
        }
        assert "no running gateway" not in table
        reply = subprocess.run(
            [
                str(BIN),
                "invoke",
                "--endpoint-url",
                f"https://127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
                "echo",
            ],
            input="hello\nworld\n",
            capture_output=True,
            text=True,
            timeout=scaled(20),
            env={**os.environ, "SSL_CERT_FILE": str(data_dir / "ca.pem")},
        )
        assert reply.stdout.split() == ["hello", "world"], reply.stderr
    finally:
        _stop(proc)
    # A second run finds the endpoints in the store: nothing is created twice.
    proc, _ = _start(data_dir, port)
    try:
        sm_models = boto_client("sagemaker", f"https://127.0.0.1:{port}", data_dir / "ca.pem").list_models()[
            "Models"
        ]
        assert sorted(m["ModelName"] for m in sm_models) == ["echo", "words"]
    finally:
        _stop(proc)
    assert "(no running gateway" in _endpoints(data_dir)
