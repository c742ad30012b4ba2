"""Speed of one K-SVD iteration against the bare correlation GEMM ``Y @ D.T``.

Planted data (d=768, 3072 atoms, 10 non-zeros, 20 dB) of N=100,000 rows is written to a Zarr
embedding store and fitted with ``daskdict.fit(store, n_atoms=3072, n_nonzero=10, ...)`` on
the LocalCluster ``fit`` starts by default (one worker process with a thread per core), one
iteration at a time: the fit is continued from its checkpoint with ``n_iter`` = 1, 2, ..., R,
and the bare float32 product ``Y @ D.T`` of the same data, held in memory, is timed before the
first iteration and after each (median of --repeats) in each exact float32 form the process
has: NumPy's (multi-threaded BLAS, allocating or into ``out=``) and, with torch installed,
``torch.mm`` with its reduced-precision mode off; the fastest is the denominator. Each
iteration's time (``history[i]["seconds"]``, measured inside the fit) is divided by the
mean of the fastest bare products just before and just after it: the machine's speed drifts
by 20-40 % over tens of seconds on a shared VM, and a ratio of neighbours cancels most of it.
The bar is the median of these ratios over iterations 2..R (the first one includes the numba
compile in the workers); the ratio of the medians is printed too.

Bar: iteration / bare product <= 1.5; with ``--correlations bfloat16`` (correlations from
bfloat16 inputs through torch, every choice settled at float32 precision: see
``daskdict.learn.reduced``), iteration / bare float32 product < 1.0. Both runs report the
share of rows (of a sample, coded with the fit's final atoms) whose bfloat16 code has the
same support as the float32 one (bar >= 99 %), the CPU's bfloat16 flags and the BLAS.

Also printed: how long each iteration's share tasks ran in the workers and how far apart the
threads finished (distributed task stream), and a time split of the per-chunk pieces
single-threaded (threadpoolctl): reading a chunk (through the fit's reader), the GEMM, the
squared norms, Batch-OMP (``daskdict.learn.kernels.batch_omp``), ``residual_statistics``, pickling
the chunk's statistics, the Gram matrix (made once per worker process, by its threads
together), the NaN scan (once per fit, not per iteration), and the driver's work (merging the
shares' statistics, atom update, atom replacement). The per-iteration estimate of a worker
piece is its per-chunk time x (chunks per thread); of the Gram matrix, its time / (threads per
worker).

    python benchmarks/bench_speed.py                       # N=100,000, R=6
    python benchmarks/bench_speed.py --n-samples 20000 --n-iter 3 --repeats 3
    python benchmarks/bench_speed.py --n-workers 2 --threads-per-worker 1   # another shape
    python benchmarks/bench_speed.py --correlations bfloat16              # needs torch
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

BAR = 1.5
BF16_BAR = 1.0  # iteration / bare float32 product, with bfloat16 correlations
SUPPORT_BAR = 0.99  # rows whose bfloat16 code has the float32 code's support


def make_store(args) -> Path:
    from daskdict.datasets.planted import write_planted_store

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
    torch_seconds = torch_product(y, atoms, out, repeats)
    out = None  # free the 1.2 GB product before the fit
    candidates = {"numpy": median(alloc), "numpy matmul(out=)": median(prealloc)}
    if torch_seconds:
        candidates["torch mm (float32, reduced modes off)"] = median(torch_seconds)
    fastest = min(candidates, key=candidates.get)
    return {"seconds": alloc, "median": candidates[fastest], "fastest": fastest,
            "numpy_median": median(alloc), "candidates": candidates,
            "preallocated_seconds": prealloc, "preallocated_median": median(prealloc),
            "torch_seconds": torch_seconds, "blas_threads": blas_threads,
            "gflops": 2 * y.shape[0] * y.shape[1] * atoms.shape[0] / candidates[fastest] / 1e9}


def torch_product(y, atoms, out, repeats):
    """Seconds of PyTorch's exact float32 product ``Y @ D.T`` into ``out`` (its oneDNN
    reduced-precision mode off), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    before = getattr(backend, "fp32_precision", None)
    if before is not None:
        backend.fp32_precision = "ieee"
    try:
        ty, td, tout = (torch.from_numpy(a) for a in (y, atoms, out))
        with torch.no_grad():
            return timed(lambda: torch.mm(ty, td.T, out=tout), repeats)
    finally:
        if before is not None:
            backend.fp32_precision = before


