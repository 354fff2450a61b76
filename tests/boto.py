"""boto3 clients pointed at a local gateway: one place for the endpoint, CA, region and keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config


def boto_client(
    service: str,
    url: str,
    ca: Path | str,
    *,
    akid: str = "local",
    secret: str = "local",
    **config: Any,
) -> Any:
    """A real boto3 client; retries off so a test sees the first answer, not a retried one."""
    return boto3.client(
        service,
        endpoint_url=url,
        verify=str(ca),
        region_name="us-east-1",
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )
