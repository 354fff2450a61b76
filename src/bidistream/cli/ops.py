"""Operating commands: ``bidistream logs`` (an endpoint's instance logs) and ``bidistream top``.

``logs`` reads the files the platform writes per instance
(``<data dir>/logs/<endpoint>/<variant>-<suffix>.log``, the instance id being
``<endpoint>-<variant>-<suffix>``); ``--follow`` keeps printing what they
append, like ``tail -f`` over all of them.  ``top`` is ``bidistream endpoints
--watch``: the live table, refreshed, with each instance's live sessions and
speech backlog read from its own ``/metrics``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bidistream.cli.options import add_data_dir

__all__ = ["instance_logs", "register", "scrape_instance", "watch"]

# How often --follow looks for new lines, and how long one /metrics scrape may take.
FOLLOW_INTERVAL = 0.5
SCRAPE_TIMEOUT = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser(
        "logs",
        help="print an endpoint's instance logs",
        description="Print the log files of an endpoint's instances (every session, invocation and "
        "error the model server logged), each line prefixed with its instance id.",
    )
    logs.add_argument("endpoint")
    logs.add_argument("--instance", default=None, metavar="ID", help="only this instance")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n", "--lines", type=int, default=None, metavar="N", help="only the last N lines of each"
    )
    add_data_dir(logs)
    logs.set_defaults(handler=_logs)

    top = sub.add_parser(
        "top",
        help="the endpoints table, refreshed: live sessions and speech backlog per instance",
        description="bidistream endpoints --watch: one row per instance, refreshed every INTERVAL seconds.",
    )
    add_data_dir(top)
    top.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    top.set_defaults(handler=_top)


def instance_logs(data_dir: Path, endpoint: str, instance: str | None = None) -> dict[str, Path]:
    """Instance id → log file, for one endpoint (oldest first)."""
    folder = Path(data_dir) / "logs" / endpoint
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime):
        iid = f"{endpoint}-{path.stem}"
        if instance is None or instance == iid:
            out[iid] = path
    return out


def _logs(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).expanduser()
    files = instance_logs(data, args.endpoint, args.instance)
    if not files:
        what = f"instance {args.instance}" if args.instance else f"endpoint {args.endpoint}"
        print(f"bidistream logs: no log for {what} under {data / 'logs' / args.endpoint}", file=sys.stderr)
        return 1
    offsets: dict[Path, int] = {}
    for iid, path in files.items():
        lines = path.read_text("utf-8", "replace").splitlines()
        if args.lines is not None:
            lines = lines[-args.lines :]
        for line in lines:
            print(f"{iid} | {line}")
        offsets[path] = path.stat().st_size
    sys.stdout.flush()
    if not args.follow:
        return 0
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            for iid, path in instance_logs(data, args.endpoint, args.instance).items():
                size = path.stat().st_size
                start = offsets.get(path, 0)
                if size > start:
                    with path.open("rb") as fh:
                        fh.seek(start)
                        chunk = fh.read(size - start)
                    # Print whole lines only; a partial last line waits for its end.
                    text, _, _rest = chunk.rpartition(b"\n")
                    if text or chunk.endswith(b"\n"):
                        for line in text.decode("utf-8", "replace").splitlines():
                            print(f"{iid} | {line}")
                        offsets[path] = start + len(text) + 1
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return 0


def scrape_instance(base_url: str, timeout: float = SCRAPE_TIMEOUT) -> dict[str, float] | None:
    """Live sessions and the largest speech backlog an instance reports on its ``/metrics``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    sessions = 0.0
    backlog = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name == "bidistream_container_sessions_active":
            sessions += sum(s.value for s in fam.samples)
        elif fam.name == "bidistream_speech_backlog_seconds":
            backlog = max([backlog, *(s.value for s in fam.samples)])
    return {"sessions": sessions, "backlog_s": backlog}


def _top(args: argparse.Namespace) -> int:
    return watch(Path(args.data_dir), args.interval)


def watch(data_dir: Path, interval: float) -> int:
    from bidistream.cli.run import show_endpoints

    try:
        while True:
            sys.stdout.write("\x1b[H\x1b[2J")
            print(time.strftime("%H:%M:%S"), f"(every {interval:g} s, Ctrl-C stops)")
            code = show_endpoints(data_dir, as_json=False, live=True)
            sys.stdout.flush()
            if code:
                return code
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
