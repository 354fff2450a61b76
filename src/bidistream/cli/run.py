"""``bidistream run`` (the main job) and ``bidistream endpoints`` (what runs, as a table)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bidistream.cli.gateway import add_gateway_arguments, start_gateway
from bidistream.cli.options import add_data_dir
from bidistream.errors import BidistreamError
from bidistream.models import registry

if TYPE_CHECKING:
    from bidistream.gateway.server import Gateway
    from bidistream.platform.app import Platform


def default_builtins() -> str:
    """Every built-in of the registry that ships in this build (speech needs its extra)."""
    return ",".join(m.name for m in registry.BUILTINS if m.available())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help=f"start the gateway with the built-in endpoints ({', '.join(registry.names())})",
        description="Start the gateway (TLS, HTTP/2 + HTTP/1.1, the control plane) on the chosen runtime "
        "(--runtime, default process), create the built-in endpoints through the control plane if they "
        "are missing, and print how to invoke them.",
    )
    add_gateway_arguments(run)
    run.add_argument(
        "--builtins",
        default=None,
        metavar="NAMES",
        help="comma-separated built-ins to create if missing (default: all in this build; '' for none)",
    )
    run.set_defaults(handler=_run)

    endpoints = sub.add_parser(
        "endpoints",
        help="list endpoints, variants, instances, live sessions and status",
        description="Read the data dir's store and print one row per instance: status and states are "
        "written the moment they change; live-session counts are refreshed every second.",
    )
    add_data_dir(endpoints)
    endpoints.add_argument("--json", action="store_true", help="print JSON instead of a table")
    endpoints.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2), like bidistream top",
    )
    endpoints.add_argument(
        "--no-live", action="store_true", help="do not ask instances for live sessions and backlog"
    )
    endpoints.set_defaults(handler=_endpoints)


def _run(args: argparse.Namespace) -> int:
    wanted = default_builtins() if args.builtins is None else args.builtins
    names: dict[str, str] = {}
    for name in filter(None, (n.strip() for n in wanted.split(","))):
        builtin = registry.by_name(name)
        if builtin is None:
            print(f"bidistream run: unknown built-in {name!r}: choose from {', '.join(registry.names())}")
            return 2
        names[name] = builtin.image  # endpoint, model and config are named after the built-in

    async def ready(platform: Platform, gateway: Gateway, stop: asyncio.Event) -> None:
        await ensure_builtin_endpoints(platform, names)
        await _wait_in_service(platform, list(names), stop)
        print(instructions(gateway.url, gateway.ca_path, list(names), platform.data_dir), flush=True)

    return start_gateway(args, "run", ready)


async def ensure_builtin_endpoints(platform: object, names: dict[str, str]) -> list[str]:
    """Create model, config and endpoint for each built-in through the control plane
    (the same calls boto3 makes), skipping what exists.  Returns the names created."""
    from bidistream.platform.app import Platform

    assert isinstance(platform, Platform)
    api = platform.control_plane
    created = []

    def call(op: str, **params: object) -> tuple[int, dict[str, object]]:
        status, _, body = api.dispatch(op, json.dumps(params).encode(), {})
        return status, json.loads(body)

    for name, image in names.items():
        if call("DescribeEndpoint", EndpointName=name)[0] == 200:
            continue
        if call("DescribeModel", ModelName=name)[0] != 200:
            status, body = call("CreateModel", ModelName=name, PrimaryContainer={"Image": image})
            if status != 200:
                raise BidistreamError(f"cannot create model {name}: {body.get('message')}")
        if call("DescribeEndpointConfig", EndpointConfigName=name)[0] != 200:
            variant = {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
            status, body = call("CreateEndpointConfig", EndpointConfigName=name, ProductionVariants=[variant])
            if status != 200:
                raise BidistreamError(f"cannot create endpoint config {name}: {body.get('message')}")
        status, body = call("CreateEndpoint", EndpointName=name, EndpointConfigName=name)
        if status != 200:
            raise BidistreamError(f"cannot create endpoint {name}: {body.get('message')}")
        created.append(name)
    return created


async def _wait_in_service(platform: object, names: list[str], stop: asyncio.Event) -> None:
    from bidistream.platform.app import Platform

    assert isinstance(platform, Platform)
    pending = set(names)
    while pending and not stop.is_set():
        for name in list(pending):
            record = platform.store.get_endpoint(name)
            if record is None or record.status in ("InService", "Failed"):
                pending.discard(name)
                if record is not None and record.status == "Failed":
                    print(f"bidistream: endpoint {name} failed: {record.failure_reason}", file=sys.stderr)
        await asyncio.sleep(0.2)


def instructions(url: str, ca_path: Path, names: list[str], data_dir: Path) -> str:
    first = names[0] if names else "echo"
    return f"""
