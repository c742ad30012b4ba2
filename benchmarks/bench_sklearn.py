"""daskdict against scikit-learn's MiniBatchDictionaryLearning on the same planted data.

N=10,000 rows of planted data (d=768, 3072 atoms, 10 non-zeros, 20 dB), in memory (float32).
Both learn 3072 atoms in 10 iterations:

* ``daskdict.fit(Y, n_atoms=3072, n_nonzero=10, n_iter=10, random_state=0)`` (in process,
  threads; median wall time of --daskdict-repeats fits);
* ``MiniBatchDictionaryLearning(n_components=3072, max_iter=10, transform_algorithm="omp",
  transform_n_nonzero_coefs=10, random_state=0)`` (one fit; its own default fit algorithm).

Both dictionaries are scored the same way: encode Y with OMP at 10 non-zeros over the learned
dictionary (scikit-learn: ``transform``; daskdict: ``model.encode(Y)``, then
``codes.to_dense() @ atoms``) and report ||Y - X D||_F / ||Y||_F. As a cross-check, the
scikit-learn dictionary is also encoded with daskdict's Batch-OMP.

Bar: scikit-learn wall time / daskdict wall time >= 100.

scikit-learn takes tens of minutes at full size: use --sklearn-max-iter 1 for a quick trial
(the ratio is then against a shorter scikit-learn fit and is marked so). The JSON is written
after the daskdict part and again at the end.

    python benchmarks/bench_sklearn.py
    nohup python benchmarks/bench_sklearn.py > /tmp/bench_sklearn.log 2>&1 &
    python benchmarks/bench_sklearn.py --sklearn-max-iter 1 --n-samples 4000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from _common import median, table, verdict, wait_until_idle, write_json

BAR = 100.0


def planted_data(args) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark stores' planted data, in memory (same generator as write_planted_store)."""
    import tempfile
    from pathlib import Path

    from daskdict import open_store
    from daskdict.datasets.planted import write_planted_store

    with tempfile.TemporaryDirectory(prefix="daskdict-bench-sklearn-", dir="/tmp") as tmp:
        path = Path(tmp) / "planted.zarr"
        write_planted_store(path, args.n_samples, args.n_features, args.n_atoms,
                            args.n_nonzero, args.snr, random_state=0)
        store = open_store(path)
        y = np.asarray(store.layer_array("final")[...], dtype=np.float32)
        atoms = np.asarray(store.group["planted/atoms"][...])
    return y, atoms


def rel_error(y, reconstruction) -> float:
    y = np.asarray(y, dtype=np.float64)
    return float(np.linalg.norm(y - np.asarray(reconstruction, dtype=np.float64))
                 / np.linalg.norm(y))