def hardware() -> dict:
    """The CPU's matrix-unit flags, the BLAS libraries and torch, as the results record them."""
    import importlib.util

    from threadpoolctl import threadpool_info

    from daskdict.learn import params, reduced

    flags = params.cpu_flags()
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2", "fma")
    blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                     "filepath")} for i in threadpool_info()
            if i["user_api"] == "blas"]
    torch_info = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_info = {"version": torch.__version__,
                      "mkldnn": bool(torch.backends.mkldnn.is_available()),
                      "bf16_fp32_matmul": reduced.has_fp32_precision(torch),
                      "threads": torch.get_num_threads()}
    return {"cpu_flags": sorted(f for f in wanted if f in flags), "blas": blas,
            "torch": torch_info}


def same_support(path, atoms, n_nonzero, n_rows) -> dict:
    """Codes of the first ``n_rows`` rows with ``atoms``, from float32 and from bfloat16
    correlations: the share with the same support, and each coder's seconds."""
    from daskdict import open_store
    from daskdict.learn.coding import code_block, gram_matrix

    rows = np.ascontiguousarray(open_store(path).layer_array("final")[:n_rows],
                                dtype=np.float32)
    atoms = np.ascontiguousarray(atoms, dtype=np.float32)
    gram = gram_matrix(atoms)
    out, seconds = {}, {}
    for key in ("omp", "omp-bf16"):
        code_block(rows[:2048], atoms, gram, n_nonzero, 0.0, key)  # imports torch, compiles
        start = time.perf_counter()
        out[key] = code_block(rows, atoms, gram, n_nonzero, 0.0, key)[0]
        seconds[key] = time.perf_counter() - start
    same = np.mean([set(a[a >= 0]) == set(b[b >= 0])
                    for a, b in zip(out["omp"], out["omp-bf16"], strict=True)])
    return {"rows": int(rows.shape[0]), "share": float(same), "seconds": seconds}


def support_report(args, path, atoms) -> dict | None:
    """:func:`same_support` on ``--support-rows`` rows, printed; None when skipped."""
    from daskdict.learn import params

    if args.support_rows <= 0 or params.torch_version() is None:
        return None
    support = same_support(path, atoms, args.n_nonzero, min(args.support_rows,
                                                            args.n_samples))
    info = hardware()
    print(f"bfloat16 vs float32 codes of {support['rows']} rows with the final atoms: "
          f"{100 * support['share']:.2f} % same support (float32 {support['seconds']['omp']:.2f}"
          f" s, bfloat16 {support['seconds']['omp-bf16']:.2f} s, in this process); CPU flags "
          f"{info['cpu_flags']}, BLAS {[b['internal_api'] for b in info['blas']]}, torch "
          f"{(info['torch'] or {}).get('version')}", flush=True)
    return support


def share_tasks(records) -> dict | None:
    """The share tasks of one fit call (one iteration) from the distributed task stream: how
    long they ran and how far apart the threads finished."""
    from dask.utils import key_split

    spans = [(ss["start"], ss["stop"]) for rec in records
             for ss in rec.get("startstops", []) if ss["action"] == "compute"
             and key_split(rec["key"]).endswith("share_statistics")]
    if not spans:
        return None
    starts, stops = zip(*spans, strict=True)
    return {"tasks": len(spans), "seconds": [b - a for a, b in spans],
            "first_start_to_last_stop": max(stops) - min(starts),
            "threads_end_apart": max(stops) - min(stops)}


