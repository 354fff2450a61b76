"""The CLI as a user runs it: `bidistream serve echo`, `bidistream gateway`, `bidistream invoke`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from tests.boto import boto_client
from tests.conftest import BIN, child_env, free_port, listening_process, serve_process, wait_for_port
from tests.support.waiting import read_until, scaled, waiter_config


@pytest.fixture
def gateway_proc(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with serve_process("echo") as (_, echo_port):
        port = free_port()
        data_dir = tmp_path / "gw"
        log = (tmp_path / "gateway.log").open("wb")  # logs: a file, never an unread pipe
        proc = subprocess.Popen(
            [
                str(BIN / "bidistream"),
                "gateway",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--endpoint",
                f"echo=http://127.0.0.1:{echo_port}",
            ],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=log,
        )
        ready = f"export SSL_CERT_FILE={data_dir / 'ca.pem'}".encode()
        out = b""
        try:
            wait_for_port(port, proc=proc)
            # The port accepts before the ready lines are printed: wait for them, not for time.
            assert proc.stdout is not None
            early = read_until(proc.stdout, ready)
            yield port, data_dir
        finally:
            proc.terminate()
            try:
                out = proc.communicate(timeout=scaled(10))[0] or b""
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        assert ready in early + out


def test_invoke_streams_stdin_lines(gateway_proc: tuple[int, Path]) -> None:
    port, data_dir = gateway_proc
    assert (data_dir / "ca.pem").exists() and (data_dir / "server.pem").exists()
    result = subprocess.run(
        [
            str(BIN / "bidistream"),
            "invoke",
            "echo",
            "--data-dir",
            str(data_dir),
            "--endpoint-url",
            f"https://127.0.0.1:{port}",
        ],
        input=b"I need help with\nmy account balance\n",
        capture_output=True,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == ["I need help with", "my account balance"]


def test_invoke_binary_file_in_chunks(gateway_proc: tuple[int, Path], tmp_path: Path) -> None:
    port, data_dir = gateway_proc
    blob = bytes(range(256)) * 64
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    result = subprocess.run(
        [
            str(BIN / "bidistream"),
            "invoke",
            "echo",
            "--binary",
            "--chunk-bytes",
            "1000",
            "--file",
            str(src),
            "--data-dir",
            str(data_dir),
            "--endpoint-url",
            f"https://127.0.0.1:{port}",
        ],
        capture_output=True,
        timeout=scaled(30),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == blob


def test_invoke_unknown_endpoint_exits_1(gateway_proc: tuple[int, Path]) -> None:
    port, data_dir = gateway_proc
    result = subprocess.run(
        [
            str(BIN / "bidistream"),
            "invoke",
            "nope",
            "--data-dir",
            str(data_dir),
            "--endpoint-url",
            f"https://127.0.0.1:{port}",
        ],
        input=b"x\n",
        capture_output=True,
        timeout=scaled(30),
    )
    assert result.returncode == 1
    # one clear line, no traceback from the official client's orphaned tasks (issue 15.2)
    assert result.stderr.decode().strip().splitlines() == [
        "bidistream invoke: NotFound: Endpoint nope not found."
    ], result.stderr.decode()


def _invoke(port: int, data_dir: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    url = f"https://127.0.0.1:{port}"
    return subprocess.run(
        [str(BIN / "bidistream"), "invoke", *args, "--data-dir", str(data_dir), "--endpoint-url", url],
        input=stdin,
        capture_output=True,
        timeout=scaled(30),
    )


def test_invoke_with_nothing_listening_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = _invoke(port, tmp_path, "echo", stdin=b"x\n")
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"bidistream invoke: nothing answers at https://127.0.0.1:{port} — is `bidistream run` running?"
    ]


def test_chunk_bytes_implies_binary(gateway_proc: tuple[int, Path], tmp_path: Path) -> None:
    """Chunks cut anywhere; as UTF8 parts `ff 00` would come back as U+FFFD (issue 15.9)."""
    port, data_dir = gateway_proc
    src = tmp_path / "bin.dat"
    blob = b"\xff\x00" * 40 + "é".encode() * 10
    src.write_bytes(blob)
    result = _invoke(port, data_dir, "echo", "--chunk-bytes", "16", "--file", str(src))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == blob


def test_version_and_help_say_units_and_defaults() -> None:
    version = subprocess.run(
        [str(BIN / "bidistream"), "--version"], capture_output=True, text=True, timeout=scaled(30)
    )
    assert version.returncode == 0 and version.stdout.startswith("bidistream 0.")
    for command in ("env", "invoke"):
        shown = subprocess.run(
            [str(BIN / "bidistream"), command, "--help"], capture_output=True, text=True, timeout=scaled(30)
        )
        assert shown.returncode == 0
        assert "usage:" in shown.stdout and len(shown.stdout.split("\n\n")[1]) > 40, "a description"


def test_endpoints_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`bidistream endpoints | head -1` must not end in a BrokenPipeError traceback (issue 15.10)."""
    result = subprocess.run(
        f"{BIN / 'bidistream'} endpoints --data-dir {tmp_path} --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_env_prints_client_exports(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "bidistream"), "env", "--data-dir", str(tmp_path / "d"), "--port", "9443"],
        capture_output=True,
        timeout=scaled(30),
        check=True,
    )
    out = result.stdout.decode()
    assert "export AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2=https://127.0.0.1:9443" in out
    # a bundle: the system CAs plus ours, so the shell still trusts everything else (issue 15.6)
    bundle = tmp_path / "d" / "trust-bundle.pem"
    assert f"export SSL_CERT_FILE={bundle}" in out and f"export AWS_CA_BUNDLE={bundle}" in out
    assert "export AWS_ENDPOINT_URL_SAGEMAKER=https://127.0.0.1:9443" in out
    assert (tmp_path / "d" / "ca.pem").read_text().strip() in bundle.read_text()


