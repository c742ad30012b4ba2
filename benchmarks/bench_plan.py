"""The scaling model of ``daskdict plan`` against measured fits, at 1 and 2 workers.

A planted store of N=1,000,000 x 768 float32 rows (3072 atoms, 10 non-zeros, 20 dB) is written
under --workdir (kept with --keep; reused when it is there). For each worker count W:

1. a LocalCluster of W single-threaded workers is started;
2. ``daskdict.plan(store, n_samples=N, n_workers=W, update=U, client=cluster)`` calibrates on
   it (a few seconds) and predicts the time per iteration and the memory per worker;
3. ``daskdict.fit(store, n_iter=R, update=U, client=cluster)`` runs; the measured time per
   iteration is the median of ``history[i]["seconds"]`` over iterations 2..R, and the measured
   memory the workers' peak resident set (``getrusage`` in each worker).

The update U (--update, default "auto": the method of optimal directions up to 4,096 atoms,
with its code Gram matrix in every share's statistics) is the same for the plan and the fit.

Bar: the prediction for N=1,000,000 on 2 workers is within 25 % of the measurement.

    python benchmarks/bench_plan.py                      # N=1,000,000, R=3 (~10 min)
    python benchmarks/bench_plan.py --n-samples 200000   # quicker
    python benchmarks/bench_plan.py --update approx      # the power-step update
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from _common import median, table, verdict, write_json


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--update", choices=("auto", "mod", "approx"), default="auto",
                        help="the update of the plan and the fit (default auto)")
    parser.add_argument("--workdir", default="/tmp/daskdict-bench-plan")
    parser.add_argument("--keep", action="store_true", help="keep the store for another run")
    args = parser.parse_args()

    from distributed import Client

    import daskdict
    from daskdict.datasets.planted import write_planted_store
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / f"planted-{args.n_samples}x{args.n_features}-k{args.n_atoms}.zarr"
    if not store.exists():
        print(f"writing {store} …", flush=True)
        begin = time.perf_counter()
        write_planted_store(store, args.n_samples, args.n_features, args.n_atoms,
                            args.n_nonzero, 20.0, random_state=0)
        print(f"  {time.perf_counter() - begin:.0f} s", flush=True)

    rows, results = [], []
    try:
        for n_workers in args.workers:
            with daskdict.cluster("local", jobs=n_workers) as cluster, Client(cluster) as client:
                begin = time.perf_counter()
                prediction = daskdict.plan(store, n_samples=args.n_samples,
                                           n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                                           n_workers=n_workers, update=args.update,
                                           client=cluster)
                t_plan = time.perf_counter() - begin
                model = daskdict.fit(store, n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                                     n_iter=args.n_iter, update=args.update, random_state=0,
                                     client=cluster, verbose=False)
                measured = median([h["seconds"] for h in model.history[1:]])
                memory = max(client.run(_peak_rss).values())
            ratio = prediction.seconds_per_iteration / measured
            if model.params["update"] != prediction.update:
                raise SystemExit(f"the plan modelled {prediction.update!r}, the fit used "
                                 f"{model.params['update']!r}")
            results.append({"n_workers": n_workers, "update": prediction.update,
                            "plan_seconds": t_plan,
                            "predicted_s_per_iter": prediction.seconds_per_iteration,
                            "measured_s_per_iter": measured, "ratio": ratio,
                            "iteration_seconds": [h["seconds"] for h in model.history],
                            "predicted_memory_per_worker": prediction.memory_per_worker_bytes,
                            "measured_memory_per_worker": memory,
                            "calibration": prediction.calibration})
            bar = "within 25 %" if n_workers == 2 else ""
            rows.append([n_workers, f"{t_plan:.1f}", f"{prediction.seconds_per_iteration:.1f}",
                         f"{measured:.1f}", f"{ratio:.3f}",
                         f"{prediction.memory_per_worker_bytes / 2**30:.2f}",
                         f"{memory / 2**30:.2f}", bar,
                         verdict(abs(ratio - 1) <= 0.25) if bar else ""])
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(["workers", "plan s", "predicted s/iter", "measured s/iter", "pred/meas",
                 "predicted GiB/worker", "measured GiB/worker", "bar", "result"], rows,
                title=f"daskdict plan against fits, N={args.n_samples:,}, d={args.n_features}, "
                      f"K={args.n_atoms}, L={args.n_nonzero}, update "
                      f"{results[0]['update'] if results else args.update}"))
    if results:
        prediction_400m = daskdict.plan(
            None, n_features=args.n_features, n_samples=400_000_000, n_atoms=args.n_atoms,
            n_nonzero=args.n_nonzero, n_workers=64, threads_per_worker=16, update=args.update)
        print("the concept paper's scale (400M rows), calibrated here:",
              prediction_400m.summary())
        results.append({"paper_scale": prediction_400m.to_dict()})
    path = write_json("bench_plan", {"args": vars(args), "results": results})
    print(f"results written to {path}")
    if np.isnan([r.get("ratio", 1.0) for r in results]).any():
        raise SystemExit(1)


if __name__ == "__main__":
    main()
