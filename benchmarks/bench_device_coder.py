"""The PyTorch device coder against the numba coder: speed and agreement of the codes.

Planted data of bench_speed's shape scaled down (N=10,000 rows, d=768, 3072 atoms, 10
non-zeros, 20 dB noise, N(0, 1) coefficients; ``--positive``: |N(0, 1)|), coded against the
planted dictionary by

* the numba coder as the fit runs it: ``daskdict.learn.coding.code_block`` (per 1024-row
  batch the GEMM ``Y D^T`` with NumPy, then ``kernels.batch_omp``; ``--positive``:
  ``nonnegative.nonnegative_omp``), on one thread, and on a thread per core over 1024-row
  blocks (BLAS limited to one thread, as in the fit's workers);
* ``daskdict.learn.device_coder.device_batch_omp`` on device "cpu" (BLAS on one thread,
  ``--torch-threads`` intra-op threads, default 1: on a shared machine OpenMP threads that
  wait for each other are slow) and on "cuda" when torch sees a CUDA device (the time
  includes moving the rows in and the codes out);

and, for scale, the bare float32 product ``Y D^T`` (NumPy on one thread; on CUDA ``torch.mm``
with TF32 off). Each repeat runs every coder once, in rotating order (the machine's drift
cancels in the medians); printed are the median seconds, rows per second, the time over the
numba coder's on one thread, and per device the share of rows whose support (in order) is
the numba coder's, the largest relative difference of the values on those rows and both
coders' relative error ``|Y - X D| / |Y|``.

    python benchmarks/bench_device_coder.py                      # N=10,000, 3 repeats
    python benchmarks/bench_device_coder.py --n-samples 2000 --repeats 3
    python benchmarks/bench_device_coder.py --positive --tol 0.1
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from _common import environment, median, table, write_json


def planted_rows(args) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``x D + noise`` (float32) and the planted atoms (float32), block by block."""
    import scipy.sparse

    from daskdict.datasets.planted import planted_atoms

    rng = np.random.default_rng(0)
    atoms = planted_atoms(args.n_atoms, args.n_features, rng)
    noise_scale = np.sqrt(args.n_nonzero / args.n_features) / 10 ** (args.snr / 20)
    y = np.empty((args.n_samples, args.n_features), dtype=np.float32)
    for start in range(0, args.n_samples, 2048):
        n = min(2048, args.n_samples - start)
        indices = np.argpartition(rng.random((n, args.n_atoms)), args.n_nonzero,
                                  axis=1)[:, :args.n_nonzero]
        values = rng.standard_normal((n, args.n_nonzero))
        if args.positive:
            values = np.abs(values)
        codes = scipy.sparse.csr_matrix(
            (values.ravel(), indices.ravel(),
             np.arange(0, n * args.n_nonzero + 1, args.n_nonzero)), shape=(n, args.n_atoms))
        y[start:start + n] = codes @ atoms + noise_scale * rng.standard_normal(
            (n, args.n_features))
    return y, np.ascontiguousarray(atoms, dtype=np.float32)


def numba_coder(args, y, atoms, gram, threads):
    """``code_block`` over 1024-row blocks on ``threads`` threads (BLAS on one each)."""
    from threadpoolctl import threadpool_limits

    from daskdict.learn.coding import CODE_ROWS, code_block

    key = "omp-positive" if args.positive else "omp"
    if threads == 1:
        with threadpool_limits(limits=1):
            return code_block(y, atoms, gram, args.n_nonzero, args.tol, key)
    starts = range(0, y.shape[0], CODE_ROWS)
    with threadpool_limits(limits=1), ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda s: code_block(y[s:s + CODE_ROWS], atoms, gram,
                                                   args.n_nonzero, args.tol, key), starts))
    return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])


def device_coder(args, y, atoms, gram, device):
    from threadpoolctl import threadpool_limits

    from daskdict.learn.device_coder import device_batch_omp

    with threadpool_limits(limits=1, user_api="blas"):
        return device_batch_omp(y, atoms, gram, args.n_nonzero, args.tol, device=device,
                                positive=args.positive)


