"""daskdict quickstart as a script: the same steps as notebooks/quickstart.ipynb.

1. write a planted embedding store (20,000 x 64, 128 atoms, 4 per sample, 20 dB SNR);
2. start a two-worker LocalCluster;
3. fit a K-SVD dictionary and plot its error per iteration;
4. encode the store into sparse codes and count how often each atom is used;
5. report the fraction of planted atoms recovered;
6. save the dictionary and load it back.

Run it with ``python examples/quickstart.py`` (outputs in a temporary folder, removed at the
end) or ``python examples/quickstart.py --workdir quickstart-out`` to keep the store, the codes,
the dictionary and the plots (error.png, usage.png). See examples/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def run(workdir: Path, n_samples: int = 20_000, n_iter: int = 20, n_workers: int = 2,
        plots: bool = True) -> float:
    """Run the quickstart in ``workdir``; return the fraction of planted atoms recovered."""
    from distributed import Client, LocalCluster

    import daskdict
    from daskdict.datasets.planted import write_planted_store
    from daskdict.evaluation.metrics import recovered_fraction

    start = time.perf_counter()

    # 1. A planted store: each row is 4 of 128 random unit atoms plus noise, in 5,000-row chunks.
    store, planted = write_planted_store(
        workdir / "planted.zarr",
        n_samples=n_samples, n_features=64, n_atoms=128, n_nonzero=4, snr_db=20,
        random_state=0, chunk_rows=5_000, overwrite=True,
    )
    layer = store.info()["layers"]["final"]
    print(f"store: {store.path} shape {tuple(layer['shape'])} chunks {tuple(layer['chunks'])}")

    # 2. A local cluster; services listen on 127.0.0.1 only, the dashboard on a free port.
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        print("dashboard:", client.dashboard_link)

        # 3. Fit: one pass over the chunks per iteration.
        model = daskdict.fit(store.path, n_atoms=128, n_nonzero=4, n_iter=n_iter,
                             random_state=0, client=client, verbose=True)
        print(model)
        for record in model.history:
            print(f"  iteration {record['iteration']:2d}: relative error "
                  f"{record['relative_error']:.4f}  FVU {record['fvu']:.4f}  "
                  f"dead atoms {record['dead_atoms']}  {record['seconds']:.2f} s")

        # 4. Encode: the codes are written next to the store (planted.zarr.codes-final.zarr).
        codes = model.encode(store.path, client=client)
    sparse_codes = codes.to_sparse()
    print(f"sparse codes: shape {sparse_codes.shape}, nnz {sparse_codes.nnz}")
    indices = np.asarray(codes.indices)
    usage = np.bincount(indices[indices >= 0], minlength=model.n_atoms)
    print(f"atom usage: min {usage.min()}, median {int(np.median(usage))}, max {usage.max()}, "
          f"unused {(usage == 0).sum()}")

    # 5. Recovery of the planted atoms (1 - |cos| < 0.01, the K-SVD paper's criterion).
    fraction = recovered_fraction(planted, model.atoms)
    print(f"recovered: {fraction:.3f}")

    # 6. Save and load.
    path = model.save(workdir / "dictionary.zarr")
    reloaded = daskdict.load(path)
    assert np.array_equal(reloaded.atoms, model.atoms)
    print(f"saved and reloaded {path}")

    if plots:
        _plot(model.history, usage, workdir)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return fraction


def _plot(history: list[dict], usage: np.ndarray, workdir: Path) -> None:
    """Write error.png (error per iteration) and usage.png (atom usage histogram)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    iterations = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(iterations, [h["relative_error"] for h in history], marker="o",
            label="relative error")
    ax.plot(iterations, [h["fvu"] for h in history], marker="s", label="FVU")
    ax.axhline(0.1, color="C0", linestyle=":", label="noise floor (rel. error)")
    ax.axhline(0.01, color="C1", linestyle=":", label="noise floor (FVU)")
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_title("K-SVD on the planted store")
    ax.legend(fontsize="small", ncol=2)
    fig.savefig(workdir / "error.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(usage, bins=30)
    ax.set_xlabel("samples using the atom")
    ax.set_ylabel("number of atoms")
    ax.set_title("Atom usage")
    fig.savefig(workdir / "usage.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"plots: {workdir / 'error.png'}, {workdir / 'usage.png'}")


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the store, codes, dictionary and plots (kept); "
                             "default: a temporary folder, removed at the end")
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--no-plots", action="store_true",
                        help="with --workdir: skip error.png and usage.png")
    args = parser.parse_args(argv)
    options = dict(n_samples=args.n_samples, n_iter=args.n_iter, n_workers=args.n_workers)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run(args.workdir, plots=not args.no_plots, **options)
    with tempfile.TemporaryDirectory(prefix="daskdict-quickstart-") as tmp:
        return run(Path(tmp), plots=False, **options)  # plots would be deleted with the folder


# LocalCluster starts worker processes, which re-import this file: keep the work under the guard.
if __name__ == "__main__":
    main()
