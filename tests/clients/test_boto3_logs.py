"""A failed InvokeEndpoint says where the instance's log is, and that log has the request.

boto3's runtime client gets the 424 (``ModelError``); its message names the
instance's log file and the request id; ``bidistream logs`` prints that file
with the model server's line for the same request id.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import botocore.exceptions
import pytest

from bidistream.cli import main as cli_main
from tests.support.waiting import eventually

from .platform_stack import Stack, create_endpoint, platform_stack, sync


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    async with platform_stack(tmp_path / "data") as s:
        monkeypatch.setenv("SSL_CERT_FILE", str(s.gateway.ca_path))
        yield s


async def test_424_names_the_instance_log_which_has_the_request(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await sync(create_endpoint, stack.boto(), "failing", "python:tests.fixtures.models:FailingModel")
    rt = stack.boto("sagemaker-runtime")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await sync(rt.invoke_endpoint, EndpointName="failing", Body=b"x")
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err["Error"]["Code"] == "ModelError"
    message = err["Error"]["Message"]
    found = re.search(
        r"See the instance's log: (\S+\.log) \(bidistream logs failing --instance (\S+)\)", message
    )
    assert found, message
    log_file, instance = Path(found.group(1)), found.group(2)
    request_id = re.search(r"Request id ([0-9a-f-]{36})", message)
    assert request_id, message
    rid = request_id.group(1)

    def logged() -> bool:
        return log_file.exists() and rid in log_file.read_text()

    await eventually(logged, timeout=5)
    text = await sync(log_file.read_text)
    line = next(ln for ln in text.splitlines() if rid in ln and "msg=invocation" in ln)
    assert "status=500" in line and "instance=" + instance in line and "endpoint=failing" in line

    # The same line through the command a user runs.
    code = cli_main(["logs", "failing", "--instance", instance, "--data-dir", str(stack.platform.data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and rid in out and out.splitlines()[0].startswith(f"{instance} | ")

    # And `bidistream endpoints --json` reads the instance's live sessions from its /metrics.
    code = await sync(cli_main, ["endpoints", "--json", "--data-dir", str(stack.platform.data_dir)])
    rows = json.loads(capsys.readouterr().out)
    mine = [r for r in rows if r.get("instance") == instance]
    assert code == 0 and mine and mine[0]["sessions"] == 0 and mine[0]["backlog_s"] == 0
