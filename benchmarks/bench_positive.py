"""Cost of non-negative codes: one K-SVD iteration with the non-negative coder against the signed.

Planted data of bench_speed's shape (d=768, 3072 atoms, 10 non-zeros, 20 dB noise): the
planted dictionary of ``daskdict.datasets.planted.planted_atoms``, each row a sum of 10
distinct atoms with |N(0, 1)| coefficients (``--coefficients signed``: N(0, 1), as the
planted stores) plus white noise of the planted stores' level. The dictionary coded against
is the planted one (a fit near convergence; ``--dictionary data``: further rows of the same
kind scaled to unit norm, like a fit's first iteration).

Everything runs on one thread (threadpoolctl limits BLAS to 1 thread), on blocks of
``CODE_ROWS`` rows, as ``daskdict.learn.coding.code_block`` codes them: per block, the GEMM
``Y D^T`` (into a reused buffer), ``kernels.batch_omp`` (signed), ``nonnegative.nonnegative_omp``
and ``kernels.residual_statistics`` with each coder's codes. The two coders (and the two
statistics calls) run side by side on each block, in alternating order from one repeat to the
next, so that the machine's drift cancels in their ratios. Per repeat the blocks' times are
summed; printed are the medians over repeats of:

* the coder ratio ``nonnegative_omp / batch_omp``;
* the iteration ratio ``(GEMM + nonnegative_omp + statistics) / (GEMM + batch_omp +
  statistics)`` (the iteration's per-row work; the Gram matrix and the driver's atom update
  are the same for both coders and left out, which makes this ratio an upper bound);

with the relative reconstruction error ``|Y - X D| / |Y|`` and the mean number of non-zeros of
each coder's codes.

Bar: iteration ratio <= 1.3.

    python benchmarks/bench_positive.py                    # N=20,000, 5 repeats
    python benchmarks/bench_positive.py --n-samples 4096 --repeats 3
    python benchmarks/bench_positive.py --coefficients signed --dictionary data
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import environment, median, table, verdict, write_json

BAR = 1.3


def planted_rows(args) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``x D + noise`` (float32) and the planted atoms, made block by block (the
    generator's dense (N, L, d) temporary would take gigabytes)."""
    import scipy.sparse

    from daskdict.datasets.planted import planted_atoms

    rng = np.random.default_rng(0)
    atoms = planted_atoms(args.n_atoms, args.n_features, rng)
    noise_scale = np.sqrt(args.n_nonzero / args.n_features) / 10 ** (args.snr / 20)
    # with --dictionary data, the atoms are further rows of the same kind (not rows coded)
    n_rows = args.n_samples + (args.n_atoms if args.dictionary == "data" else 0)
    y = np.empty((n_rows, args.n_features), dtype=np.float32)
    for start in range(0, n_rows, 2048):
        n = min(2048, n_rows - start)
        indices = np.argpartition(rng.random((n, args.n_atoms)), args.n_nonzero,
                                  axis=1)[:, :args.n_nonzero]
        values = rng.standard_normal((n, args.n_nonzero))
        if args.coefficients == "positive":
            values = np.abs(values)
        codes = scipy.sparse.csr_matrix(
            (values.ravel(), indices.ravel(), np.arange(0, n * args.n_nonzero + 1,
                                                        args.n_nonzero)),
            shape=(n, args.n_atoms))
        y[start:start + n] = codes @ atoms + noise_scale * rng.standard_normal(
            (n, args.n_features))
    if args.dictionary == "data":
        atoms = y[args.n_samples:].astype(np.float64)
        atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    return y[:args.n_samples], np.ascontiguousarray(atoms, dtype=np.float32)


