"""The NIM seed's own commands through the gateway: boto3 ``invoke_endpoint`` and the aws CLI.

The endpoint points at the shared ``bidistream serve speech`` process; the
bodies are the seed's printf-built multipart (tests/clients/test_nim_requests.py).
``--custom-attributes "X-Amzn-SageMaker-Custom-Attributes=/invocations/…"`` reaches
the container verbatim and picks the route; a container 400 is ``ModelError``
(424) with ``OriginalStatusCode``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jiwer
import pytest
from botocore.exceptions import ClientError

from tests.boto import boto_client
from tests.clients.test_nim_requests import MAX_WER, SENTENCE, grpc_text, plain, seed_body
from tests.speech_audio import speech_server, synth
from tests.support.aws import Stack, gateway_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path / "gw", {}, urls={"nim": f"http://127.0.0.1:{speech_server()}"}) as s:
        yield s


def runtime(stack: Stack) -> Any:
    return boto_client("sagemaker-runtime", stack.gateway.url, stack.gateway.ca_path)


@pytest.mark.parametrize(
    ("attributes", "style"),
    [
        (None, "grpc"),  # auto: diarization asked
        ("X-Amzn-SageMaker-Custom-Attributes=/invocations/http", "http"),
        ("X-Amzn-SageMaker-Custom-Attributes=/invocations/grpc", "grpc"),
    ],
)
async def test_boto3_invoke_endpoint_every_route(stack: Stack, attributes: str | None, style: str) -> None:
    body, ctype = seed_body(synth(SENTENCE).read_bytes())
    extra = {"CustomAttributes": attributes} if attributes else {}

    def call() -> dict[str, Any]:
        r = runtime(stack).invoke_endpoint(EndpointName="nim", Body=body, ContentType=ctype, **extra)
        return json.loads(r["Body"].read())  # type: ignore[no-any-return]

    doc = await asyncio.to_thread(call)
    text = grpc_text(doc) if style == "grpc" else doc["text"]
    assert ("predictions" in doc) is (style == "grpc")
    assert jiwer.wer(SENTENCE, plain(text)) <= MAX_WER, doc


async def test_boto3_container_400_is_model_error_424_with_original_status(stack: Stack) -> None:
    body, ctype = seed_body(b"plain text, not audio" * 30)

    def call() -> ClientError:
        with pytest.raises(ClientError) as info:
            runtime(stack).invoke_endpoint(EndpointName="nim", Body=body, ContentType=ctype)
        return info.value

    err = await asyncio.to_thread(call)
    assert err.response["Error"]["Code"] == "ModelError"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err.response["OriginalStatusCode"] == 400
    assert "error" in json.loads(err.response["OriginalMessage"])


async def test_aws_cli_invoke_endpoint_as_the_seed_runs_it(stack: Stack, tmp_path: Path) -> None:
    aws = shutil.which("aws")
    assert aws, "the aws CLI is needed for this test (pip install awscli)"
    body, ctype = seed_body(synth(SENTENCE).read_bytes())
    mp = tmp_path / "asr_diarization.bin"
    mp.write_bytes(body)
    out = tmp_path / "result_http.json"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_CA_BUNDLE": str(stack.gateway.ca_path),
    }
    cmd = [
        aws,
        "sagemaker-runtime",
        "invoke-endpoint",
        "--region",
        "us-east-1",
        "--endpoint-url",
        stack.gateway.url,
        "--endpoint-name",
        "nim",
        "--custom-attributes",
        "X-Amzn-SageMaker-Custom-Attributes=/invocations/http",
        "--content-type",
        ctype,
        "--body",
        f"fileb://{mp}",
        str(out),
    ]
    proc = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ContentType" in json.loads(proc.stdout)
    doc = json.loads(out.read_text())
    assert set(doc) == {"text"} and jiwer.wer(SENTENCE, plain(doc["text"])) <= MAX_WER, doc