def bare_product(y, atoms, device):
    """``Y D^T`` in float32: NumPy on the CPU, ``torch.mm`` (TF32 off) on CUDA."""
    if device == "cpu":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return np.matmul(y, atoms.T)
    import torch

    from daskdict.learn.device_coder import exact_float32

    dev = torch.device(device)
    d = torch.from_numpy(atoms).to(dev)
    with torch.no_grad(), exact_float32(torch, dev):
        out = torch.mm(torch.from_numpy(y).to(dev), d.T)
        torch.cuda.synchronize(dev)
    return out


def agreement(reference, codes, y, atoms) -> dict:
    """Share of rows with the reference's support (in order), the largest relative value
    difference on them, and both relative errors."""
    from daskdict.learn.kernels import codes_times_atoms

    (ri, rv), (di, dv) = reference, codes
    same = (ri == di).all(axis=1)
    scale = np.abs(rv[same]).max(axis=1, keepdims=True) + 1e-30
    diff = float((np.abs(rv[same] - dv[same]) / scale).max()) if same.any() else float("nan")
    norm = float(np.linalg.norm(y))

    def error(c):
        return float(np.linalg.norm(y - codes_times_atoms(c[0], c[1], atoms)) / norm)

    return {"same_support": float(same.mean()), "max_relative_value_diff": diff,
            "error_numba": error(reference), "error_device": error(codes)}


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=10_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--tol", type=float, default=0.0)
    parser.add_argument("--positive", action="store_true",
                        help="non-negative coders, on |N(0, 1)| coefficients")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch's intra-op threads for device 'cpu'")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)

    from daskdict.learn.coding import gram_matrix
    from daskdict.learn.device_coder import available_devices

    env = environment()
    cuda = [d for d in available_devices() if d.startswith("cuda")]
    devices = ["cpu", *cuda[:1]]
    print(f"machine: {env['cores']} cores, load average {env['loadavg']}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), devices {devices}",
          flush=True)
    y, atoms = planted_rows(args)
    gram = gram_matrix(atoms)
    methods = {"numba, 1 thread": lambda: numba_coder(args, y, atoms, gram, 1),
               f"numba, {env['cores']} threads": lambda: numba_coder(args, y, atoms, gram,
                                                                     env["cores"])}
    methods.update({f"device {d}": (lambda d=d: device_coder(args, y, atoms, gram, d))
                    for d in devices})
    methods.update({f"bare GEMM, {d}": (lambda d=d: bare_product(y, atoms, d))
                    for d in devices})
    for fn in methods.values():  # compile, load, warm the devices
        fn()
    names = list(methods)
    seconds = {name: [] for name in names}
    codes = {}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            spent, codes[name] = clock(methods[name])
            seconds[name].append(spent)
            print(f"  repeat {r + 1}: {name} {spent:.3f} s", flush=True)
    base = median(seconds["numba, 1 thread"])
    print()
    table(["coder", "s (median)", "rows/s", "/ numba 1 thread"],
          [[name, median(seconds[name]), args.n_samples / median(seconds[name]),
            median(seconds[name]) / base] for name in names],
          title=f"{'non-negative' if args.positive else 'signed'} OMP, N={args.n_samples:,}, "
                f"d={args.n_features}, K={args.n_atoms}, L={args.n_nonzero}, tol={args.tol}, "
                f"{args.repeats} repeats")
    reference = codes["numba, 1 thread"]
    agree = {d: agreement(reference, codes[f"device {d}"], y, atoms) for d in devices}
    print()
    table(["device", "same support", "max rel. value diff", "error numba", "error device"],
          [[d, a["same_support"], a["max_relative_value_diff"], a["error_numba"],
            a["error_device"]] for d, a in agree.items()],
          title="device codes against the numba coder's")
    write_json("bench_device_coder" + ("-positive" if args.positive else ""), {
        "params": vars(args), "torch": torch.__version__, "torch_threads":
        torch.get_num_threads(), "devices": devices,
        "cuda_device": torch.cuda.get_device_name(0) if len(devices) > 1 else None,
        "seconds": seconds, "median_seconds": {n: median(s) for n, s in seconds.items()},
        "agreement": agree})


if __name__ == "__main__":
    main()
