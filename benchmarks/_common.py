"""Helpers shared by the benchmark scripts (tables, JSON results, environment)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    """Versions and machine facts recorded with every result."""
    import dask
    import distributed
    import numba
    import numpy as np
    import zarr

    import daskdict

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    return {
        **_git_state(),
        "daskdict": daskdict.__version__, "numpy": np.__version__, "dask": dask.__version__,
        "distributed": distributed.__version__, "zarr": zarr.__version__,
        "numba": numba.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cores": cores,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg": list(os.getloadavg()),
    }


def _git_state() -> dict:
    """The commit of the checkout and whether the package differs from it (read-only git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "daskdict"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        return {"git_commit": commit or None,
                "package_modified_files": [ln[3:] for ln in dirty if ln.strip()]}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "package_modified_files": None}


def write_json(name: str, payload: dict) -> Path:
    """Write benchmarks/results/NAME.json and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nresults written to {path}")
    return path


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A plain-text table (right-aligned numbers), printed and returned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def median(values) -> float:
    return float(statistics.median(values))


def timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def busy_percent(seconds: float = 2.0) -> float:
    """System-wide CPU use (%) over ``seconds`` (other processes share this machine)."""
    import psutil

    return float(psutil.cpu_percent(interval=seconds))


def wait_until_idle(threshold: float = 15.0, max_wait: float = 120.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine's CPU use is below ``threshold`` %.

    Returns the last reading; prints a warning when the machine stayed busy, since other
    processes on the same cores distort every timing.
    """
    start = time.perf_counter()
    busy = busy_percent()
    while busy > threshold and time.perf_counter() - start < max_wait:
        print(f"machine busy ({busy:.0f} % CPU by other processes); waiting ...", flush=True)
        busy = busy_percent(5.0)
    if busy > threshold:
        print(f"WARNING: the machine is busy ({busy:.0f} % CPU); timings are unreliable",
              flush=True)
    return busy
