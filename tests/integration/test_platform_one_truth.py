"""One truth: DescribeEndpoint, ListEndpoints, `bidistream endpoints` and the router agree at every instant.

A watcher task runs on the gateway's event loop next to the manager and, every
few milliseconds, reads the four views back to back in one tick (nothing can
commit between them).  Every so often it also runs the real
``bidistream endpoints --json`` in a child process while the loop is held, so
the other process reads the SQLite file at that same instant.  It watches an
endpoint through create, scale-out, a model swap and delete, and fails on the
first instant two views disagree, or an endpoint is InService with fewer
healthy instances than it asks for (the bug this test was written for).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidistream.cli.run import endpoint_rows
from bidistream.errors import NotFoundError, ServiceUnavailableError
from bidistream.platform.app import Platform
from tests.support.waiting import eventually, scaled

from .platform_helpers import call, create_endpoint, started

BIN = Path(sys.executable).parent / "bidistream"


@dataclass(frozen=True)
class View:
    """What one reader says about the endpoint: its status and healthy instances per variant."""

    status: str | None  # None: the endpoint does not exist for this reader
    healthy: tuple[tuple[str, int], ...]


def _from_describe(platform: Platform, name: str) -> tuple[View, dict[str, int]]:
    status, _, body = platform.control_plane.dispatch(
        "SageMaker.DescribeEndpoint", json.dumps({"EndpointName": name}).encode(), {}
    )
    if status != 200:
        assert json.loads(body)["__type"].endswith("ValidationException"), body
        return View(None, ()), {}
    desc = json.loads(body)
    healthy = tuple(sorted((v["VariantName"], v["CurrentInstanceCount"]) for v in desc["ProductionVariants"]))
    wanted = {v["VariantName"]: v["DesiredInstanceCount"] for v in desc["ProductionVariants"]}
    return View(desc["EndpointStatus"], tuple((v, n) for v, n in healthy if n)), wanted


def _from_list(platform: Platform, name: str) -> str | None:
    listed = call(platform, "ListEndpoints")["Endpoints"]
    return next((e["EndpointStatus"] for e in listed if e["EndpointName"] == name), None)


def _from_rows(rows: list[dict[str, Any]], name: str) -> View:
    mine = [r for r in rows if r["endpoint"] == name]
    if not mine:
        return View(None, ())
    statuses = {r["status"] for r in mine}
    assert len(statuses) == 1, mine
    healthy = Counter(str(r["variant"]) for r in mine if r.get("state") == "healthy")
    return View(statuses.pop(), tuple(sorted(healthy.items())))


def _from_router(platform: Platform, name: str) -> tuple[bool, tuple[tuple[str, int], ...]]:
    try:
        targets = platform.router.candidates(name)
    except NotFoundError:
        return False, ()
    except ServiceUnavailableError:
        return True, ()
    return True, tuple(sorted(Counter(t.variant for t in targets).items()))


class Watcher:
    def __init__(self, platform: Platform, name: str, data_dir: Path) -> None:
        self.platform = platform
        self.name = name
        self.data_dir = data_dir
        self.seen: list[View] = []
        self.cli_checks = 0

    def observe(self, with_cli: bool) -> None:
        """Read every view in one tick of the loop and fail if two disagree."""
        described, wanted = _from_describe(self.platform, self.name)
        listed = _from_list(self.platform, self.name)
        rows = _from_rows(endpoint_rows(self.platform.store), self.name)
        exists, routed = _from_router(self.platform, self.name)
        where = f"describe={described} list={listed} cli={rows} router={routed}"
        assert described.status == listed == rows.status, where
        assert described.healthy == rows.healthy == routed, where
        if described.status is None:
            assert not exists, where
        if described.status == "InService":
            assert dict(described.healthy) == {v: n for v, n in wanted.items() if n}, where
        if with_cli:
            # The real CLI, in another process, while this loop (and so the manager) is held.
            out = subprocess.run(
                [str(BIN), "endpoints", "--json", "--data-dir", str(self.data_dir)],
                capture_output=True,
                text=True,
                timeout=scaled(30),
                check=True,
            )
            other = _from_rows(json.loads(out.stdout), self.name)
            assert other == rows, f"{where} other-process-cli={other}"
            self.cli_checks += 1
        if not self.seen or self.seen[-1] != described:
            self.seen.append(described)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            self.observe(with_cli=n % 40 == 0)
            n += 1
            await asyncio.sleep(0.005)
        self.observe(with_cli=True)


async def test_describe_list_cli_and_router_never_disagree(tmp_path: Path) -> None:
    platform = await started(tmp_path)
    stop = asyncio.Event()
    watcher = Watcher(platform, "truth", tmp_path)
    watcher.observe(with_cli=True)  # the instant before the endpoint exists
    watching = asyncio.create_task(watcher.run(stop))
    try:
        # Each step waits until the watcher itself saw the state, so it cannot miss one.
        create_endpoint(platform, "truth", variants=[("A", 2, 1.0), ("B", 1, 1.0)])
        await eventually(lambda: watcher.seen[-1].status == "InService", timeout=30)
        call(
            platform,
            "UpdateEndpointWeightsAndCapacities",
            EndpointName="truth",
            DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredInstanceCount": 3}],
        )
        await eventually(lambda: watcher.seen[-1].status == "Updating", timeout=10)
        await eventually(lambda: watcher.seen[-1].status == "InService", timeout=30)
        call(platform, "CreateModel", ModelName="words-model", PrimaryContainer={"Image": "bidistream/words"})
        variant = {"VariantName": "B", "ModelName": "words-model", "InitialInstanceCount": 2}
        call(platform, "CreateEndpointConfig", EndpointConfigName="words-cfg", ProductionVariants=[variant])
        call(platform, "UpdateEndpoint", EndpointName="truth", EndpointConfigName="words-cfg")
        await eventually(lambda: watcher.seen[-1] == View("InService", (("B", 2),)), timeout=30)
        call(platform, "DeleteEndpoint", EndpointName="truth")
        await eventually(lambda: watcher.seen[-1].status is None, timeout=30)
    finally:
        stop.set()
        await watching  # re-raises the first disagreement the watcher saw
        await platform.stop()
    statuses = [v.status for v in watcher.seen]
    # The watcher saw every step of the life it checked, not just its ends.
    for status in ("Creating", "InService", "Updating", "Deleting", None):
        assert status in statuses, statuses
    # Creating went from no healthy instance to all three, through the in-between instants.
    creating = [v.healthy for v in watcher.seen if v.status == "Creating"]
    assert creating[0] == (), watcher.seen
    assert watcher.seen[statuses.index("InService")].healthy == (("A", 2), ("B", 1)), watcher.seen
    assert watcher.cli_checks >= 3