def daskdict_error(y, atoms, n_nonzero) -> float:
    from daskdict import Dictionary

    atoms = np.asarray(atoms, dtype=np.float32)
    norms = np.linalg.norm(atoms, axis=1, keepdims=True)
    model = Dictionary(atoms / np.where(norms > 0, norms, 1),
                       params={"n_nonzero": n_nonzero, "dtype": "float32"})
    codes = model.encode(y)
    return rel_error(y, codes.to_dense() @ model.atoms.astype(np.float64))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=10_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--n-iter", type=int, default=10, help="daskdict iterations")
    parser.add_argument("--sklearn-max-iter", type=int, default=10,
                        help="MiniBatchDictionaryLearning max_iter (epochs); 10 = the bar's")
    parser.add_argument("--daskdict-repeats", type=int, default=3)
    parser.add_argument("--sklearn-no-early-stopping", action="store_true",
                        help="max_no_improvement=None, tol=0: run all max_iter epochs (by "
                             "default scikit-learn stops when its smoothed cost stalls); "
                             "results go to bench_sklearn-no-early-stopping.json")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--no-split-check", dest="split_check", action="store_false",
                        help="skip the diagnostic fit with the rows split over the cores")
    parser.add_argument("--sklearn-verbose", type=int, default=1)
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="wait up to this many seconds for other processes to leave the "
                             "CPU before timing")
    args = parser.parse_args()
    # scikit-learn's verbose progress uses print(); flush it line by line into a nohup log
    sys.stdout.reconfigure(line_buffering=True)

    import daskdict
    from daskdict.evaluation.metrics import recovered_fraction
    from daskdict.io.reads import as_dask_array

    name = "bench_sklearn" + ("-no-early-stopping" if args.sklearn_no_early_stopping else "")
    y, planted = planted_data(args)
    print(f"data {y.shape} {y.dtype}", flush=True)

    # ------------------------------------------------------------------ daskdict
    wait_until_idle(max_wait=args.wait_idle)
    walls, model = [], None
    for rep in range(args.daskdict_repeats + 1):  # the first fit warms numba's cache up
        start = time.perf_counter()
        model = daskdict.fit(y, n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                             n_iter=args.n_iter, random_state=0, verbose=False)
        wall = time.perf_counter() - start
        if rep > 0 or args.daskdict_repeats == 0:
            walls.append(wall)
        print(f"daskdict fit {'(warm-up) ' if rep == 0 else ''}{wall:.2f} s", flush=True)
    dk_wall = median(walls)
    # diagnostic: the same fit with the rows split over the cores (an in-memory array of up to
    # ~32 MiB is one chunk, so the in-process fit above computes on one thread)
    split_walls = []
    if args.split_check:
        import dask.array as da

        from daskdict.compute.runtime import n_cores

        rows = -(-y.shape[0] // n_cores())
        for _ in range(max(1, args.daskdict_repeats)):
            start = time.perf_counter()
            daskdict.fit(da.from_array(y, chunks=(rows, -1)), n_atoms=args.n_atoms,
                         n_nonzero=args.n_nonzero, n_iter=args.n_iter, random_state=0,
                         client="threads", verbose=False)
            split_walls.append(time.perf_counter() - start)
        print(f"daskdict fit, rows split in {n_cores()} chunks (diagnostic): median "
              f"{median(split_walls):.2f} s", flush=True)
    start = time.perf_counter()
    codes = model.encode(y)
    dk_err = rel_error(y, codes.to_dense() @ model.atoms.astype(np.float64))
    dk_encode = time.perf_counter() - start
    dk = {"wall_seconds": walls, "median_wall": dk_wall, "relative_error": dk_err,
          "train_relative_error": model.history[-1]["relative_error"],
          "encode_seconds": dk_encode, "n_chunks": as_dask_array(y)[0].numblocks[0],
          "split_over_cores_wall_seconds": split_walls,
          "split_over_cores_median_wall": median(split_walls) if split_walls else None,
          "recovered_fraction": recovered_fraction(planted, model.atoms),
          "history": model.history}
    print(f"daskdict: median fit {dk_wall:.2f} s, relative error {dk_err:.4f}", flush=True)
    payload = {"params": vars(args), "daskdict": dk, "sklearn": None, "ratio": None,
               "bar": BAR, "pass": None, "status": "sklearn running"}
    write_json(name, payload)

    # ------------------------------------------------------------------ scikit-learn
    if args.skip_sklearn:
        return
    import sklearn
    from sklearn.decomposition import MiniBatchDictionaryLearning

    est = MiniBatchDictionaryLearning(n_components=args.n_atoms, max_iter=args.sklearn_max_iter,
                                      transform_algorithm="omp",
                                      transform_n_nonzero_coefs=args.n_nonzero, random_state=0,
                                      verbose=args.sklearn_verbose,
                                      **({"max_no_improvement": None, "tol": 0.0}
                                         if args.sklearn_no_early_stopping else {}))
    print(f"scikit-learn {sklearn.__version__}: fitting (max_iter={args.sklearn_max_iter}) ...",
          flush=True)
    start, cpu_start = time.perf_counter(), os.times()
    est.fit(y)
    sk_wall = time.perf_counter() - start
    cpu_end = os.times()
    sk_cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    print(f"scikit-learn fit {sk_wall:.1f} s, {sk_cpu:.0f} CPU s (n_iter_={est.n_iter_}, "
          f"n_steps_={est.n_steps_})", flush=True)
    if est.n_iter_ < args.sklearn_max_iter:
        print(f"NOTE: scikit-learn stopped early, after {est.n_iter_:g} of "
              f"{args.sklearn_max_iter} epochs (its default early stopping); "
              "--sklearn-no-early-stopping runs them all", flush=True)
    start = time.perf_counter()
    sk_codes = est.transform(y)
    sk_err = rel_error(y, sk_codes @ est.components_.astype(np.float64))
    sk_encode = time.perf_counter() - start
    sk_err_dk = daskdict_error(y, est.components_, args.n_nonzero)
    sk = {"version": sklearn.__version__, "wall_seconds": sk_wall, "cpu_seconds": sk_cpu,
          "early_stopping": not args.sklearn_no_early_stopping,
          "stopped_early": bool(est.n_iter_ < args.sklearn_max_iter),
          "n_iter_": int(est.n_iter_),
          "n_steps_": int(est.n_steps_), "relative_error": sk_err,
          "relative_error_daskdict_omp": sk_err_dk, "encode_seconds": sk_encode,
          "recovered_fraction": recovered_fraction(planted, est.components_)}
    ratio = sk_wall / dk_wall
    full = args.sklearn_max_iter == 10 and args.n_iter == 10 and args.n_samples == 10_000
    print()
    table(["method", "fit s", f"rel. error (own OMP-{args.n_nonzero})",
           "rel. error (daskdict OMP)", "recovered %"],
          [["daskdict", dk_wall, dk_err, dk_err, 100 * dk["recovered_fraction"]],
           [f"sklearn MBDL (max_iter={args.sklearn_max_iter})", sk_wall, sk_err, sk_err_dk,
            100 * sk["recovered_fraction"]]]
          + ([["daskdict, rows split over cores (diagnostic)", median(split_walls), "", "",
               ""]] if split_walls else []),
          title=f"N={args.n_samples:,}, d={args.n_features}, K={args.n_atoms}, "
                f"L={args.n_nonzero}, {args.n_iter} daskdict iterations")
    table(["measure", "value", "bar", "result"],
          [["sklearn time / daskdict time", ratio, f">= {BAR:g}",
            verdict(ratio >= BAR) + ("" if full else " (not at full size)")]]
          + ([["sklearn time / daskdict (split) time", sk_wall / median(split_walls), "", ""]]
             if split_walls else []))
    payload.update(sklearn=sk, ratio=ratio, status="done", full_size=full)
    payload["pass"] = bool(ratio >= BAR) if full else None
    write_json(name, payload)


if __name__ == "__main__":
    main()
