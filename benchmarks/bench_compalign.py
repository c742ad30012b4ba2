"""CompAlign (Balasubramanian, Basu and Feizi 2024): recovery of planted maps, and memory.

(a) Recovery. ``make_aligned_components(20000, 12, 64, 64, snr_db=20, random_state=0)``: 12
Gaussian components of different scales and covariances, target = sum_i R_i c_i + noise with
every R_i orthogonal. CompAlign with its defaults against the paper's two ablations (one shared
map; penalty 0), and, for reference, the paper's lambda = 1/768; all fit with
``random_state=1``. Recovery: mean over components and rows of |cos| between matching rows of
F_i and R_i (the loss does not see the scale of the aligned sum, so directions are compared).
Also the mean cosine distance of the aligned sum to the target (``1 - score``) and the fit time.

(b) Memory. The same planted data at N and 4N rows written as two stores on disk (the
components, as ``daskdict.decompose`` writes them, chunked by 4096 rows, and a target store),
then ``CompAlign(random_state=1).fit(components_store, target_store)`` in a fresh subprocess
per size; its peak RSS (``VmHWM``, else ``ru_maxrss``), how far the fit raised
it above the peak of the imports and the opening of the stores, and the peak of the memory the
fit allocated (``tracemalloc``, which NumPy reports its arrays to). The stores live under a
temporary folder, removed at the end.

Bars: (a) CompAlign recovery >= 0.95 and no ablation above it; (b) peak(4N) <= 1.25 x peak(N).

    python benchmarks/bench_compalign.py                  # about 2 minutes
    python benchmarks/bench_compalign.py --memory-rows 10000 --skip-recovery   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _common import table, verdict, write_json

RECOVERY_BAR = 0.95
MEMORY_BAR = 1.25
CHUNK_ROWS = 4096  # the row chunks of a store that daskdict.decompose writes


def recovery(maps: np.ndarray, true: np.ndarray) -> float:
    """Mean over maps and rows of |cos| between matching rows of ``maps`` and ``true``."""
    a = maps / np.linalg.norm(maps, axis=2, keepdims=True)
    b = true / np.linalg.norm(true, axis=2, keepdims=True)
    return float(np.abs(np.sum(a * b, axis=2)).mean())


def run_recovery(args) -> dict:
    from daskdict.datasets.components import make_aligned_components
    from daskdict.decomposition.align import CompAlign

    components, target, true = make_aligned_components(
        args.rows, args.components, args.width, args.width, args.snr, random_state=0)
    variants = {"CompAlign": {}, "shared map (ablation)": {"shared": True},
                "penalty 0 (ablation)": {"penalty": 0.0},
                "CompAlign, paper's lambda 1/768": {"penalty": 1 / 768}}
    results = {}
    for name, params in variants.items():
        start = time.perf_counter()
        model = CompAlign(random_state=1, verbose=False, **params).fit(components, target)
        seconds = time.perf_counter() - start
        results[name] = {
            "params": {k: float(v) if isinstance(v, float) else v for k, v in params.items()},
            "recovery": recovery(model.maps_, true),
            "cosine_distance": 1.0 - model.score(components, target),
            "orthogonality": model.history_[-1]["orthogonality"], "fit_seconds": seconds}
    table(["variant", "recovery", "cos distance", "sum ||F^T F - I||", "fit s"],
          [[name, r["recovery"], r["cosine_distance"], r["orthogonality"], r["fit_seconds"]]
           for name, r in results.items()],
          title=f"(a) recovery of the planted maps ({args.rows:,} rows, {args.components} "
                f"components, d = D = {args.width}, {args.snr:g} dB)")
    best = results["CompAlign"]["recovery"]
    ok = best >= RECOVERY_BAR and all(
        r["recovery"] <= best for n, r in results.items() if "ablation" in n)
    print(f"bar: CompAlign >= {RECOVERY_BAR} and no ablation above it: {verdict(ok)}")
    return {"variants": results, "pass": ok}


def write_stores(root: Path, n_rows: int, args) -> None:
    import daskdict
    from daskdict.datasets.components import make_aligned_components

    components, target, true = make_aligned_components(
        n_rows, args.components, args.width, args.width, args.snr, random_state=0)
    folder = root / str(n_rows)
    daskdict.create_store(folder / "components.zarr",
                          {"final": sum(components.values()), **components},
                          chunk_rows=CHUNK_ROWS,
                          attrs={"decomposition": {"components": list(components)}})
    daskdict.create_store(folder / "target.zarr", {"final": target}, chunk_rows=CHUNK_ROWS)
    np.save(folder / "maps.npy", true)


def max_rss() -> int:
    """Peak resident memory of this process so far, in bytes.

    Linux's ``VmHWM`` where there is one: ``ru_maxrss`` survives ``exec`` and so counts the
    parent's pages that a forked child held before it (here, the planted data).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def single(args) -> None:
    """In a fresh subprocess: one out-of-core fit, its result as JSON on the last line."""
    import daskdict
    from daskdict.decomposition.align import CompAlign

    folder = Path(args.root) / str(args.single)
    parts = daskdict.open_store(folder / "components.zarr")
    target = daskdict.open_store(folder / "target.zarr")
    baseline = max_rss()
    tracemalloc.start()
    start = time.perf_counter()
    model = CompAlign(random_state=1, verbose=False).fit(parts, target)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = max_rss()
    result = {"n_rows": args.single, "peak_bytes": peak, "baseline_bytes": baseline,
              "fit_bytes": peak - baseline, "traced_peak_bytes": traced, "seconds": seconds,
              "recovery": recovery(model.maps_, np.load(folder / "maps.npy")),
              "alignment": model.alignment_,
              "data_bytes": sum(parts.layer_array(n).nbytes for n in parts.layer_names)
              + target.layer_array().nbytes}
    print("RESULT " + json.dumps(result), flush=True)


