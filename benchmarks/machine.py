"""What machine a figure was measured on: CPU model, core count and load, printed beside every figure.

Others rerun these benchmarks on another machine of the same kind; a number without the CPU and
the load it was taken under cannot be compared with theirs.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["banner", "cpu_model", "describe", "load_average"]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded for a report."""
    return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "loadavg": load_average(),
        "python": platform.python_version(),
    }


def banner(info: dict[str, Any] | None = None) -> str:
    """One line: ``Intel(R) Xeon(R) ... x2, load 0.41 0.35 0.30``."""
    info = info or describe()
    load = " ".join(f"{x:g}" for x in info.get("loadavg") or load_average())
    return f"{info.get('cpu_model') or cpu_model()} x{info.get('cpus') or os.cpu_count()}, load {load}"