def time_split(path, atoms, n_nonzero, repeats, n_workers, n_threads, coder="omp"):
    """Per-chunk pieces of an iteration, single-threaded, and the driver's pieces; with
    ``coder="omp-bf16"``, the GEMM and the coder are the bfloat16 ones."""
    from threadpoolctl import threadpool_limits

    from daskdict import open_store
    from daskdict.io.reads import open_rows
    from daskdict.learn import kernels as _kernels
    from daskdict.learn import reduced
    from daskdict.learn.coding import block_statistics as _chunk_statistics
    from daskdict.learn.coding import check_block, gram_matrix
    from daskdict.learn.shares import merge_statistics as _merge_statistics
    from daskdict.learn.updates import approx_update, mod_update, n_candidates, replace_atoms

    array = open_store(path).layer_array("final")
    _, _, reader = open_rows(path)  # what the fit reads through
    rows = array.chunks[0]
    n_rows = array.shape[0]
    n_chunks = math.ceil(n_rows / rows)
    full_chunks = n_rows // rows
    # the threads share the rows evenly (pieces taken in turn), and each worker's Gram matrix
    per_thread = n_rows / rows / n_threads
    threads_per_worker = n_threads / n_workers
    n_atoms = atoms.shape[0]
    n_worst = n_candidates(n_atoms)
    atoms = np.ascontiguousarray(atoms, dtype=np.float32)
    pieces = {}
    with threadpool_limits(limits=1):
        y = None

        def read():
            nonlocal y
            y = np.ascontiguousarray(reader[0:rows], dtype=np.float32)

        pieces["read a chunk"] = timed(read, repeats)
        pieces["check_block (NaN scan, once per fit)"] = timed(lambda: check_block(y, 0),
                                                               repeats)
        pieces["Gram D D^T (per worker, shared by its threads)"] = timed(
            lambda: gram_matrix(atoms), repeats)
        gram = gram_matrix(atoms)
        pieces["GEMM y @ D.T"] = timed(lambda: y @ atoms.T, repeats)
        corr = y @ atoms.T
        pieces["squared norms"] = timed(lambda: np.einsum("ij,ij->i", y, y), repeats)
        sq = np.einsum("ij,ij->i", y, y)
        pieces["batch_omp"] = timed(lambda: _kernels.batch_omp(corr, gram, sq, n_nonzero, 0.0),
                                    repeats)
        idx, val = _kernels.batch_omp(corr, gram, sq, n_nonzero, 0.0)
        if coder.endswith(reduced.SUFFIX):
            pieces["float32 GEMM (not in this fit)"] = pieces.pop("GEMM y @ D.T")
            pieces["float32 batch_omp (not in this fit)"] = pieces.pop("batch_omp")
            bounds = reduced.rounding(atoms)
            pieces["GEMM y @ D.T"] = timed(lambda: reduced.correlations(y, atoms, corr),
                                           repeats)
            pieces["batch_omp"] = timed(lambda: reduced.CODERS[coder](
                corr.copy(), gram, sq, y, atoms, n_nonzero, 0.0, bounds), repeats)
            idx, val = reduced.CODERS[coder](corr, gram, sq, y, atoms, n_nonzero, 0.0,
                                             bounds)
        pieces["residual_statistics"] = timed(
            lambda: _kernels.residual_statistics(y, atoms, idx, val, n_worst), repeats)
        code_gram = np.zeros((n_atoms, n_atoms))
        pieces["code Gram X^T X (update mod)"] = timed(
            lambda: _kernels.add_code_gram(code_gram, idx, val), repeats)
        stats = _chunk_statistics(y, atoms, gram, n_nonzero, 0.0, coder, n_worst,
                                  keep_codes=True)
        pieces["pickle chunk statistics"] = timed(
            lambda: pickle.loads(pickle.dumps(stats, protocol=5)), repeats)
        stats_bytes = len(pickle.dumps(stats, protocol=5))
        pieces["whole chunk task (_chunk_statistics)"] = timed(
            lambda: _chunk_statistics(y, atoms, gram, n_nonzero, 0.0, coder, n_worst,
                                      keep_codes=True), repeats)
    corr = None
    # driver side (runs in the client process with its default BLAS threads)
    driver = {}
    driver[f"merge {n_workers} share statistics (on a worker)"] = timed(
        lambda: _merge_statistics([stats] * n_workers, n_worst), repeats)
    merged = _merge_statistics([stats] * n_chunks, n_worst)
    driver["approx_update (update approx)"] = timed(lambda: approx_update(atoms, merged),
                                                    repeats)
    driver["mod_update (update mod)"] = timed(lambda: mod_update(atoms, merged), repeats)
    new_atoms = mod_update(atoms, merged)
    driver["replace_atoms"] = timed(lambda: replace_atoms(new_atoms, merged), repeats)
    _, n_replaced = replace_atoms(new_atoms, merged)

    out = {"chunk_rows": rows, "n_chunks": n_chunks, "full_chunks": full_chunks,
           "chunks_per_thread": per_thread, "stats_bytes_per_chunk": stats_bytes,
           "replaced_in_split": n_replaced, "worker_pieces": {}, "driver_pieces": {}}
    for name, values in pieces.items():
        times = per_thread
        if name.startswith("Gram"):
            times = 1 / threads_per_worker
        elif "once per fit" in name:
            times = 0
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
    parser.add_argument("--positive", action="store_true",
                        help="fit with non-negative codes (positive=True); bench_positive.py "
                        "compares the two coders side by side")
    parser.add_argument("--correlations", choices=("float32", "bfloat16"), default="float32",
                        help="fit's correlation_dtype: bfloat16 computes Y D^T from bfloat16 "
                        "inputs through torch (bar: iteration / bare float32 product < 1.0)")
    parser.add_argument("--support-rows", type=int, default=20_000,
                        help="rows coded with the final atoms from float32 and from bfloat16 "
                        "correlations to compare their supports (0 to skip; needs torch)")
    parser.add_argument("--n-iter", type=int, default=6,
                        help="iterations R of the timed fit (iteration 1 is not counted)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each bare product "
                        "and of each piece of the split")
    parser.add_argument("--n-workers", type=int, default=None,
                        help="worker processes (default: fit's LocalCluster, 1)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="threads per worker (default: fit's LocalCluster, one per core)")
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

    from distributed import Client, get_task_stream

    import daskdict
    from daskdict import open_store
    from daskdict.compute.runtime import local_cluster, n_cores
    from daskdict.evaluation.metrics import recovered_fraction

    n_workers = args.n_workers or 1
    threads = args.threads_per_worker or (n_cores() if args.n_workers is None else 1)
    path = make_store(args)
    checkpoint = Path(tempfile.mkdtemp(prefix="daskdict-bench-speed-ck-", dir="/tmp"))
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
        bares = [bare_product(y, d0, args.repeats)]
        print(f"bare Y @ D.T: fastest {bares[0]['fastest']}, median {bares[0]['median']:.3f} s "
              f"({bares[0]['gflops']:.0f} GFLOP/s, BLAS threads {bares[0]['blas_threads']}); "
              + ", ".join(f"{k} {v:.3f} s" for k, v in bares[0]["candidates"].items()),
              flush=True)

        tasks, model = [], None
        with local_cluster(n_workers, threads_per_worker=threads) as cluster, \
                Client(cluster) as client:
            start = time.perf_counter()
            for n_iter in range(1, args.n_iter + 1):
                with get_task_stream(client) as stream:
                    model = daskdict.fit(str(path), n_atoms=args.n_atoms,
                                         n_nonzero=args.n_nonzero, n_iter=n_iter,
                                         client=client, random_state=0, verbose=False,
                                         positive=args.positive,
                                         correlation_dtype=args.correlations,
                                         checkpoint=checkpoint / "run.zarr")
                tasks.append(share_tasks(stream.data))
                bares.append(bare_product(y, d0, args.repeats))
                print(f"iteration {n_iter}: {model.history[-1]['seconds']:.2f} s, bare after "
                      f"{bares[-1]['median']:.3f} s", flush=True)
            fit_wall = time.perf_counter() - start
        iters = [h["seconds"] for h in model.history]
        around = [(bares[i]["median"] + bares[i + 1]["median"]) / 2 for i in range(len(iters))]
        ratios = [it / bare for it, bare in zip(iters, around, strict=True)]
        counted = slice(1, None) if len(iters) > 1 else slice(None)
        ratio = median(ratios[counted])
        it_median = median(iters[counted])
        bare_all = [s for b in bares for s in b["seconds"]]
        pre_all = [s for b in bares for s in b["preallocated_seconds"]]
        ratio_of_medians = it_median / median(bare_all)
        rec = recovered_fraction(planted, model.atoms)

        print()
        table(["iteration", "seconds", "bare around", "ratio", "share tasks (s)",
               "threads end apart (s)", "relative_error", "replaced"],
              [[h["iteration"], h["seconds"], b, r,
                " ".join(f"{s:.2f}" for s in t["seconds"]) if t else "",
                t["threads_end_apart"] if t else "", h["relative_error"], h["replaced_atoms"]]
               for h, b, r, t in zip(model.history, around, ratios, tasks, strict=True)],
              title=f"fit on {n_workers} worker(s) of {threads} thread(s), one iteration per "
                    f"call (wall {fit_wall:.1f} s incl. the calls' validation passes)")
        bf16 = args.correlations == "bfloat16"
        passed = ratio < BF16_BAR if bf16 else ratio <= BAR
        support = support_report(args, path, model.atoms)
        print()
        table(["measure", "value", "bar", "result"], [
            ["iteration / fastest bare around it (median of 2..R)", ratio,
             f"< {BF16_BAR}" if bf16 else f"<= {BAR}", verdict(passed)],
            ["iteration (median of 2..R), s", it_median, "", ""],
            ["bare Y @ D.T, NumPy (median of all repeats), s", median(bare_all), "", ""],
            ["fastest exact float32 product (median of the bares), s",
             median([b["median"] for b in bares]), "", ""],
            ["ratio of the medians", ratio_of_medians, "", ""],
            ["bare matmul(out=) (median), s", median(pre_all), "", ""],
            ["ratio against matmul(out=)", it_median / median(pre_all), "", ""],
            *([["codes with the float32 support (bfloat16 correlations)", support["share"],
                f">= {SUPPORT_BAR}", verdict(support["share"] >= SUPPORT_BAR)]]
              if support else []),
        ], title=f"one K-SVD iteration ({model.params['correlations']} correlations) vs the "
                 f"bare float32 GEMM, N={args.n_samples:,}, d={args.n_features}, "
                 f"K={args.n_atoms}, L={args.n_nonzero}")

        split = None
        if not args.no_split:
            split = time_split(path, model.atoms, args.n_nonzero, args.repeats, n_workers,
                               n_workers * threads, "omp-bf16" if bf16 else "omp")
            rows = []
            for name, v in split["worker_pieces"].items():
                rows.append(["worker: " + name, v["per_chunk_median"],
                             v["per_iteration_estimate"],
                             f"{100 * v['per_iteration_estimate'] / it_median:.1f}"])
            for name, v in split["driver_pieces"].items():
                rows.append(["driver: " + name, v["median"], v["per_iteration_estimate"],
                             f"{100 * v['per_iteration_estimate'] / it_median:.1f}"])
            main_pieces = ["read a chunk", "Gram D D^T (per worker, shared by its threads)",
                           "GEMM y @ D.T", "squared norms", "batch_omp", "residual_statistics"]
            accounted = sum(split["worker_pieces"][k]["per_iteration_estimate"]
                            for k in main_pieces)
            accounted += sum(v["per_iteration_estimate"] for v in split["driver_pieces"].values())
            split["accounted_per_iteration"] = accounted
            print()
            table(["piece", "s/chunk (1 thread)", "s/iteration est.", "% of iteration"], rows,
                  title=f"time split: {split['n_chunks']} chunks of {split['chunk_rows']} rows, "
                        f"{split['chunks_per_thread']:.2f} chunks per thread; chunk "
                        f"statistics {split['stats_bytes_per_chunk'] / 2**20:.1f} MiB")
            print(f"accounted (read+Gram+GEMM+norms+OMP+stats+driver): {accounted:.2f} s of "
                  f"{it_median:.2f} s measured; the rest is scheduling, transfers and "
                  "contention between the threads")

        write_json("bench_speed" if not bf16 else "bench_speed_bfloat16", {
            "hardware": hardware(), "support_vs_float32": support,
            "bar_bfloat16": BF16_BAR, "support_bar": SUPPORT_BAR,
            "params": vars(args), "n_workers": n_workers, "threads_per_worker": threads,
            "store": str(path), "cpu_busy_before_percent": busy_before,
            "iteration_seconds": iters, "bare_around_each_iteration": around,
            "ratio_per_iteration": ratios, "ratio_median_2_to_R": ratio,
            "iteration_median_2_to_R": it_median, "ratio_of_medians": ratio_of_medians,
            "fit_wall_seconds": fit_wall, "bare_products": bares,
            "bar": BAR, "pass": passed, "history": model.history,
            "recovered_fraction_after_R": rec, "split": split, "share_tasks": tasks})
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)
        if not args.keep and not args.workdir:
            shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
