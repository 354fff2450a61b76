"""Helpers for the platform's integration tests: drive the control plane in-process."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from bidistream.platform.app import Platform, build_platform
from bidistream.platform.manager import ManagerLimits
from tests.support.waiting import scaled

FAST = ManagerLimits(health_interval=0.3, unhealthy_after=2, restart_backoff=0.2, stop_grace=5.0)


def production_variants(
    name: str, variants: list[tuple[str, int, float]] | None = None
) -> list[dict[str, Any]]:
    """ProductionVariants for the model ``{name}-model``: (variant, instance count, weight) each."""
    return [
        {
            "VariantName": vname,
            "ModelName": f"{name}-model",
            "InitialInstanceCount": count,
            "InstanceType": "ml.m5.large",
            "InitialVariantWeight": weight,
        }
        for vname, count, weight in (variants or [("AllTraffic", 1, 1.0)])
    ]


def call(platform: Platform, op: str, **params: Any) -> dict[str, Any]:
    status, _, body = platform.control_plane.dispatch(f"SageMaker.{op}", json.dumps(params).encode(), {})
    result: dict[str, Any] = json.loads(body)
    if status != 200:
        raise AssertionError(f"{op} failed with {status}: {result}")
    return result


async def started(data_dir: Path, limits: ManagerLimits = FAST) -> Platform:
    platform = build_platform(data_dir, manager_limits=limits)
    await platform.start()
    return platform


def create_endpoint(
    platform: Platform,
    name: str,
    image: str = "bidistream/echo",
    variants: list[tuple[str, int, float]] | None = None,
) -> None:
    call(platform, "CreateModel", ModelName=f"{name}-model", PrimaryContainer={"Image": image})
    call(
        platform,
        "CreateEndpointConfig",
        EndpointConfigName=f"{name}-config",
        ProductionVariants=production_variants(name, variants),
    )
    call(platform, "CreateEndpoint", EndpointName=name, EndpointConfigName=f"{name}-config")


async def wait_status(platform: Platform, name: str, wanted: str, timeout: float = 25.0) -> dict[str, Any]:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        desc = call(platform, "DescribeEndpoint", EndpointName=name)
        if desc["EndpointStatus"] == wanted:
            return desc
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} stayed {desc['EndpointStatus']}: {desc.get('FailureReason')}")
        await asyncio.sleep(0.05)


async def echo_once(base_url: str, text: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(base_url.replace("http", "ws") + "/invocations-bidirectional-stream") as ws,
    ):
        await ws.send_str(text)
        msg = await asyncio.wait_for(ws.receive(), scaled(10))
        return str(msg.data)