def run_memory(args) -> dict:
    sizes = [args.memory_rows, 4 * args.memory_rows]
    root = Path(tempfile.mkdtemp(prefix="daskdict-compalign-"))
    results = {}
    try:
        for n in sizes:
            start = time.perf_counter()
            write_stores(root, n, args)
            print(f"wrote the stores of {n:,} rows in {time.perf_counter() - start:.0f} s",
                  flush=True)
        for n in sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--single", str(n), "--root",
                   str(root), "--components", str(args.components), "--width", str(args.width)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"the fit of {n} rows failed: {proc.stderr[-3000:]}")
            results[n] = json.loads(lines[-1][len("RESULT "):])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mib = 2**20
    table(["rows", "data MiB", "peak RSS MiB", "fit raised it MiB", "fit allocated MiB",
           "fit s", "recovery"],
          [[f"{n:,}", r["data_bytes"] / mib, r["peak_bytes"] / mib, r["fit_bytes"] / mib,
            r["traced_peak_bytes"] / mib, r["seconds"], r["recovery"]]
           for n, r in results.items()],
          title="(b) peak memory of an out-of-core fit from stores on disk")
    small, large = (results[n] for n in sizes)
    ratio = large["peak_bytes"] / small["peak_bytes"]
    traced_ratio = large["traced_peak_bytes"] / small["traced_peak_bytes"]
    ok = ratio <= MEMORY_BAR
    print(f"peak(4N) / peak(N) = {ratio:.3f} (bar <= {MEMORY_BAR}): {verdict(ok)}; the fit's "
          f"allocations: {traced_ratio:.3f}")
    return {"sizes": sizes, "chunk_rows": CHUNK_ROWS, "runs": {str(n): r
                                                               for n, r in results.items()},
            "ratio": ratio, "traced_ratio": traced_ratio, "pass": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000, help="rows of the recovery test")
    parser.add_argument("--components", type=int, default=12)
    parser.add_argument("--width", type=int, default=64, help="d and D")
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--memory-rows", type=int, default=25000,
                        help="N of the memory test (also run at 4N)")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        single(args)
        return
    payload = {"args": vars(args)}
    if not args.skip_recovery:
        payload["recovery"] = run_recovery(args)
    if not args.skip_memory:
        payload["memory"] = run_memory(args)
    write_json("bench_compalign", payload)


if __name__ == "__main__":
    main()
