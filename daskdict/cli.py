"""``daskdict <verb>``: fit, encode, info and demo from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import zarr

from .errors import DaskdictError


def _cmd_fit(args) -> int:
    from .learn import fit
    from .store import check_writable

    check_writable(args.out)  # before the work, not after it

    model = fit(args.store, n_atoms=args.atoms, n_nonzero=args.nonzero, n_iter=args.iters,
                layer=args.layer, coder=args.coder, update=args.update, tol=args.tol,
                random_state=args.seed, checkpoint=args.checkpoint, dtype=args.dtype,
                client="threads" if args.in_process else None, progress=not args.quiet)
    model.save(args.out)
    last = model.history[-1] if model.history else {}
    print(json.dumps({"out": str(args.out), "n_atoms": model.n_atoms,
                      "relative_error": last.get("relative_error"), "fvu": last.get("fvu")}))
    return 0


def _cmd_encode(args) -> int:
    from .model import load

    model = load(args.model)
    codes = model.encode(args.store, layer=args.layer, out=args.out,
                         client="threads" if args.in_process else None)
    print(json.dumps({"out": str(args.out) if args.out else None, "n_samples": len(codes),
                      "n_atoms": codes.n_atoms, "n_nonzero": int(codes.indices.shape[1])}))
    return 0


def describe(path: str | Path) -> dict:
    """What a store, dictionary, codes group or Zarr array holds (JSON-ready)."""
    from .store import StoreNotFoundError, open_store

    path = Path(path)
    if not path.exists():
        raise StoreNotFoundError(f"No such path: {str(path)!r}.")
    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return {"kind": "zarr array", "path": str(path), "shape": list(node.shape),
                "dtype": str(node.dtype), "chunks": list(node.chunks)}
    meta = dict(node.attrs.get("daskdict", {}))
    if meta.get("kind") == "dictionary":
        atoms = node["atoms"]
        history = meta.get("history", [])
        return {"kind": "dictionary", "path": str(path), "n_atoms": atoms.shape[0],
                "n_features": atoms.shape[1], "params": meta.get("params"),
                "n_iter": len(history),
                "final": history[-1] if history else None,
                "trained_on": meta.get("fingerprint")}
    if meta.get("kind") == "codes":
        return {"kind": "codes", "path": str(path), "shape": [node["indices"].shape[0],
                meta["n_atoms"]], "n_nonzero": node["indices"].shape[1],
                "source": meta.get("source")}
    return open_store(path).info()


def _cmd_info(args) -> int:
    print(json.dumps(describe(args.path), indent=2, default=str))
    return 0


def _cmd_demo(args) -> int:
    from .datasets import write_planted_store
    from .evaluate import recovered_fraction
    from .learn import fit

    workdir = Path(args.out or tempfile.mkdtemp(prefix="daskdict-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "planted.zarr"
    print(f"daskdict demo: writing {args.samples} x {args.features} planted embeddings "
          f"({args.atoms} concepts, {args.nonzero} per sample, {args.snr} dB) to {store_path}")
    _, atoms = write_planted_store(store_path, args.samples, args.features, args.atoms,
                                   args.nonzero, args.snr, random_state=args.seed,
                                   chunk_rows=args.chunk_rows, overwrite=True)
    model = fit(store_path, n_atoms=args.atoms, n_nonzero=args.nonzero, n_iter=args.iters,
                random_state=args.seed, progress=not args.quiet,
                client="threads" if args.in_process else None)
    model.save(workdir / "dictionary.zarr")
    fraction = recovered_fraction(atoms, model.atoms)
    last = model.history[-1]
    print(f"relative error {last['relative_error']:.4f}, FVU {last['fvu']:.4f}")
    print(f"recovered {round(fraction * args.atoms)} of {args.atoms} planted atoms "
          f"({100 * fraction:.1f}%); dictionary saved to {workdir / 'dictionary.zarr'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daskdict",
        description="Concepts in vision-transformer embeddings: out-of-core K-SVD on Dask.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("fit", help="learn a dictionary from a store or Zarr array")
    p.add_argument("store", help="embedding store or Zarr array (N x d)")
    p.add_argument("--atoms", type=int, default=None, help="number of atoms (default 4 x d)")
    p.add_argument("--nonzero", type=int, default=10, help="atoms per sample (default 10)")
    p.add_argument("--iters", type=int, default=10, help="K-SVD iterations (default 10)")
    p.add_argument("--layer", default=None, help="layer of the store (default 'final')")
    p.add_argument("--out", required=True, help="where to save the dictionary (Zarr)")
    p.add_argument("--coder", choices=("omp", "mp"), default="omp")
    p.add_argument("--update", choices=("approx", "ksvd"), default="approx")
    p.add_argument("--tol", type=float, default=0.0, help="relative residual to stop coding")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=None, help="random_state")
    p.add_argument("--checkpoint", default=None, help="Zarr path to checkpoint and resume")
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)

    p = verbs.add_parser("encode", help="sparse codes of a store over a dictionary")
    p.add_argument("store", help="embedding store or Zarr array")
    p.add_argument("--model", required=True, help="dictionary saved by 'daskdict fit'")
    p.add_argument("--layer", default=None)
    p.add_argument("--out", default=None, help="Zarr group for the codes "
                   "(default: <store>.codes-<layer>.zarr)")
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.set_defaults(func=_cmd_encode)

    p = verbs.add_parser("info", help="what a store, dictionary or codes group holds")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)

    p = verbs.add_parser("demo", help="fit planted concepts on a LocalCluster and score them")
    p.add_argument("--out", default=None, help="folder for the demo's files (default: temp)")
    p.add_argument("--samples", type=int, default=40_000)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--atoms", type=int, default=128)
    p.add_argument("--nonzero", type=int, default=4)
    p.add_argument("--snr", type=float, default=20.0, help="signal-to-noise ratio in dB")
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--chunk-rows", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``daskdict`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DaskdictError, FileExistsError) as exc:
        print(f"daskdict {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"daskdict {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