def _clock(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def one_repeat(y, atoms, gram, sqnorms, n_nonzero, n_worst, signed_first):
    """Per-piece seconds over all blocks, and each coder's summed residual statistics."""
    from daskdict.learn import kernels
    from daskdict.learn.coding import CODE_ROWS, correlation_buffer
    from daskdict.learn.nonnegative import nonnegative_omp

    coders = {"signed": kernels.batch_omp, "nonnegative": nonnegative_omp}
    order = ["signed", "nonnegative"] if signed_first else ["nonnegative", "signed"]
    seconds = {k: 0.0 for k in ("gemm", "signed", "nonnegative", "stats_signed",
                                "stats_nonnegative")}
    sums = {name: np.zeros(5) for name in coders}
    buffer = correlation_buffer(atoms, y.dtype)
    for start in range(0, y.shape[0], CODE_ROWS):
        rows = y[start:start + CODE_ROWS]
        corr = buffer[:rows.shape[0]]
        seconds["gemm"] += _clock(np.matmul, rows, atoms.T, corr)[0]
        codes = {}
        for name in order:
            spent, codes[name] = _clock(coders[name], corr, gram,
                                        sqnorms[start:start + CODE_ROWS], n_nonzero, 0.0)
            seconds[name] += spent
        for name in order:
            spent, stats = _clock(kernels.residual_statistics, rows, atoms, *codes[name],
                                  n_worst)
            seconds["stats_" + name] += spent
            sums[name] += stats[3]
    nonzeros = {name: sums[name][4] / y.shape[0] for name in coders}
    errors = {name: float(np.sqrt(sums[name][0] / sums[name][1])) for name in coders}
    return seconds, errors, nonzeros


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--n-features", type=int, default=768)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--coefficients", choices=("positive", "signed"), default="positive")
    parser.add_argument("--dictionary", choices=("planted", "data"), default="planted")
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from daskdict.learn import kernels
    from daskdict.learn.coding import CODE_ROWS, gram_matrix
    from daskdict.learn.nonnegative import nonnegative_omp
    from daskdict.learn.updates import n_candidates

    env = environment()
    print(f"machine: {env['cores']} cores, load average {env['loadavg']}, numba "
          f"{env['numba']}, numpy {env['numpy']}", flush=True)
    start = time.perf_counter()
    y, atoms = planted_rows(args)
    print(f"data {y.shape} float32 ({args.coefficients} coefficients, {args.dictionary} "
          f"dictionary) in {time.perf_counter() - start:.1f} s", flush=True)
    n_worst = n_candidates(args.n_atoms)
    with threadpool_limits(limits=1):
        gram = gram_matrix(atoms)
        sqnorms = np.einsum("ij,ij->i", y, y)
        # compile (or load) the kernels outside the timings
        small = y[:8] @ atoms.T
        for coder in (kernels.batch_omp, nonnegative_omp):
            idx, val = coder(small, gram, sqnorms[:8], args.n_nonzero, 0.0)
            kernels.residual_statistics(y[:8], atoms, idx, val, n_worst)
        runs = [one_repeat(y, atoms, gram, sqnorms, args.n_nonzero, n_worst, r % 2 == 0)
                for r in range(args.repeats)]
    seconds = [run[0] for run in runs]
    errors, nonzeros = runs[0][1], runs[0][2]
    coder_ratios = [s["nonnegative"] / s["signed"] for s in seconds]
    iteration = {name: [s["gemm"] + s[name] + s["stats_" + name] for s in seconds]
                 for name in ("signed", "nonnegative")}
    iteration_ratios = [n / s for n, s in zip(iteration["nonnegative"], iteration["signed"],
                                              strict=True)]
    coder_ratio, iteration_ratio = median(coder_ratios), median(iteration_ratios)
    n_blocks = -(-args.n_samples // CODE_ROWS)

    print()
    table(["piece", "s per repeat (median)", f"ms per {CODE_ROWS}-row block"],
          [[name, median([s[key] for s in seconds]),
            1000 * median([s[key] for s in seconds]) / n_blocks]
           for name, key in (("GEMM Y D^T", "gemm"), ("batch_omp (signed)", "signed"),
                             ("nonnegative_omp", "nonnegative"),
                             ("residual_statistics, signed codes", "stats_signed"),
                             ("residual_statistics, non-negative codes", "stats_nonnegative"))],
          title=f"one thread, N={args.n_samples:,}, d={args.n_features}, K={args.n_atoms}, "
                f"L={args.n_nonzero}, {args.repeats} repeats")
    print()
    table(["measure", "value", "bar", "result"], [
        ["coder ratio nonnegative_omp / batch_omp", coder_ratio, "", ""],
        ["iteration ratio (GEMM + coder + statistics)", iteration_ratio, f"<= {BAR}",
         verdict(iteration_ratio <= BAR)],
        ["relative error |Y - XD| / |Y|, signed", errors["signed"], "", ""],
        ["relative error |Y - XD| / |Y|, non-negative", errors["nonnegative"], "", ""],
        ["non-zeros per row, signed", nonzeros["signed"], "", ""],
        ["non-zeros per row, non-negative", nonzeros["nonnegative"], "", ""],
    ], title="non-negative against signed (medians of the per-repeat ratios)")
    write_json("bench_positive", {
        "params": vars(args), "seconds_per_repeat": seconds, "coder_ratios": coder_ratios,
        "iteration_ratios": iteration_ratios, "coder_ratio": coder_ratio,
        "iteration_ratio": iteration_ratio, "relative_error": errors,
        "nonzeros_per_row": nonzeros, "bar": BAR, "pass": iteration_ratio <= BAR})


if __name__ == "__main__":
    main()
