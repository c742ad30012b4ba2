"""Time to quality: daskdict against every peer on the same planted data, in one run.

Planted data (``make_planted``, random_state=0): N=20,000 rows, d=768, 1,024 atoms, 10
non-zeros, 20 dB, float32, in memory. Every method learns 1,024 atoms with its own default
recipe, and its dictionary is scored by the relative error ``||Y - X D||_F / ||Y||_F`` of
OMP codes with 10 non-zeros over it, on the training data Y itself, against wall seconds:

* daskdict: ``daskdict.fit(Y, n_atoms=1024, n_nonzero=10, n_iter=--daskdict-iter,
  client="threads")`` (its default update), one call. The dictionary after iteration t exists
  at ``setup + sum of history[:t] seconds``, where setup = (wall time of the whole call) -
  (sum of the iterations' seconds): all the call's overhead outside its iterations (reading,
  validation, initial atoms, teardown) is charged before the first iteration, so every point
  is at or after the time it really existed. Its error is iteration t+1's recorded
  ``relative_error`` (the Batch-OMP codes, 10 non-zeros, of all rows over that dictionary);
  the last dictionary's is measured after the call (untimed) with ``Dictionary.encode``.
* dictlearn AK-SVD (``DictionaryLearning(fit_algorithm="aksvd", n_nonzero_coefs=10)``): it
  has no callback, so each point is its own call with max_iter = 1, 2, 4, 8, ..., timed from
  call to return.
* scikit-learn ``MiniBatchDictionaryLearning(transform_algorithm="omp",
  transform_n_nonzero_coefs=10, batch_size=256)``, alpha = a tenth of the median row norm (as
  benchmarks/_real_methods.fit_sklearn: with alpha=1 every lasso code of these rows is zero):
  each point its own call with max_iter (epochs) = 1, 2, 4, ..., timed from call to return.
* A TopK sparse autoencoder (k=10; the architecture of benchmarks/_real_methods.fit_sae:
  pre-bias, linear + ReLU encoder keeping the top k, unit-norm decoder rows, Adam lr 1e-3,
  batches of 256, torch's default threads): one training run, a point after every epoch at the
  training time so far (the error evaluation between epochs is off the clock). It trains until
  its budget (evaluations included) is spent, without the early stop of _real_methods (0.1 %
  an epoch), which ends it on a slow plateau far above the levels here. Its error is its own
  reconstruction (encoder top-10 codes @ decoder + pre-bias): an autoencoder codes with its
  encoder, not OMP.

The dictionaries of dictlearn and scikit-learn are coded the same way as daskdict's own final
one: daskdict's Batch-OMP (``Dictionary.encode``, 10 non-zeros), untimed.

Budget (--budget seconds, per method and run): a further call (dictlearn, scikit-learn) is
started only if its predicted time (the previous call's x the ratio of iterations) fits in what
is left of the budget; the first call always runs and counts. The SAE stops at the first epoch
end past the budget, counting its wall time with the evaluations. Every method is warmed up
once on a tiny problem before the timed runs (numba compilation, imports). Run r (0, 1, ...)
seeds every method with random_state=r; the data are the same in every run.

The comparison runs --runs times (3; methods in rotating order). Reported: the seconds each
method needs to first reach relative errors 0.6, 0.5, 0.4, 0.3, 0.2 (median over runs; a run
that never reaches a level counts as infinite, and "-" means the median is infinite), a plot of
error against seconds (log x), and the verdict "daskdict first to every error level any peer
reaches": PASS when, at every level that some peer reaches, daskdict's median seconds are
below every peer's.

The machine is shared: other processes on its cores slow every method (the load is recorded
per run). The JSON is written after every run.

    python benchmarks/bench_peers.py --quick          # N=4,000, d=128, 256 atoms, 1 run
    python benchmarks/bench_peers.py                  # the default: about 25 min on 2 cores
    nohup python benchmarks/bench_peers.py > /tmp/bench_peers.log 2>&1 &
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from _common import RESULTS, median, table, verdict, wait_until_idle, write_json
from _real_methods import relative_error

LEVELS = (0.6, 0.5, 0.4, 0.3, 0.2)
METHODS = ("daskdict", "dictlearn-aksvd", "sklearn-mbdl", "topk-sae")
FULL = {"n_samples": 20_000, "n_features": 768, "n_atoms": 1024, "runs": 3, "budget": 150.0}
QUICK = {"n_samples": 4_000, "n_features": 128, "n_atoms": 256, "runs": 1, "budget": 20.0}


def omp_error(y: np.ndarray, atoms: np.ndarray, n_nonzero: int) -> float:
    """Relative error of daskdict's Batch-OMP codes (``n_nonzero`` per row) of ``y`` over
    ``atoms`` (rows, normalised here), shape (n_samples, n_features) and (n_atoms, n_features).
    """
    from daskdict import Dictionary

    atoms = np.asarray(atoms, dtype=np.float32)
    norms = np.linalg.norm(atoms, axis=1, keepdims=True)
    model = Dictionary(atoms / np.where(norms > 0, norms, 1),
                       params={"n_nonzero": n_nonzero, "dtype": "float32"})
    return relative_error(y, model.reconstruct(model.encode(y, client="threads")))


def run_daskdict(y, args, seed, budget) -> dict:
    """One fit; its points from the history (see the module docstring)."""
    import daskdict

    start = time.perf_counter()
    model = daskdict.fit(y, n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                         n_iter=args.daskdict_iter, random_state=seed, client="threads",
                         verbose=False)
    wall = time.perf_counter() - start
    seconds = np.array([h["seconds"] for h in model.history])
    setup = wall - float(seconds.sum())
    ends = setup + np.concatenate([[0.0], np.cumsum(seconds)])
    errors = [h["relative_error"] for h in model.history]
    errors.append(omp_error(y, model.atoms, args.n_nonzero))
    return {"seconds": ends.tolist(), "errors": errors, "calls": [args.daskdict_iter],
            "wall": wall, "setup_seconds": setup}


def doubling(fit_one, y, args, budget) -> dict:
    """Calls of ``fit_one(max_iter) -> atoms`` with max_iter = 1, 2, 4, ..., each timed from
    call to return, while the next predicted time fits in the budget."""
    points, calls, spent, n_iter = [], [], 0.0, 1
    while True:
        start = time.perf_counter()
        atoms = fit_one(n_iter)
        wall = time.perf_counter() - start
        spent += wall
        points.append((wall, omp_error(y, atoms, args.n_nonzero)))
        calls.append(n_iter)
        print(f"    max_iter={n_iter}: {wall:.1f} s, error {points[-1][1]:.4f}", flush=True)
        if spent + 2 * wall > budget:
            break
        n_iter *= 2
    return {"seconds": [p[0] for p in points], "errors": [p[1] for p in points],
            "calls": calls, "wall": spent}


def run_aksvd(y, args, seed, budget) -> dict:
    from dictlearn import DictionaryLearning

    def fit_one(max_iter):
        return DictionaryLearning(n_components=args.n_atoms, fit_algorithm="aksvd",
                                  n_nonzero_coefs=args.n_nonzero, max_iter=max_iter,
                                  random_state=seed).fit(y).components_

    return doubling(fit_one, y, args, budget)


def run_sklearn(y, args, seed, budget) -> dict:
    from sklearn.decomposition import MiniBatchDictionaryLearning

    def fit_one(max_iter):
        # the lasso penalty as in _real_methods.fit_sklearn, computed inside the timed call
        alpha = 0.1 * float(np.median(np.linalg.norm(y, axis=1)))
        return MiniBatchDictionaryLearning(
            n_components=args.n_atoms, alpha=alpha, batch_size=256, max_iter=max_iter,
            transform_algorithm="omp", transform_n_nonzero_coefs=args.n_nonzero,
            random_state=seed).fit(y).components_

    return doubling(fit_one, y, args, budget)


def run_sae(y, args, seed, budget) -> dict:
    """A TopK SAE trained epoch by epoch; a point (training seconds, error) after each."""
    import torch

    torch.manual_seed(seed)
    start = time.perf_counter()
    k, x = args.n_nonzero, torch.from_numpy(y)
    b_pre = torch.nn.Parameter(x.mean(0).clone())
    decoder = torch.nn.functional.normalize(torch.randn(args.n_atoms, y.shape[1]), dim=1)
    w_dec = torch.nn.Parameter(decoder.clone())
    w_enc = torch.nn.Parameter(decoder.T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(args.n_atoms))
    optimizer = torch.optim.Adam([b_pre, w_dec, w_enc, b_enc], lr=1e-3)

    def encode(rows):
        pre = torch.relu((rows - b_pre) @ w_enc + b_enc)
        values, index = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter_(1, index, values)

    generator = torch.Generator().manual_seed(seed)
    points, paused, epochs = [], 0.0, 0
    while True:
        epochs += 1
        for batch in torch.randperm(len(x), generator=generator).split(256):
            rows = x[batch]
            loss = ((encode(rows) @ w_dec + b_pre - rows) ** 2).sum(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                w_dec /= w_dec.norm(dim=1, keepdim=True)
        now = time.perf_counter() - start - paused
        with torch.no_grad():
            error = float((encode(x) @ w_dec + b_pre - x).norm() / x.norm())
        paused = time.perf_counter() - start - now
        points.append((now, error))
        if time.perf_counter() - start > budget:
            break
    return {"seconds": [p[0] for p in points], "errors": [p[1] for p in points],
            "calls": [epochs], "wall": time.perf_counter() - start}


RUNNERS = {"daskdict": run_daskdict, "dictlearn-aksvd": run_aksvd,
           "sklearn-mbdl": run_sklearn, "topk-sae": run_sae}


def first_reach(curve: dict, level: float) -> float:
    """Seconds at which ``curve`` first has an error <= ``level`` (inf if never)."""
    for seconds, error in zip(curve["seconds"], curve["errors"], strict=True):
        if error <= level:
            return float(seconds)
    return math.inf


def level_table(runs: list[dict]) -> dict:
    """Per method and level, the median over runs of the seconds to first reach it."""
    out = {}
    for method in METHODS:
        curves = [run[method] for run in runs if method in run]
        if curves:
            out[method] = {str(level): median([first_reach(c, level) for c in curves])
                           for level in LEVELS}
    return out


def judge(times: dict) -> tuple[bool, list[str]]:
    """daskdict first to every level that some peer reaches; the reasons when not."""
    failures = []
    for level in LEVELS:
        key, ours = str(level), times.get("daskdict", {}).get(str(level), math.inf)
        for method, row in times.items():
            if method != "daskdict" and math.isfinite(row[key]) and not ours < row[key]:
                failures.append(f"{method} reaches {level} in {row[key]:.1f} s, daskdict in "
                                f"{ours:.1f} s")
    return not failures, failures


def plot(runs: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = dict(zip(METHODS, ("C0", "C1", "C2", "C3"), strict=True))
    for method in METHODS:
        for index, run in enumerate(runs):
            if method in run:
                curve = run[method]
                ax.plot(curve["seconds"], curve["errors"], "o-", color=colors[method],
                        markersize=3, alpha=0.8, label=method if index == 0 else None)
    for level in LEVELS:
        ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds from call start")
    ax.set_ylabel("relative error ||Y - XD|| / ||Y|| (training data)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")


def warm_up(args) -> None:
    """Every method once on a tiny problem: numba compiles, the libraries are imported."""
    from daskdict.datasets import make_planted

    tiny = make_planted(600, args.n_features, 32, 3, 20.0, random_state=1,
                        dtype=np.float32).data
    small = argparse.Namespace(**{**vars(args), "n_atoms": 32, "n_nonzero": 3,
                                  "daskdict_iter": 2})
    for method, runner in RUNNERS.items():
        start = time.perf_counter()
        runner(tiny, small, 0, 0.0)
        print(f"  warm-up {method}: {time.perf_counter() - start:.1f} s", flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="N=4,000, d=128, 256 atoms, 1 run, budget 20 s")
    parser.add_argument("--runs", type=int, default=None, help="3 (--quick: 1)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per method and run (150; --quick: 20)")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--daskdict-iter", type=int, default=25)
    parser.add_argument("--wait-idle", type=float, default=30.0,
                        help="before each run, wait up to this long for an idle machine")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key in ("n_samples", "runs", "budget"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.n_features, args.n_atoms = preset["n_features"], preset["n_atoms"]
    return args


def report(args, runs: list[dict], meta: list[dict], done: bool) -> None:
    """The table, the verdict, the JSON and the plot (after every run)."""
    name = "bench_peers" + ("_quick" if args.quick else "")
    times = level_table(runs)
    ok, failures = judge(times)
    rows = [[m] + [(f"{times[m][str(lv)]:.1f}" if math.isfinite(times[m][str(lv)]) else "-")
                   for lv in LEVELS] for m in METHODS if m in times]
    print()
    table(["method"] + [f"s to {lv}" for lv in LEVELS], rows,
          title=f"seconds to first reach each relative error (median of {len(runs)} run(s))")
    print(f"\ndaskdict first to every error level any peer reaches: {verdict(ok)}")
    for line in failures:
        print(f"  {line}")
    title = (f"planted N={args.n_samples}, d={args.n_features}, {args.n_atoms} atoms, "
             f"{args.n_nonzero} non-zeros, {args.snr:g} dB; {len(runs)} run(s)")
    plot(runs, RESULTS / f"{name}.png", title)
    write_json(name, {
        "params": vars(args), "levels": list(LEVELS), "error": "||Y - X D||_F / ||Y||_F on "
        "the training data; OMP (daskdict Batch-OMP, 10 non-zeros) for the dictionaries, "
        "the SAE's own encoder for the SAE",
        "daskdict_time": "setup (call wall - sum of iteration seconds) + cumulative iteration "
        "seconds", "peer_time": "dictlearn, scikit-learn: one call per point (max_iter = 1, 2, "
        "4, ...), call to return; SAE: training seconds at each epoch end",
        "seconds_to_level_median": {m: {k: (v if math.isfinite(v) else None)
                                         for k, v in row.items()} for m, row in times.items()},
        "verdict": verdict(ok), "failures": failures, "complete": done, "runs": runs,
        "run_meta": meta})


def main():
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    from daskdict.datasets import make_planted

    start = time.perf_counter()
    y = make_planted(args.n_samples, args.n_features, args.n_atoms, args.n_nonzero, args.snr,
                     random_state=0, dtype=np.float32).data
    print(f"data {y.shape} {y.dtype} in {time.perf_counter() - start:.1f} s; budget "
          f"{args.budget:g} s per method and run; {args.runs} run(s)")
    warm_up(args)
    runs, meta = [], []
    for index in range(args.runs):
        order = METHODS[index % len(METHODS):] + METHODS[:index % len(METHODS)]
        busy = wait_until_idle(max_wait=args.wait_idle)
        run, info = {}, {"order": list(order), "busy_percent_before": busy,
                         "loadavg_before": list(os.getloadavg())}
        for method in order:
            print(f"run {index + 1}/{args.runs}: {method}", flush=True)
            run[method] = RUNNERS[method](y, args, index, args.budget)
            print(f"  {method}: {run[method]['wall']:.1f} s, final error "
                  f"{run[method]['errors'][-1]:.4f}", flush=True)
        info["loadavg_after"] = list(os.getloadavg())
        runs.append(run)
        meta.append(info)
        report(args, runs, meta, done=index == args.runs - 1)


if __name__ == "__main__":
    main()