def test_gateway_command_serves_the_control_plane_beside_declared_endpoints(
    gateway_proc: tuple[int, Path],
) -> None:
    """`bidistream gateway --endpoint ...` also manages endpoints created with boto3."""
    port, data_dir = gateway_proc
    url, ca = f"https://127.0.0.1:{port}", data_dir / "ca.pem"
    sm = boto_client("sagemaker", url, ca)
    rt = boto_client("sagemaker-runtime", url, ca)
    sm.create_model(
        ModelName="cli-words",
        PrimaryContainer={"Image": "bidistream/words"},
        ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
    )
    sm.create_endpoint_config(
        EndpointConfigName="cli-words",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "cli-words", "InitialInstanceCount": 1}
        ],
    )
    sm.create_endpoint(EndpointName="cli-words", EndpointConfigName="cli-words")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="cli-words", WaiterConfig=waiter_config(60))
    managed = rt.invoke_endpoint(EndpointName="cli-words", Body=b"two words")
    assert json.loads(managed["Body"].read()) == ["two", "words"]
    declared = rt.invoke_endpoint(EndpointName="echo", Body=b"static")
    assert declared["Body"].read() == b"static"
    names = [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    assert names == ["cli-words"]  # declared endpoints are not control-plane records
    sm.delete_endpoint(EndpointName="cli-words")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="cli-words", WaiterConfig=waiter_config(60))


def test_credentials_from_a_file_stay_off_the_command_line(tmp_path: Path) -> None:
    secret_file = tmp_path / "creds"
    secret_file.write_text("# gateway keys\nAKIDFILE:file-secret-1234\n")
    port, data_dir = free_port(), tmp_path / "gw"
    cmd = [str(BIN / "bidistream"), "gateway", "--port", str(port), "--data-dir", str(data_dir)]
    cmd += ["--credentials", f"@{secret_file}"]
    with listening_process(cmd, port, child_env()):
        url, ca = f"https://127.0.0.1:{port}", data_dir / "ca.pem"
        good = boto_client("sagemaker", url, ca, akid="AKIDFILE", secret="file-secret-1234")
        assert good.list_endpoints()["Endpoints"] == []
        bad = boto_client("sagemaker", url, ca, akid="AKIDFILE", secret="wrong")
        with pytest.raises(botocore.exceptions.ClientError):
            bad.list_endpoints()


def test_unreadable_credentials_file_is_one_clear_line(tmp_path: Path) -> None:
    cmd = [str(BIN / "bidistream"), "gateway", "--port", str(free_port()), "--data-dir", str(tmp_path)]
    result = subprocess.run(
        [*cmd, "--credentials", f"@{tmp_path / 'missing'}"],
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert result.returncode != 0
    assert "cannot read credentials file" in result.stderr and "Traceback" not in result.stderr