bidistream is up: {url}  (CA certificate: {ca_path})
endpoints: {", ".join(names) or "(none created)"}
  list them with: bidistream endpoints --data-dir {data_dir}
  in a browser:   {url}/web/  (trust {ca_path} first)

1) the official bidi client (aws-sdk-sagemaker-runtime-http2):
   eval "$(bidistream env --data-dir {data_dir})"   # URLs, CA bundle, region, placeholder credentials
   config = await AsyncSageMakerRuntimeHTTP2Config.resolve(endpoint_uri="{url}", region="us-east-1",
       aws_credentials_identity_resolver=EnvironmentCredentialsResolver(), transport=AWSCRTHTTPClient())
   stream = await client.invoke_endpoint_with_bidirectional_stream(
       InvokeEndpointWithBidirectionalStreamInput(endpoint_name="{first}"))

2) boto3 (control plane and InvokeEndpoint):
   sm = boto3.client("sagemaker", endpoint_url="{url}", verify="{ca_path}", region_name="us-east-1")
   sm.describe_endpoint(EndpointName="{first}")["EndpointStatus"]
   rt = boto3.client("sagemaker-runtime", endpoint_url="{url}", verify="{ca_path}", region_name="us-east-1")
   rt.invoke_endpoint(EndpointName="{first}", Body=b"hello")["Body"].read()

3) the bidistream command line (one UTF8 part per line of stdin):
   printf 'hello\\nworld\\n' | bidistream invoke --endpoint-url {url} --data-dir {data_dir} {first}
"""


def _endpoints(args: argparse.Namespace) -> int:
    if args.watch is not None:
        from bidistream.cli.ops import watch

        return watch(Path(args.data_dir), args.watch)
    return show_endpoints(Path(args.data_dir), as_json=args.json, live=not args.no_live)


def show_endpoints(data_dir: Path, *, as_json: bool, live: bool) -> int:
    """The table (or JSON); ``live`` adds each running instance's own sessions and speech backlog."""
    from bidistream.platform.app import STORE_FILE
    from bidistream.platform.store import Store

    path = Path(data_dir).expanduser() / STORE_FILE
    if not path.exists():
        print(f"bidistream endpoints: no store at {path} (start one with: bidistream run)", file=sys.stderr)
        return 1
    store = Store(path)
    try:
        rows = endpoint_rows(store)
        heartbeat = store.get_meta("heartbeat")
    finally:
        store.close()
    if live:
        add_live(rows)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(rows))
    age = time.time() - float(heartbeat) if heartbeat else None
    if age is None or age > 10:
        print("(no running gateway has refreshed this view recently: instances may be stopped)")
    return 0


def endpoint_rows(store: object) -> list[dict[str, object]]:
    from bidistream.platform.manager import plans_from_doc
    from bidistream.platform.store import Store

    assert isinstance(store, Store)
    records, instances = store.snapshot_all()  # one instant, even while a gateway writes
    rows: list[dict[str, object]] = []
    for record in records:
        for plan in plans_from_doc(record.doc):
            mine = [i for i in instances if i.endpoint == record.name and i.variant == plan.name]
            base = {
                "endpoint": record.name,
                "status": record.status,
                "variant": plan.name,
                "weight": plan.weight,
                "image": plan.image,
            }
            if not mine:
                rows.append({**base, "instance": "-", "state": "-", "url": "-", "sessions": 0, "restarts": 0})
            for inst in mine:
                rows.append(
                    {
                        **base,
                        "instance": inst.instance_id,
                        "state": inst.state,
                        "url": inst.base_url,
                        "sessions": inst.live_sessions,
                        "restarts": inst.restarts,
                    }
                )
        if not record.doc.get("deployment"):
            rows.append({"endpoint": record.name, "status": record.status})
    return rows


def add_live(rows: list[dict[str, object]]) -> None:
    """Ask each running instance's /metrics for its live sessions and largest speech backlog."""
    from concurrent.futures import ThreadPoolExecutor

    from bidistream.cli.ops import scrape_instance

    urls = [str(r["url"]) for r in rows if str(r.get("url", "-")).startswith("http")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip(urls, pool.map(scrape_instance, urls), strict=True))
    for row in rows:
        got = found.get(str(row.get("url", "")))
        if got is not None:
            row["sessions"] = int(got["sessions"])
            row["backlog_s"] = round(got["backlog_s"], 2)


def format_table(rows: list[dict[str, object]]) -> str:
    columns = [
        "endpoint",
        "status",
        "variant",
        "weight",
        "image",
        "instance",
        "state",
        "url",
        "sessions",
        "backlog_s",
        "restarts",
    ]
    if not rows:
        return "no endpoints (create one with boto3's create_endpoint, or run: bidistream run)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
