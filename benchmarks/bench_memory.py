"""Peak memory of a fit does not grow with N: 1,000,000 x 768 rows against 250,000 x 768.

Planted stores (float32, d=768, 3072 atoms, 10 non-zeros, 20 dB) are written under
/tmp/daskdict-bench (removed at the end unless --keep). Each fit,
``daskdict.fit(store, n_atoms=3072, n_nonzero=10, n_iter=2, client=client)``, runs on its own
LocalCluster of 2 single-threaded workers limited to 2 GB each (4 GB in all), in a fresh
subprocess so that the sizes do not share a client process. A background thread samples the
RSS (psutil) of the client process and of all its descendants (the two worker processes and
multiprocessing's resource tracker) every 0.1 s; the peak is the maximum over samples of the
sum.

Bar: peak(1M) / peak(250k) <= 1.25, and both fits complete.

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --sizes 50000 200000 --n-iter 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import table, verdict, write_json

BAR = 1.25
DEFAULT_ROOT = "/tmp/daskdict-bench"


class RSSSampler(threading.Thread):
    """Samples the RSS of this process and its descendants every ``interval`` seconds."""

    def __init__(self, interval=0.1):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.stop_event = threading.Event()
        self.peak_total = 0
        self.peak_main = 0
        self.peak_children = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self.max_children = 0

    def sample(self):
        total = main = self.me.memory_info().rss
        children = 0
        procs = self.me.children(recursive=True)
        self.max_children = max(self.max_children, len(procs))
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            children += rss
            self.peak_by_pid[proc.pid] = max(self.peak_by_pid.get(proc.pid, 0), rss)
        total += children
        self.peak_total = max(self.peak_total, total)
        self.peak_main = max(self.peak_main, main)
        self.peak_children = max(self.peak_children, children)
        self.samples += 1
        return total

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self):
        self.stop_event.set()
        self.join()
        self.sample()


def store_path(root: Path, n: int) -> Path:
    return root / f"planted-{n}x768-k3072.zarr"


def write_store(root: Path, n: int, args) -> float:
    from daskdict.datasets.planted import write_planted_store

    path = store_path(root, n)
    if path.exists() and not args.rewrite:
        print(f"using the existing store {path}", flush=True)
        return 0.0
    start = time.perf_counter()
    write_planted_store(path, n, args.n_features, args.n_atoms, args.n_nonzero, 20.0,
                        random_state=0, overwrite=True)
    seconds = time.perf_counter() - start
    print(f"wrote {path} in {seconds:.0f} s", flush=True)
    return seconds


def single(args):
    """Runs in a subprocess: one fit on its own cluster, result as JSON on stdout's last line."""
    import os

    from distributed import Client, LocalCluster

    import daskdict

    path = store_path(Path(args.root), args.single)
    result = {"n_samples": args.single, "completed": False, "error": None}
    with LocalCluster(n_workers=args.n_workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit=args.memory_limit
                      ) as cluster, Client(cluster) as client:
        worker_pids = sorted(client.run(os.getpid).values())
        sampler = RSSSampler(args.interval)
        result["baseline_bytes"] = sampler.sample()
        sampler.start()
        start = time.perf_counter()
        try:
            model = daskdict.fit(str(path), n_atoms=args.n_atoms, n_nonzero=args.n_nonzero,
                                 n_iter=args.n_iter, client=client, random_state=0,
                                 verbose=False)
            result["completed"] = True
            result["history"] = model.history
        except Exception as exc:  # report, do not crash: a failed fit is a result
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            result["seconds"] = time.perf_counter() - start
            sampler.stop()
        worker_pids_after = sorted(client.run(os.getpid).values())
    result.update(
        peak_total_bytes=sampler.peak_total, peak_main_bytes=sampler.peak_main,
        peak_descendants_bytes=sampler.peak_children,
        peak_by_pid={str(k): v for k, v in sampler.peak_by_pid.items()},
        worker_pids=worker_pids, worker_pids_after=worker_pids_after,
        workers_restarted=worker_pids != worker_pids_after, samples=sampler.samples,
        max_descendants=sampler.max_children)
    print("RESULT " + json.dumps(result, default=float), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[250_000, 1_000_000],
                        metavar=("SMALL", "LARGE"))
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=2)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GB", help="per worker")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling period, s")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="where the stores are written")
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    parser.add_argument("--rewrite", action="store_true", help="rewrite existing stores")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        single(args)
        return

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    results = {}
    write_seconds = {}
    try:
        for n in args.sizes:
            write_seconds[n] = write_store(root, n, args)
        for n in args.sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--single", str(n),
                   *sys.argv[1:]]
            print(f"fitting {n:,} rows ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                results[n] = json.loads(lines[-1][len("RESULT "):])
            else:
                results[n] = {"n_samples": n, "completed": False,
                              "error": f"subprocess rc={proc.returncode}: "
                                       f"{proc.stderr.strip()[-2000:]}"}
            results[n]["stderr_tail"] = proc.stderr.strip()[-3000:]
            r = results[n]
            print(f"  {n:,} rows: completed={r['completed']}, peak "
                  f"{r.get('peak_total_bytes', 0) / 2**30:.2f} GiB, "
                  f"{r.get('seconds', float('nan')):.0f} s", flush=True)
    finally:
        if not args.keep:
            for n in args.sizes:
                shutil.rmtree(store_path(root, n), ignore_errors=True)
            try:
                root.rmdir()
            except OSError:
                pass

    small, large = args.sizes
    gib = 2**30
    rows = []
    for n in args.sizes:
        r = results[n]
        workers = [r.get("peak_by_pid", {}).get(str(p), 0) / gib for p in r.get("worker_pids", [])]
        rows.append([f"{n:,}", str(r["completed"]), r.get("peak_total_bytes", 0) / gib,
                     r.get("peak_main_bytes", 0) / gib,
                     " + ".join(f"{w:.2f}" for w in workers),
                     r.get("baseline_bytes", 0) / gib, r.get("seconds", float("nan")),
                     str(r.get("workers_restarted"))])
    ok = all(results[n]["completed"] for n in args.sizes)
    ratio = (results[large].get("peak_total_bytes", 0) / results[small]["peak_total_bytes"]
             if results[small].get("peak_total_bytes") else float("nan"))
    print()
    table(["rows", "completed", "peak GiB (sum)", "client GiB", "workers GiB",
           "before fit GiB", "fit s", "worker restarted"], rows,
          title=f"peak RSS of a {args.n_iter}-iteration fit, {args.n_workers} workers x "
                f"{args.memory_limit}, d={args.n_features}, K={args.n_atoms}, "
                f"L={args.n_nonzero}")
    table(["measure", "value", "bar", "result"],
          [[f"peak {large:,} / peak {small:,}", ratio, f"<= {BAR}",
            verdict(ok and ratio <= BAR)]])
    for n in args.sizes:
        if results[n].get("error"):
            print(f"\n{n:,} rows failed: {results[n]['error']}")
    write_json("bench_memory", {"params": {k: v for k, v in vars(args).items()
                                           if k != "single"},
                                "write_seconds": write_seconds,
                                "results": {str(k): v for k, v in results.items()},
                                "ratio_large_over_small": ratio, "bar": BAR,
                                "pass": bool(ok and ratio <= BAR)})


if __name__ == "__main__":
    main()
