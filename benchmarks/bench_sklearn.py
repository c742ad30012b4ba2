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
import time

import numpy as np

from _common import median, table, verdict, write_json

BAR = 100.0


def planted_data(args) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark stores' planted data, in memory (same generator as write_planted_store)."""
    import tempfile
    from pathlib import Path

    from daskdict import open_store
    from daskdict.datasets import write_planted_store

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
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--sklearn-verbose", type=int, default=1)
    args = parser.parse_args()

    import daskdict
    from daskdict.evaluate import recovered_fraction

    y, planted = planted_data(args)
    print(f"data {y.shape} {y.dtype}", flush=True)

    # ------------------------------------------------------------------ daskdict
    walls, model = [], None
    for rep in range(args.daskdict_repeats + 1):  # the first fit warms numba's cache up
        start = time.perf_counter()
        model = daskdict.fit(y, n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                             n_iter=args.n_iter, random_state=0, progress=False)
        wall = time.perf_counter() - start
        if rep > 0 or args.daskdict_repeats == 0:
            walls.append(wall)
        print(f"daskdict fit {'(warm-up) ' if rep == 0 else ''}{wall:.2f} s", flush=True)
    dk_wall = median(walls)
    start = time.perf_counter()
    codes = model.encode(y)
    dk_err = rel_error(y, codes.to_dense() @ model.atoms.astype(np.float64))
    dk_encode = time.perf_counter() - start
    dk = {"wall_seconds": walls, "median_wall": dk_wall, "relative_error": dk_err,
          "train_relative_error": model.history[-1]["relative_error"],
          "encode_seconds": dk_encode,
          "recovered_fraction": recovered_fraction(planted, model.atoms),
          "history": model.history}
    print(f"daskdict: median fit {dk_wall:.2f} s, relative error {dk_err:.4f}", flush=True)
    payload = {"params": vars(args), "daskdict": dk, "sklearn": None, "ratio": None,
               "bar": BAR, "pass": None, "status": "sklearn running"}
    write_json("bench_sklearn", payload)

    # ------------------------------------------------------------------ scikit-learn
    if args.skip_sklearn:
        return
    import sklearn
    from sklearn.decomposition import MiniBatchDictionaryLearning

    est = MiniBatchDictionaryLearning(n_components=args.n_atoms, max_iter=args.sklearn_max_iter,
                                      transform_algorithm="omp",
                                      transform_n_nonzero_coefs=args.n_nonzero, random_state=0,
                                      verbose=args.sklearn_verbose)
    print(f"scikit-learn {sklearn.__version__}: fitting (max_iter={args.sklearn_max_iter}) ...",
          flush=True)
    start = time.perf_counter()
    est.fit(y)
    sk_wall = time.perf_counter() - start
    print(f"scikit-learn fit {sk_wall:.1f} s (n_iter_={est.n_iter_}, n_steps_={est.n_steps_})",
          flush=True)
    start = time.perf_counter()
    sk_codes = est.transform(y)
    sk_err = rel_error(y, sk_codes @ est.components_.astype(np.float64))
    sk_encode = time.perf_counter() - start
    sk_err_dk = daskdict_error(y, est.components_, args.n_nonzero)
    sk = {"version": sklearn.__version__, "wall_seconds": sk_wall, "n_iter_": int(est.n_iter_),
          "n_steps_": int(est.n_steps_), "relative_error": sk_err,
          "relative_error_daskdict_omp": sk_err_dk, "encode_seconds": sk_encode,
          "recovered_fraction": recovered_fraction(planted, est.components_)}
    ratio = sk_wall / dk_wall
    full = args.sklearn_max_iter == 10 and args.n_iter == 10
    print()
    table(["method", "fit s", "rel. error (OMP-10)", "rel. error (daskdict OMP)",
           "recovered %"],
          [["daskdict", dk_wall, dk_err, dk_err, 100 * dk["recovered_fraction"]],
           [f"sklearn MBDL (max_iter={args.sklearn_max_iter})", sk_wall, sk_err, sk_err_dk,
            100 * sk["recovered_fraction"]]],
          title=f"N={args.n_samples:,}, d={args.n_features}, K={args.n_atoms}, "
                f"L={args.n_nonzero}, {args.n_iter} daskdict iterations")
    table(["measure", "value", "bar", "result"],
          [["sklearn time / daskdict time", ratio, f">= {BAR:g}",
            verdict(ratio >= BAR) + ("" if full else " (not at full size)")]])
    payload.update(sklearn=sk, ratio=ratio, pass_=None, status="done", full_size=full)
    payload["pass"] = bool(ratio >= BAR) if full else None
    payload.pop("pass_")
    write_json("bench_sklearn", payload)


if __name__ == "__main__":
    main()
