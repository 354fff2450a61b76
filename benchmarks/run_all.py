"""``make bench``: run every ``benchmarks/bench_*.py`` and summarise the ratios against the floor.

Convention for a bench module: it defines ``run() -> dict``, measures its own
floor in the same run (see ``benchmarks/floor.py``), writes its own
``benchmarks/results/<name>.json``, and returns a dict that may carry

- ``ratios``: ``{name: value}``, each a ratio against the floor;
- ``bars``: ``[{"name", "value", "limit", "unit", "passed"}]``, the issue's bars.

A module that raises is reported with its error and the run goes on, so one
broken bench never hides the others' numbers.  Exit status is 1 when any
module raised or any bar failed: ``make bench`` is not CI, but a failed bar
must not look like a success.

``python -m benchmarks.run_all container`` runs only ``bench_container``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import banner, describe, load_average

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover(only: Sequence[str] = ()) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in only}
        names = [n for n in names if n in wanted]
    return names


def run_one(name: str) -> dict[str, Any]:
    began = time.monotonic()
    load = load_average()
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        result = module.run()
        if not isinstance(result, dict):
            raise TypeError(f"{name}.run() returned {type(result).__name__}, not a dict")
    except Exception as exc:
        return {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "elapsed_s": round(time.monotonic() - began, 1),
        }
    bars = result.get("bars") or []
    failed = [b["name"] for b in bars if not b.get("passed")]
    return {
        "status": "fail" if failed else "pass",
        "ratios": result.get("ratios", {}),
        "figures": result.get("figures", {}),
        "bars": bars,
        "failed_bars": failed,
        "elapsed_s": round(time.monotonic() - began, 1),
        "loadavg": load,
    }


def summary_lines(outcomes: dict[str, dict[str, Any]], where: str | None = None) -> list[str]:
    lines = ["", "== bench summary (ratios against the floor measured in the same run) =="]
    lines.append(f"machine: {where or banner()}")
    for name, out in outcomes.items():
        if out["status"] == "error":
            lines.append(f"{name}: ERROR {out['error']}")
            continue
        # "x" only for unitless ratios; absolute figures print the unit they were measured in.
        shown = [f"{k} {v:.2f}x" for k, v in out["ratios"].items()]
        shown += [f"{k} {f['value']:g} {f['unit']}" for k, f in out.get("figures", {}).items()]
        load = out.get("loadavg")
        under = f" (load before {' '.join(f'{x:g}' for x in load)})" if load else ""
        lines.append(f"{name}: {out['status'].upper()} in {out['elapsed_s']} s{under}; {', '.join(shown)}")
        for bar in out["bars"]:
            verdict = "PASS" if bar.get("passed") else "FAIL"
            lines.append(
                f"  {verdict} {bar['name']}: {bar['value']:g} {bar.get('unit', '')} (bar ≤ {bar['limit']:g})"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    only = list(sys.argv[1:] if argv is None else argv)
    names = discover(only)
    if not names:
        print(f"no bench modules match {only or 'bench_*.py'}", file=sys.stderr)
        return 2
    outcomes: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"-- {name}", flush=True)
        outcomes[name] = run_one(name)
        if outcomes[name]["status"] == "error":
            print(outcomes[name]["traceback"], file=sys.stderr, flush=True)
    print("\n".join(summary_lines(outcomes)), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "machine": describe(),
        "modules": {n: {k: v for k, v in o.items() if k != "traceback"} for n, o in outcomes.items()},
    }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if all(o["status"] == "pass" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
