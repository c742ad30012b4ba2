"""Speed of one K-SVD iteration against the bare correlation GEMM ``Y @ D.T``.

Planted data (d=768, 3072 atoms, 10 non-zeros, 20 dB) of N=100,000 rows is written to a Zarr
embedding store. One iteration of ``daskdict.fit(store, n_atoms=3072, n_nonzero=10, n_iter=R,
client=client)`` on a LocalCluster of 2 single-threaded workers is timed from the fit's
``history[i]["seconds"]`` (median over iterations 2..R; the first one includes the numba
compile in the workers). In the same run, the bare float32 product ``Y @ D.T`` of the same data
held in memory is timed with NumPy's multi-threaded BLAS (median of repeats).

Bar: iteration / bare product <= 2.0.

The time split times the per-chunk pieces of an iteration single-threaded (threadpoolctl), as
one worker runs them: reading the Zarr chunk, the GEMM, the squared norms, Batch-OMP
(``daskdict._kernels.batch_omp``), ``residual_statistics``, pickling the chunk's statistics,
the Gram matrix (each lane task makes its own), and the driver's work (merging the lanes'
statistics, atom update, atom replacement). The per-iteration
estimate of a worker piece is its per-chunk time x (chunks per worker on the critical path).

    python benchmarks/bench_speed.py                       # N=100,000, R=6
    python benchmarks/bench_speed.py --n-samples 20000 --n-iter 3 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import median, table, timed, verdict, wait_until_idle, write_json

BAR = 2.0


def make_store(args) -> Path:
    from daskdict.datasets import write_planted_store

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(
        prefix="daskdict-bench-speed-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"planted-{args.n_samples}x{args.n_features}-k{args.n_atoms}.zarr"
    if path.exists() and not args.rewrite:
        print(f"using the existing store {path}")
        return path
    start = time.perf_counter()
    write_planted_store(path, args.n_samples, args.n_features, args.n_atoms, args.n_nonzero,
                        args.snr, random_state=0, chunk_rows=args.chunk_rows, overwrite=True)
    print(f"wrote {path} in {time.perf_counter() - start:.1f} s")
    return path


def bare_product(y, atoms, repeats):
    from threadpoolctl import threadpool_info

    blas_threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    atoms_t = atoms.T
    alloc = timed(lambda: y @ atoms_t, repeats)
    out = np.empty((y.shape[0], atoms.shape[0]), dtype=np.float32)
    prealloc = timed(lambda: np.matmul(y, atoms_t, out=out), repeats)
    out = None  # free the 1.2 GB product before the fit
    return {"seconds": alloc, "median": median(alloc),
            "preallocated_seconds": prealloc, "preallocated_median": median(prealloc),
            "blas_threads": blas_threads,
            "gflops": 2 * y.shape[0] * y.shape[1] * atoms.shape[0] / median(alloc) / 1e9}


def combine_bare(before, after, y, atoms):
    alloc = before["seconds"] + after["seconds"]
    pre = before["preallocated_seconds"] + after["preallocated_seconds"]
    return {"seconds": alloc, "median": median(alloc), "preallocated_seconds": pre,
            "preallocated_median": median(pre), "blas_threads": before["blas_threads"],
            "median_before_fit": before["median"], "median_after_fit": after["median"],
            "gflops": 2 * y.shape[0] * y.shape[1] * atoms.shape[0] / median(alloc) / 1e9}


def task_stream_split(records, history):
    """Worker time per task kind, measured inside the workers during the fit's iterations 2..R.

    The iterations are told apart by the driver's clock: iteration i spans the sum of the
    seconds of iterations 1..i counted back from the fit's last task.
    """
    from dask.utils import key_split

    if not records or len(history) < 2:
        return None
    tasks = []
    for rec in records:
        for ss in rec.get("startstops", []):
            tasks.append((key_split(rec["key"]), rec["worker"], ss["action"], ss["start"],
                          ss["stop"]))
    end = max(t[4] for t in tasks)
    # the window of iterations 2..R: the last sum(seconds[1:]) seconds before the end
    window = sum(h["seconds"] for h in history[1:])
    begin = end - window
    kinds, workers, counts = {}, {}, {}
    for name, worker, action, start, stop in tasks:
        if stop < begin:
            continue
        dur = stop - max(start, begin)
        label = f"{action}: {name}"
        kinds[label] = kinds.get(label, 0.0) + dur
        counts[label] = counts.get(label, 0) + 1
        workers[worker] = workers.get(worker, 0.0) + dur
    n = len(history) - 1
    return {"window_seconds": window, "iterations": n, "mean_iteration": window / n,
            "mean_per_task": {k: kinds[k] / counts[k] for k in kinds},
            "per_iteration_by_kind": {k: v / n for k, v in sorted(kinds.items(),
                                                                 key=lambda kv: -kv[1])},
            "per_iteration_busy_by_worker": {w: v / n for w, v in workers.items()}}


def time_split(path, atoms, n_nonzero, repeats, n_workers):
    """Per-chunk pieces of an iteration, single-threaded, and the driver's pieces."""
    from threadpoolctl import threadpool_limits

    from daskdict import _kernels, open_store
    from daskdict.learn import (
        _chunk_statistics,
        _merge_statistics,
        approx_update,
        check_block,
        n_candidates,
        replace_atoms,
    )

    array = open_store(path).layer_array("final")
    rows = array.chunks[0]
    n_rows = array.shape[0]
    n_chunks = math.ceil(n_rows / rows)
    full_chunks = n_rows // rows
    # the busiest worker gets ceil(chunks / workers) chunks (a partial last chunk counts as full
    # here, a small over-estimate)
    per_worker = math.ceil(n_chunks / n_workers)
    n_atoms = atoms.shape[0]
    n_worst = n_candidates(n_atoms)
    atoms = np.ascontiguousarray(atoms, dtype=np.float32)
    pieces = {}
    with threadpool_limits(limits=1):
        y = None

        def read():
            nonlocal y
            y = np.ascontiguousarray(array[0:rows], dtype=np.float32)

        pieces["read zarr chunk"] = timed(read, repeats)
        pieces["check_block (NaN scan)"] = timed(lambda: check_block(y, 0), repeats)
        pieces["Gram D D^T (once per lane)"] = timed(lambda: atoms @ atoms.T, repeats)
        gram = atoms @ atoms.T
        pieces["GEMM y @ D.T"] = timed(lambda: y @ atoms.T, repeats)
        corr = y @ atoms.T
        pieces["squared norms"] = timed(lambda: np.einsum("ij,ij->i", y, y), repeats)
        sq = np.einsum("ij,ij->i", y, y)
        pieces["batch_omp"] = timed(lambda: _kernels.batch_omp(corr, gram, sq, n_nonzero, 0.0),
                                    repeats)
        idx, val = _kernels.batch_omp(corr, gram, sq, n_nonzero, 0.0)
        pieces["residual_statistics"] = timed(
            lambda: _kernels.residual_statistics(y, atoms, idx, val, n_worst), repeats)
        stats = _chunk_statistics(y, atoms, gram, n_nonzero, 0.0, "omp", n_worst)
        pieces["pickle chunk statistics"] = timed(
            lambda: pickle.loads(pickle.dumps(stats, protocol=5)), repeats)
        stats_bytes = len(pickle.dumps(stats, protocol=5))
        pieces["whole chunk task (_chunk_statistics)"] = timed(
            lambda: _chunk_statistics(y, atoms, gram, n_nonzero, 0.0, "omp", n_worst), repeats)
    corr = None
    # driver side (runs in the client process with its default BLAS threads)
    driver = {}
    driver[f"merge {n_workers} lane statistics"] = timed(
        lambda: _merge_statistics([stats] * n_workers, n_worst), repeats)
    merged = _merge_statistics([stats] * n_chunks, n_worst)
    driver["approx_update"] = timed(lambda: approx_update(atoms, merged), repeats)
    new_atoms = approx_update(atoms, merged)
    driver["replace_atoms"] = timed(lambda: replace_atoms(new_atoms, merged), repeats)
    _, n_replaced = replace_atoms(new_atoms, merged)

    out = {"chunk_rows": rows, "n_chunks": n_chunks, "full_chunks": full_chunks,
           "chunks_per_worker_critical": per_worker, "stats_bytes_per_chunk": stats_bytes,
           "replaced_in_split": n_replaced, "worker_pieces": {}, "driver_pieces": {}}
    for name, values in pieces.items():
        times = 1 if name.startswith("Gram") else per_worker
        out["worker_pieces"][name] = {"per_chunk_median": median(values),
                                      "per_iteration_estimate": median(values) * times}
    for name, values in driver.items():
        out["driver_pieces"][name] = {"median": median(values),
                                      "per_iteration_estimate": median(values)}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--n-iter", type=int, default=6,
                        help="iterations R of the timed fit (iteration 1 is not counted)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the bare product "
                        "and of each piece of the split")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="1 is daskdict's default LocalCluster (one process per core)")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per Zarr chunk (default: the package's ~32 MiB)")
    parser.add_argument("--workdir", default=None,
                        help="where to write the store (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--rewrite", action="store_true", help="rewrite an existing store")
    parser.add_argument("--no-split", action="store_true", help="skip the time split")
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="wait up to this many seconds for other processes to leave the "
                             "CPU before timing")
    args = parser.parse_args()

    from distributed import Client, LocalCluster, get_task_stream

    import daskdict
    from daskdict import open_store
    from daskdict.evaluate import recovered_fraction

    path = make_store(args)
    try:
        store = open_store(path)
        array = store.layer_array("final")
        y = np.asarray(array[...], dtype=np.float32)
        planted = np.asarray(store.group["planted/atoms"][...], dtype=np.float32)
        print(f"data {y.shape} float32, chunks of {array.chunks[0]} rows", flush=True)

        # a dictionary like the fit's: unit rows drawn from the data (the product's cost does
        # not depend on the values)
        rng = np.random.default_rng(0)
        d0 = y[rng.choice(y.shape[0], args.n_atoms, replace=False)]
        d0 = np.ascontiguousarray(d0 / np.linalg.norm(d0, axis=1, keepdims=True))
        busy_before = wait_until_idle(max_wait=args.wait_idle)
        bare = bare_product(y, d0, args.repeats)
        print(f"bare Y @ D.T: median {bare['median']:.3f} s ({bare['gflops']:.0f} GFLOP/s, "
              f"BLAS threads {bare['blas_threads']})", flush=True)

        with LocalCluster(n_workers=args.n_workers, threads_per_worker=args.threads_per_worker,
                          host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
                Client(cluster) as client:
            start = time.perf_counter()
            with get_task_stream(client) as stream:
                model = daskdict.fit(str(path), n_atoms=args.n_atoms,
                                     n_nonzero=args.n_nonzero, n_iter=args.n_iter,
                                     client=client, random_state=0, progress=False)
            fit_wall = time.perf_counter() - start
        in_workers = task_stream_split(stream.data, model.history)
        # the bare product again after the fit: other processes may share the machine, so
        # the medians are over repeats taken before and after the iterations
        after = bare_product(y, d0, args.repeats)
        bare = combine_bare(bare, after, y, d0)
        print(f"bare Y @ D.T after the fit: median {after['median']:.3f} s", flush=True)
        iters = [h["seconds"] for h in model.history]
        timed_iters = iters[1:] if len(iters) > 1 else iters
        it_median = median(timed_iters)
        ratio = it_median / bare["median"]
        ratio_pre = it_median / bare["preallocated_median"]
        rec = recovered_fraction(planted, model.atoms)

        print()
        table(["iteration", "seconds", "relative_error", "mean_l0", "dead", "replaced"],
              [[h["iteration"], h["seconds"], h["relative_error"], h["mean_l0"],
                h["dead_atoms"], h["replaced_atoms"]] for h in model.history],
              title=f"fit on {args.n_workers} workers of {args.threads_per_worker} thread(s) "
                    f"(wall {fit_wall:.1f} s incl. validation pass and init)")
        print()
        table(["measure", "seconds", "ratio it/bare", "bar", "result"], [
            ["iteration (median of 2..R)", it_median, ratio, f"<= {BAR}", verdict(ratio <= BAR)],
            ["bare Y @ D.T (median, before+after)", bare["median"], 1.0, "", ""],
            ["bare matmul(out=) (median)", bare["preallocated_median"], ratio_pre, "", ""],
        ], title=f"one K-SVD iteration vs the bare float32 GEMM, N={args.n_samples:,}, "
                 f"d={args.n_features}, K={args.n_atoms}, L={args.n_nonzero}")

        if in_workers is not None:
            print()
            mean_it = in_workers["mean_iteration"]
            rows = [[k, v, in_workers["mean_per_task"][k], f"{100 * v / mean_it:.1f}"]
                    for k, v in in_workers["per_iteration_by_kind"].items()]
            rows += [[f"busy: worker {w}", v, "", f"{100 * v / mean_it:.1f}"]
                     for w, v in in_workers["per_iteration_busy_by_worker"].items()]
            table(["task kind (summed over workers)", "s/iteration", "s/task",
                   "% of mean iteration"], rows,
                  title=f"inside the workers (distributed task stream, iterations 2..R, mean "
                        f"iteration {mean_it:.2f} s); a worker busy < 100 % waits")
        split = None
        if not args.no_split:
            split = time_split(path, model.atoms, args.n_nonzero, args.repeats, args.n_workers)
            rows = []
            for name, v in split["worker_pieces"].items():
                rows.append(["worker: " + name, v["per_chunk_median"],
                             v["per_iteration_estimate"],
                             f"{100 * v['per_iteration_estimate'] / it_median:.1f}"])
            for name, v in split["driver_pieces"].items():
                rows.append(["driver: " + name, v["median"], v["per_iteration_estimate"],
                             f"{100 * v['per_iteration_estimate'] / it_median:.1f}"])
            main_pieces = ["read zarr chunk", "check_block (NaN scan)", "GEMM y @ D.T",
                           "squared norms", "batch_omp", "residual_statistics"]
            accounted = sum(split["worker_pieces"][k]["per_iteration_estimate"]
                            for k in main_pieces if k != "check_block (NaN scan)")
            accounted += sum(v["per_iteration_estimate"] for v in split["driver_pieces"].values())
            split["accounted_per_iteration"] = accounted
            print()
            table(["piece", "s/chunk (1 thread)", "s/iteration est.", "% of iteration"], rows,
                  title=f"time split: {split['n_chunks']} chunks of {split['chunk_rows']} rows, "
                        f"{split['chunks_per_worker_critical']} chunks on the busiest worker; "
                        f"chunk statistics {split['stats_bytes_per_chunk'] / 2**20:.1f} MiB")
            print(f"accounted (read+GEMM+norms+OMP+stats+driver): {accounted:.2f} s of "
                  f"{it_median:.2f} s measured; the rest is scheduling, transfers and "
                  "contention between the two workers")

        write_json("bench_speed", {
            "params": vars(args), "store": str(path), "cpu_busy_before_percent": busy_before,
            "iteration_seconds": iters, "iteration_median_2_to_R": it_median,
            "fit_wall_seconds": fit_wall, "bare_product": bare,
            "ratio_iteration_over_bare": ratio,
            "ratio_iteration_over_bare_preallocated": ratio_pre,
            "bar": BAR, "pass": ratio <= BAR, "history": model.history,
            "recovered_fraction_after_R": rec, "split": split, "task_stream": in_workers})
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
