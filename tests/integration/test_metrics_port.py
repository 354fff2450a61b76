"""``bidistream gateway --metrics-port``: /metrics on a plain-HTTP port of its own, as a process."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN, child_env, free_port, listening_process, wait_for_port


def test_gateway_serves_metrics_on_a_plain_http_port(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    cmd = [
        str(BIN / "bidistream"),
        "gateway",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--data-dir",
        str(tmp_path / "gw"),
        "--endpoint",
        "e=http://127.0.0.1:9",
    ]
    with listening_process(cmd, port, env=child_env()) as proc:
        wait_for_port(metrics_port, proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = resp.read().decode()
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert {"bidistream_gateway_sessions_opened", "bidistream_router_decisions"} <= names
