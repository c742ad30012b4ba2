"""``daskdict <verb>``: fit, encode, info, demo, plan and more from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import zarr

from daskdict.compute.clusters import KINDS
from daskdict.errors import DaskdictError


def _cmd_fit(args) -> int:
    from daskdict.io.store import check_writable
    from daskdict.learn.training import fit

    check_writable(args.out)  # before the work, not after it

    with contextlib.ExitStack() as stack:
        client = "threads" if args.in_process else None
        if args.cluster != "local" or args.jobs is not None:
            from daskdict.compute.clusters import cluster

            client = stack.enter_context(cluster(args.cluster, jobs=args.jobs))
        model = fit(args.store, n_atoms=args.atoms, n_nonzero=args.nonzero, n_iter=args.iters,
                    layer=args.layer, coder=args.coder, update=args.update, tol=args.tol,
                    random_state=args.seed, checkpoint=args.checkpoint, dtype=args.dtype,
                    client=client, progress=not args.quiet)
    model.save(args.out)
    last = model.history[-1] if model.history else {}
    print(json.dumps({"out": str(args.out), "n_atoms": model.n_atoms,
                      "relative_error": last.get("relative_error"), "fvu": last.get("fvu")}))
    return 0


def _cmd_encode(args) -> int:
    from daskdict.learn.dictionary import load

    model = load(args.model)
    codes = model.encode(args.store, layer=args.layer, out=args.out,
                         client="threads" if args.in_process else None)
    print(json.dumps({"out": str(args.out) if args.out else None, "n_samples": len(codes),
                      "n_atoms": codes.n_atoms, "n_nonzero": int(codes.indices.shape[1])}))
    return 0


def describe(path: str | Path) -> dict:
    """What a store, dictionary, codes group or Zarr array holds (JSON-ready)."""
    from daskdict.io.store import StoreNotFoundError, open_store

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
    from daskdict.datasets.planted import planted_images, write_named_planted_store
    from daskdict.evaluation.metrics import recovered_fraction
    from daskdict.explanations.explain import explain, explanation_accuracy
    from daskdict.learn.training import fit
    from daskdict.report.html import write_report

    workdir = Path(args.out or tempfile.mkdtemp(prefix="daskdict-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "planted.zarr"
    print(f"daskdict demo: writing {args.samples} x {args.features} planted embeddings "
          f"({args.atoms} concepts, {args.nonzero} per sample, {args.snr} dB) to {store_path}")
    store, atoms, names = write_named_planted_store(
        store_path, args.samples, args.features, args.atoms, args.nonzero, args.snr,
        random_state=args.seed, chunk_rows=args.chunk_rows, overwrite=True)
    model = fit(store_path, n_atoms=args.atoms, n_nonzero=args.nonzero, n_iter=args.iters,
                random_state=args.seed, progress=not args.quiet,
                client="threads" if args.in_process else None)
    model.save(workdir / "dictionary.zarr")
    fraction = recovered_fraction(atoms, model.atoms)
    last = model.history[-1]
    print(f"relative error {last['relative_error']:.4f}, FVU {last['fvu']:.4f}")
    print(f"recovered {round(fraction * args.atoms)} of {args.atoms} planted atoms "
          f"({100 * fraction:.1f}%); dictionary saved to {workdir / 'dictionary.zarr'}")
    codes = model.encode(store_path, out=workdir / "codes.zarr", client="threads")
    explanations = explain(codes, store, method="keywords")
    explanations.to_json(workdir / "explanations.json")
    accuracy = explanation_accuracy(explanations, atoms, model.atoms, names)
    print(f"explained {accuracy['n_correct']} of {accuracy['n_recovered']} recovered concepts "
          f"by their planted name ({100 * accuracy['accuracy']:.1f}%, keywords); e.g. concept "
          f"{explanations.rows[0]['atom']}: {', '.join(explanations.rows[0]['themes'][:3])}")
    report = write_report(workdir / "report.html", explanations, codes=codes,
                          images=planted_images(store), model=model,
                          title="daskdict demo: planted concepts")
    print(f"report: {report}")
    return 0


def _cmd_report(args) -> int:
    from daskdict.errors import InvalidInputError
    from daskdict.explanations.explain import Explanations, explain
    from daskdict.io.store import check_writable
    from daskdict.learn.dictionary import Codes, Dictionary
    from daskdict.report.html import write_report

    check_writable(args.out)
    if args.model is None and args.codes is None:
        raise InvalidInputError("Give --model DICTIONARY (to encode the store) or --codes CODES.")
    graph = None
    if args.graph:
        from daskdict.graph.estimator import ConceptGraph

        if args.graph_layer is None:
            raise InvalidInputError("--graph needs --graph-layer: the graph layer of the "
                                    "explained concepts (0 = the graph's first layer).")
        graph = ConceptGraph.load(args.graph)
    model = Dictionary.load(args.model) if args.model else None
    if args.codes:
        codes = Codes.load(args.codes)
    else:
        codes = model.encode(args.store, layer=args.layer,
                             client="threads" if args.in_process else None)
    if args.explanations:
        explanations = Explanations.load(args.explanations)
    else:
        if args.method == "llm":
            raise InvalidInputError("The report computes 'keywords' or 'falcon' explanations; "
                                    "for 'llm', run daskdict.explain in Python and pass "
                                    "--explanations FILE.")
        options = {}
        if args.method == "falcon":
            if args.text_encoder is None:
                raise InvalidInputError("--method falcon needs --text-encoder: a Hugging Face "
                                        "CLIP (name or folder), or 'planted' on planted data.")
            if args.text_encoder == "planted":
                from daskdict.datasets.planted import planted_text_encoder

                options["text_encoder"] = planted_text_encoder(args.store)
            else:
                from daskdict.evaluation.metrics import clip_text_encoder

                options["text_encoder"] = clip_text_encoder(args.text_encoder)
        explanations = explain(codes, args.store, method=args.method, top_n=args.top_n,
                               layer=args.layer, **options)
    table = Path(f"{Path(args.out).with_suffix('')}.explanations.json")
    explanations.to_json(table)
    report = write_report(args.out, explanations, codes=codes, model=model, graph=graph,
                          graph_layer=args.graph_layer,
                          title=args.title or f"daskdict concepts of {args.store}")
    print(json.dumps({"out": str(report), "explanations": str(table),
                      "n_atoms": len(explanations), "method": explanations.meta.get("method")}))
    return 0


def _cmd_graph(args) -> int:
    import numpy as np

    from daskdict.errors import InvalidInputError
    from daskdict.graph.estimator import ConceptGraph, fit_layers, hidden_layers
    from daskdict.io.store import check_writable, open_store

    check_writable(args.out)  # before the work, not after it
    names = args.layers or hidden_layers(open_store(args.store))
    if len(names) < 2:
        raise InvalidInputError(
            f"A concept graph links at least 2 layers; {args.store} gives {names}. Pass "
            "--layers NAME NAME ... in layer order.")
    work = Path(args.work) if args.work else Path(f"{args.out}.work")
    client = "threads" if args.in_process else None
    _, codes = fit_layers(args.store, names, n_atoms=args.atoms, n_nonzero=args.nonzero,
                          n_iter=args.iters, out_dir=work, client=client,
                          progress=not args.quiet, random_state=args.seed)
    graph = ConceptGraph(n_models=args.models, penalty=args.penalty, min_usage=args.min_usage,
                         binarize_inputs=args.binarize, random_state=args.seed,
                         verbose=not args.quiet)
    graph.fit(list(codes.values()), checkpoint=work / "graph-checkpoint")
    graph.save(args.out)
    metrics = graph.metrics_

    def median(column):
        values = np.asarray(metrics[column], dtype=float)
        values = values[~np.isnan(values)]
        return float(np.median(values)) if values.size else None

    print(json.dumps({"out": str(args.out), "work": str(work), "layers": names,
                      "n_concepts": graph.n_concepts_,
                      "n_edges": int(np.asarray(metrics["n_parents"]).sum()),
                      "median_auc": median("auc"), "median_f1": median("f1")}))
    return 0


def _cmd_embed(args) -> int:
    from daskdict.embedding.run import embed

    layers = "all" if not args.layers else [
        int(name) if name.lstrip("-").isdigit() else name for name in args.layers]
    try:
        store = embed(args.images, args.out, model=args.model, captions=args.captions,
                      layers=layers, batch_size=args.batch_size, device=args.device,
                      resume=not args.restart, precision=args.precision,
                      chunk_rows=args.chunk_rows, num_workers=args.workers,
                      progress=not args.quiet)
    except ImportError as exc:  # the optional dependencies are missing
        print(f"daskdict embed: error: {exc}", file=sys.stderr)
        return 2
    meta = store.attrs
    print(json.dumps({"out": str(args.out), "model": meta.get("model"),
                      "n_items": store.n_items, "n_failed": meta["embed"]["n_failed"],
                      "layers": meta.get("layers")}))
    return 0


def _cmd_plan(args) -> int:
    from daskdict.errors import InvalidInputError
    from daskdict.learn.planning import plan

    if args.store is None and args.features is None:
        raise InvalidInputError("Give a STORE to calibrate on, or --features for planted data.")
    if args.out:
        from daskdict.io.store import check_writable

        check_writable(args.out)
    result = plan(args.store, n_samples=args.samples, n_atoms=args.atoms,
                  n_nonzero=args.nonzero, n_workers=args.workers,
                  threads_per_worker=args.threads, n_features=args.features, layer=args.layer,
                  calibration_rows=args.calibration_rows,
                  client="threads" if args.in_process else None, progress=not args.quiet)
    if args.out:
        result.save(args.out)
    print(result.summary(), file=sys.stderr)
    print(json.dumps(result.to_dict()))
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
    p.add_argument("--cluster", choices=KINDS, default="local",
                   help="where the workers run: a LocalCluster (default) or batch jobs through "
                   "dask-jobqueue, configured by jobqueue.yaml")
    p.add_argument("--jobs", type=int, default=None,
                   help="batch jobs to keep running (local: worker processes)")
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_fit)

    p = verbs.add_parser("plan", help="predict time per iteration and memory per worker of "
                         "a fit from a short calibration here")
    p.add_argument("store", nargs="?", default=None,
                   help="data to calibrate on (default: planted data of --features columns)")
    p.add_argument("--samples", type=int, required=True, help="rows of the planned fit")
    p.add_argument("--features", type=int, default=None, help="width of planted data")
    p.add_argument("--atoms", type=int, default=3072)
    p.add_argument("--nonzero", type=int, default=10)
    p.add_argument("--workers", type=int, required=True, help="planned worker processes")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("--layer", default=None)
    p.add_argument("--calibration-rows", type=int, default=8192)
    p.add_argument("--out", default=None, help="write the plan as JSON")
    p.add_argument("--in-process", action="store_true", help="calibrate on threads here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_plan)

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

    p = verbs.add_parser("report", help="explain every concept and write a static HTML report")
    p.add_argument("store", help="embedding store with captions (items/caption)")
    p.add_argument("--model", default=None, help="dictionary saved by 'daskdict fit'")
    p.add_argument("--codes", default=None, help="codes saved by 'daskdict encode'")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--explanations", default=None,
                   help="explanations saved by Explanations.save (JSON or CSV) instead of "
                   "computing them")
    p.add_argument("--method", choices=("keywords", "falcon"), default="keywords")
    p.add_argument("--text-encoder", default=None, help="falcon: a Hugging Face CLIP (name or "
                   "folder) whose text tower matches the store's embeddings, or 'planted'")
    p.add_argument("--top-n", type=int, default=5, help="themes per concept (default 5)")
    p.add_argument("--layer", default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--graph", default=None,
                   help="a concept graph saved by 'daskdict graph': adds each concept's parents "
                   "and children")
    p.add_argument("--graph-layer", type=int, default=None,
                   help="with --graph: the graph layer of these concepts")
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.set_defaults(func=_cmd_report)

    p = verbs.add_parser("graph", help="concept graph between a store's layers (seed 001)")
    p.add_argument("store", help="embedding store with hidden_00, hidden_01, ... layers")
    p.add_argument("--out", required=True, help="where to save the graph (Zarr)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer names in layer order (default: the hidden_* layers)")
    p.add_argument("--atoms", type=int, default=None, help="atoms per layer (default 4 x d)")
    p.add_argument("--nonzero", type=int, default=10, help="atoms per sample (default 10)")
    p.add_argument("--iters", type=int, default=10, help="K-SVD iterations (default 10)")
    p.add_argument("--work", default=None, help="folder for dictionaries, codes and "
                   "checkpoints, to resume (default: <out>.work)")
    p.add_argument("--models", type=int, default=20, help="models per ensemble (default 20)")
    p.add_argument("--penalty", type=float, default=5.0, help="L1 penalty (default 5.0)")
    p.add_argument("--min-usage", type=float, default=0.8,
                   help="fraction of models that must use a parent (default 0.8)")
    p.add_argument("--binarize", action="store_true", help="fit on x != 0, not on the codes")
    p.add_argument("--seed", type=int, default=None, help="random_state")
    p.add_argument("--in-process", action="store_true", help="no cluster: threads here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_graph)

    p = verbs.add_parser("embed", help="embed images with a Hugging Face vision model")
    p.add_argument("images", help="folder of images (recursive), image file, or CSV/JSONL "
                   "manifest with 'path' (and 'caption') columns")
    p.add_argument("--model", default="openai/clip-vit-base-patch32",
                   help="Hugging Face model name or local folder (default: %(default)s)")
    p.add_argument("--out", default="embeddings.zarr", help="the embedding store to write "
                   "(default: %(default)s); an unfinished one is resumed")
    p.add_argument("--captions", default=None,
                   help="CSV/JSONL manifest with 'path' and 'caption' columns")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to store: names (final, hidden_05) or hidden-state indices "
                   "(default: every hidden state and final)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=("auto", "float32", "float16", "bfloat16"),
                   default="auto", help="auto: float16 on CUDA, float32 elsewhere")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per store chunk")
    p.add_argument("--workers", type=int, default=None, help="image loading threads")
    p.add_argument("--restart", action="store_true",
                   help="start over instead of resuming an unfinished store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)
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
