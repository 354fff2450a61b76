"""The scripts in examples/ run unchanged against a real gateway, in a shell set up by `bidistream env`.

This is what a newcomer does: start the gateway, `eval "$(bidistream env)"`, run the seed's create,
invoke and clean-up scripts (ported to the current official client), and the Deepgram flow.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from tests.conftest import BIN, ROOT, child_env, free_port, listening_process
from tests.speech_audio import synth
from tests.support.waiting import scaled

EXAMPLES = ROOT / "examples"
PHRASES = ["I need help with", "my account balance", "I can help with that", "and recent charges"]


def exports(port: int, data_dir: Path) -> dict[str, str]:
    """What `eval "$(bidistream env)"` puts in a shell, parsed the way sh would."""
    out = subprocess.run(
        [str(BIN / "bidistream"), "env", "--port", str(port), "--data-dir", str(data_dir)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        assert words[0] == "export", line
        key, _, value = words[1].partition("=")
        found[key] = value
    return found


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("examples") / "data"
    port = free_port()
    cmd = [str(BIN / "bidistream"), "gateway", "--port", str(port), "--data-dir", str(data_dir)]
    with listening_process(cmd, port, child_env()):
        env = child_env(**exports(port, data_dir))
        # a fresh shell: nothing of the test process's own AWS settings leaks in
        for key in ("AWS_PROFILE", "AWS_CONFIG_FILE"):
            env.pop(key, None)
        yield env


def script(
    env: dict[str, str], name: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=scaled(timeout),
    )


def test_env_bundle_keeps_system_cas_and_adds_ours(shell: dict[str, str]) -> None:
    bundle = Path(shell["SSL_CERT_FILE"]).read_text()
    assert shell["AWS_CA_BUNDLE"] == shell["SSL_CERT_FILE"]
    assert bundle.count("BEGIN CERTIFICATE") > 1  # the system's CAs, not ours alone
    ca = (Path(shell["SSL_CERT_FILE"]).parent / "ca.pem").read_text().strip()
    assert ca in bundle
    assert shell["AWS_ENDPOINT_URL_SAGEMAKER"] == shell["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME_HTTP2"]


def test_seed_scripts_create_invoke_clean_up(shell: dict[str, str]) -> None:
    created = script(shell, "create_sagemaker_endpoint.py", "--endpoint-name", "demo")
    assert created.returncode == 0, created.stderr
    assert "endpoint demo is InService" in created.stdout

    invoked = script(shell, "sagemaker_byo_bidi_invoke.py", "demo", "--gap", "0.05")
    assert invoked.returncode == 0, invoked.stderr
    received = [
        line.removeprefix("received: ") for line in invoked.stdout.splitlines() if "received:" in line
    ]
    assert received == PHRASES
    assert "Traceback" not in invoked.stderr

    cleaned = script(shell, "cleanup_sagemaker_resources.py", "--endpoint-name", "demo")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "deleted endpoint demo" in cleaned.stdout


def test_invoke_script_names_an_unknown_endpoint_in_one_line(shell: dict[str, str]) -> None:
    result = script(shell, "sagemaker_byo_bidi_invoke.py", "no-such-endpoint")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no-such-endpoint" in result.stderr


def test_deepgram_flow_transcribes_a_file(shell: dict[str, str]) -> None:
    created = script(
        shell,
        "create_sagemaker_endpoint.py",
        "--endpoint-name",
        "stt",
        "--container-image-uri",
        "bidistream/speech",
        timeout=scaled(240),
    )
    assert created.returncode == 0, created.stderr
    text = "i need help with my account balance"
    wav = synth(text)
    result = script(shell, "deepgram_stream_file.py", "stt", str(wav))
    assert result.returncode == 0, result.stderr
    heard = " ".join(
        line.removeprefix("transcript: ") for line in result.stdout.splitlines() if "transcript:" in line
    )
    assert jiwer.wer(text, heard.lower().strip(".,!? ")) <= 0.25, heard
    assert "metadata:" in result.stdout
    script(shell, "cleanup_sagemaker_resources.py", "--endpoint-name", "stt")
