"""What each ``daskdict`` verb does: check every output, then do the work, then print JSON.

Every command checks its outputs (:func:`daskdict.io.formats.check_output`, the writer rule)
and its arguments before it reads or computes anything, so a bad call fails in a second with
the input untouched. Commands call the public API of the top-level package where it has the
name, so they keep working when a stage's modules move.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from argparse import Namespace
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

import daskdict
from daskdict.cli import real_demo
from daskdict.datasets import planted_images, planted_text_encoder, write_named_planted_store
from daskdict.embedding.clip import clip_text_encoder
from daskdict.errors import InvalidInputError, OutputNotWritableError
from daskdict.evaluation import recovered_fraction
from daskdict.explanations.explain import explanation_accuracy
from daskdict.io.formats import check_apart, check_folder, check_output, describe, kind_of
from daskdict.report import write_report
from daskdict.validation import check_positive_int

# --------------------------------------------------------------------------- output checks


def _inputs(paths: Iterable[Any]) -> list[str]:
    return [str(p) for p in paths if isinstance(p, str | os.PathLike) and str(p)]


def check_out(path: str | os.PathLike, kind: str, inputs: Iterable[Any], force: bool, *,
              file: bool = False) -> Path:
    """The writer rule for one output of a verb.

    Parameters
    ----------
    path : str or path-like
        The output.
    kind : str
        What will be written there (a kind of :data:`daskdict.io.formats.KINDS`, or
        ``"report"``).
    inputs : iterable
        The verb's inputs; entries that are not paths (None) are skipped.
    force : bool
        ``--force``: an existing output of the same kind may be replaced.
    file : bool, default=False
        The output is one file rather than a Zarr folder.

    Returns
    -------
    Path

    Raises
    ------
    OutputNotWritableError
        If the output is an input, holds something else, exists without ``force``, or its
        folder does not take new files.
    """
    return check_output(path, kind, inputs=_inputs(inputs), overwrite=force, file=file)


def _client(args: Namespace) -> str | None:
    return "threads" if args.in_process else None


def emit(result: dict) -> int:
    print(json.dumps(result, default=str))
    return 0


# --------------------------------------------------------------------------- verbs


def fit(args: Namespace) -> int:
    """``daskdict fit``: learn a dictionary and save it."""
    out = check_out(args.out, "dictionary", [args.store, args.checkpoint, args.validation],
                    args.force)
    if args.checkpoint is not None:
        check_apart(args.checkpoint, [args.store, args.out, args.validation])
    with contextlib.ExitStack() as stack:
        client = _client(args)
        if args.cluster != "local" or args.jobs is not None:
            client = stack.enter_context(daskdict.cluster(args.cluster, jobs=args.jobs))
        model = daskdict.fit(args.store, n_atoms=_one_or_levels(args.atoms),
                             n_nonzero=_one_or_levels(args.nonzero), n_iter=args.iters,
                             layer=args.layer, coder=args.coder, positive=args.positive,
                             center=args.center, update=args.update, tol=args.tol,
                             correlation_dtype=args.correlation_dtype,
                             device=args.device, random_state=args.seed, checkpoint=args.checkpoint,
                             dtype=args.dtype, validation=args.validation,
                             patience=args.patience, client=client, verbose=not args.quiet)
    model.save(out, overwrite=args.force)
    last = model.history[-1] if model.history else {}
    return emit({"out": str(out), "n_atoms": model.n_atoms, "level_sizes": model.level_sizes,
                  "relative_error": last.get("relative_error"), "fvu": last.get("fvu"),
                  "validation_error": last.get("validation_error"),
                  "best_iteration": model.params.get("best_iteration"),
                  "stopped_early": bool(last.get("stopped_early"))})


def _one_or_levels(values: list[int] | None) -> int | list[int] | None:
    """A number given once as the number, several as one per level."""
    return values[0] if values is not None and len(values) == 1 else values


def default_codes_path(store: str, layer: str | None) -> str:
    """Where ``encode`` writes codes by default: ``<store>.codes[-<layer>].zarr``."""
    base = str(Path(store))
    if kind_of(store) != "embedding store":
        return f"{base}.codes.zarr"  # a bare Zarr array has no layers
    return f"{base}.codes-{layer or 'final'}.zarr"


def _load_dictionary(path: str) -> Any:
    found = kind_of(path)
    if found != "dictionary":
        raise InvalidInputError(f"--dictionary {path!r} holds "
                                f"{'daskdict ' + found if found else 'no daskdict object'}, "
                                "not a dictionary (saved by 'daskdict fit').")
    return daskdict.load(path)


def encode(args: Namespace) -> int:
    """``daskdict encode``: sparse codes of a store over a saved dictionary."""
    if args.dictionary is None:
        raise InvalidInputError("encode needs --dictionary DICTIONARY (saved by 'daskdict fit').")
    out = args.out or default_codes_path(args.store, args.layer)
    out = check_out(out, "codes", [args.store, args.dictionary], args.force)
    model = _load_dictionary(args.dictionary)
    codes = model.encode(args.store, layer=args.layer, out=out, overwrite=args.force,
                         client=_client(args), verbose=not args.quiet)
    return emit({"out": str(out), "n_samples": len(codes), "n_atoms": codes.n_atoms,
                  "n_nonzero": int(codes.indices.shape[1])})


def info(args: Namespace) -> int:
    """``daskdict info``: what a daskdict file or folder holds, as JSON."""
    print(json.dumps(describe(args.path), indent=2, default=str))
    return 0


def _demo_outputs(args: Namespace) -> dict[str, Path]:
    """The demo's files, checked before anything is written (a fresh temp folder by default)."""
    if args.out is None:
        workdir = Path(tempfile.mkdtemp(prefix="daskdict-demo-"))
    else:
        workdir = Path(args.out)
        if workdir.exists() and not workdir.is_dir():
            raise OutputNotWritableError(f"--out {args.out!r} is a file; the demo needs a folder.")
    files = {"store": ("planted.zarr", "embedding store", False),
             "dictionary": ("dictionary.zarr", "dictionary", False),
             "codes": ("codes.zarr", "codes", False),
             "explanations": ("explanations.json", "explanations", True),
             "report": ("report.html", "report", True)}
    return {key: check_out(workdir / name, kind, [], args.force, file=file)
            for key, (name, kind, file) in files.items()}


def _check_demo_args(args: Namespace) -> None:
    for name in ("samples", "features", "atoms", "nonzero", "iters"):
        check_positive_int(f"--{name}", getattr(args, name))
    if args.nonzero > args.atoms:
        raise InvalidInputError(f"Expected --nonzero <= --atoms. Got {args.nonzero} > "
                                f"{args.atoms}.")
    if args.out is not None and kind_of(args.out) is not None:
        raise OutputNotWritableError(
            f"--out {args.out!r} holds daskdict {kind_of(args.out)}; the demo needs a folder of "
            "its own.")


def demo(args: Namespace) -> int:
    """``daskdict demo``: planted concepts written, fitted, recovered, explained, reported."""
    _check_demo_args(args)
    if args.real:
        workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="daskdict-demo-"))
        return real_demo.run(args, workdir)
    paths = _demo_outputs(args)
    paths["store"].parent.mkdir(parents=True, exist_ok=True)
    print(f"daskdict demo: writing {args.samples} x {args.features} planted embeddings "
          f"({args.atoms} concepts, {args.nonzero} per sample, {args.snr} dB) to "
          f"{paths['store']}")
    store, atoms, names = write_named_planted_store(
        paths["store"], args.samples, args.features, args.atoms, args.nonzero, args.snr,
        random_state=args.seed, chunk_rows=args.chunk_rows, overwrite=args.force)
    model = daskdict.fit(paths["store"], n_atoms=args.atoms, n_nonzero=args.nonzero,
                         n_iter=args.iters, random_state=args.seed, client=_client(args),
                         verbose=not args.quiet)
    model.save(paths["dictionary"], overwrite=args.force)
    fraction = recovered_fraction(atoms, model.atoms)
    last = model.history[-1]
    print(f"relative error {last['relative_error']:.4f}, FVU {last['fvu']:.4f}")
    print(f"recovered {round(fraction * args.atoms)} of {args.atoms} planted atoms "
          f"({100 * fraction:.1f}%); dictionary saved to {paths['dictionary']}")
    codes = model.encode(paths["store"], out=paths["codes"], overwrite=args.force,
                         client="threads")
    explanations = daskdict.explain(codes, store, method="keywords")
    explanations.to_json(paths["explanations"], overwrite=args.force)
    accuracy = explanation_accuracy(explanations, atoms, model.atoms, names)
    print(f"explained {accuracy['n_correct']} of {accuracy['n_recovered']} recovered concepts "
          f"by their planted name ({100 * accuracy['accuracy']:.1f}%, keywords); e.g. concept "
          f"{explanations.rows[0]['atom']}: {', '.join(explanations.rows[0]['themes'][:3])}")
    report = write_report(paths["report"], explanations, codes=codes,
                          images=planted_images(store), model=model,
                          title="daskdict demo: planted concepts", overwrite=args.force)
    print(f"report: {report}")
    return 0


def _check_report_args(args: Namespace) -> None:
    if args.dictionary is None and args.codes is None:
        raise InvalidInputError("Give --dictionary DICTIONARY (to encode the store) or "
                                "--codes CODES.")
    if args.graph is not None and args.graph_layer is None:
        raise InvalidInputError("--graph needs --graph-layer: the graph layer of the explained "
                                "concepts (0 = the graph's first layer).")
    if args.explanations is None and args.method == "falcon" and args.text_encoder is None:
        raise InvalidInputError("--method falcon needs --text-encoder: a Hugging Face CLIP "
                                "(name or folder), or 'planted' on planted data.")
    if args.representatives == "cosine" and args.dictionary is None:
        raise InvalidInputError("--representatives cosine needs --dictionary: the atoms whose "
                                "cosine with each item's embedding ranks the items.")


def _report_explanations(args: Namespace, codes: Any, model: Any) -> Any:
    if args.explanations:
        return daskdict.Explanations.load(args.explanations)
    options = {"signs": args.signs, "representatives": args.representatives}
    if args.representatives == "cosine":
        options["atoms"] = model  # its atoms, and the mean of a centred dictionary
    if args.method == "falcon":
        options["text_encoder"] = (planted_text_encoder(args.store)
                                   if args.text_encoder == "planted"
                                   else clip_text_encoder(args.text_encoder))
    return daskdict.explain(codes, args.store, method=args.method, top_n=args.top_n,
                            layer=args.layer, **options)


def report(args: Namespace) -> int:
    """``daskdict report``: explain every concept and write a static HTML report."""
    _check_report_args(args)
    inputs = [args.store, args.dictionary, args.codes, args.explanations, args.graph]
    out = check_out(args.out, "report", inputs, args.force, file=True)
    table = None
    if args.explanations is None:
        table = check_out(f"{out.with_suffix('')}.explanations.json", "explanations", inputs,
                          args.force, file=True)
    graph = daskdict.ConceptGraph.load(args.graph) if args.graph else None
    model = _load_dictionary(args.dictionary) if args.dictionary else None
    if args.codes:
        codes = daskdict.Codes.load(args.codes)
    else:
        codes = model.encode(args.store, layer=args.layer, client=_client(args),
                             verbose=not args.quiet)
    explanations = _report_explanations(args, codes, model)
    if table is not None:
        explanations.to_json(table, overwrite=args.force)
    written = write_report(out, explanations, codes=codes, model=model, graph=graph,
                           graph_layer=args.graph_layer, overwrite=args.force,
                           title=args.title or f"daskdict concepts of {args.store}")
    return emit({"out": str(written), "explanations": str(table or args.explanations),
                  "n_concepts": len(explanations), "n_atoms": explanations.meta.get("n_atoms"),
                  "method": explanations.meta.get("method")})


def _median(values: Any) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def graph(args: Namespace) -> int:
    """``daskdict graph``: one dictionary per layer, then the concept graph between them."""
    work = Path(args.work) if args.work else Path(f"{args.out}.work")
    out = check_out(args.out, "concept graph", [args.store, work], args.force)
    check_folder(work, [args.store, args.out], "the work folder")
    names = args.layers or sorted(name for name in daskdict.open_store(args.store).layer_names
                                  if name.startswith("hidden_"))
    if len(names) < 2:
        raise InvalidInputError(
            f"A concept graph links at least 2 layers; {args.store} gives {names}. Pass "
            "--layers NAME NAME ... in layer order.")
    concept_graph = daskdict.ConceptGraph(
        n_models=args.models, penalty=args.penalty, min_usage=args.min_usage,
        binarize_inputs=args.binarize, random_state=args.seed, verbose=not args.quiet)
    concept_graph.check_params()  # before the dictionaries are fitted
    _, codes = daskdict.fit_layers(args.store, names, n_atoms=args.atoms, n_nonzero=args.nonzero,
                                   n_iter=args.iters, out_dir=work, client=_client(args),
                                   random_state=args.seed, verbose=not args.quiet)
    concept_graph.fit(list(codes.values()), checkpoint=work / "graph-checkpoint")
    concept_graph.save(out, overwrite=args.force)
    metrics = concept_graph.metrics_
    return emit({"out": str(out), "work": str(work), "layers": names,
                  "n_concepts": concept_graph.n_concepts_,
                  "n_edges": int(np.asarray(metrics["n_parents"]).sum()),
                  "median_auc": _median(metrics["auc"]), "median_f1": _median(metrics["f1"])})


def embed(args: Namespace) -> int:
    """``daskdict embed``: images or texts through a Hugging Face model into a store."""
    # an embedding store already there is resumed (or replaced with --force) by embed itself
    out = check_out(args.out, "embedding store", [args.source, args.captions], True)
    layers = "all" if not args.layers else [
        int(name) if name.lstrip("-").isdigit() else name for name in args.layers]
    try:
        source = ({"texts": args.source} if args.texts
                  else {"images": args.source, "captions": args.captions})
        store = daskdict.embed(store=out, model=args.model, **source, layers=layers,
                               text_column=args.text_column, pooling=args.pooling,
                               tokens=args.tokens,
                               batch_size=args.batch_size, device=args.device,
                               resume=not args.force, precision=args.precision,
                               store_dtype=args.store_dtype,
                               chunk_rows=args.chunk_rows, num_workers=args.workers,
                               verbose=not args.quiet)
    except ImportError as exc:  # the optional dependencies are missing
        raise InvalidInputError(str(exc)) from exc
    meta = store.attrs
    return emit({"out": str(out), "model": meta.get("model"), "n_items": store.n_items,
                  "n_failed": meta["embed"]["n_failed"], "layers": meta.get("layers")})


def decompose(args: Namespace) -> int:
    """``daskdict decompose``: images through a vision transformer, or texts through a BERT,
    into a store of components."""
    out = check_out(args.out, "embedding store", [args.source, args.model, args.captions],
                    args.force)
    try:
        store = daskdict.decompose(args.source, out, args.model, n_layers=args.blocks,
                                   batch_size=args.batch_size, device=args.device,
                                   overwrite=args.force, verbose=not args.quiet,
                                   text_column=args.text_column, captions=args.captions,
                                   dtype=args.dtype)
    except ImportError as exc:  # the optional dependencies are missing
        raise InvalidInputError(str(exc)) from exc
    components = [name for name in store.layer_names if name != "final"]
    return emit({"out": str(out), "n_items": store.n_items, "n_components": len(components),
                  "layers": store.layer_names})


def plan(args: Namespace) -> int:
    """``daskdict plan``: predicted time per iteration and memory per worker of a fit."""
    if args.store is None and args.features is None:
        raise InvalidInputError("Give a STORE to calibrate on, or --features for planted data.")
    out = check_out(args.out, "plan", [args.store], args.force, file=True) if args.out else None
    result = daskdict.plan(args.store, n_samples=args.samples, n_atoms=args.atoms,
                           n_nonzero=args.nonzero, n_workers=args.workers,
                           threads_per_worker=args.threads, n_features=args.features,
                           layer=args.layer, calibration_rows=args.calibration_rows,
                           update=args.update, client=_client(args), verbose=not args.quiet)
    if out is not None:
        result.save(out, overwrite=args.force)
    print(result.summary(), file=sys.stderr)
    return emit(result.to_dict())


def concepts(args: Namespace) -> int:
    """``daskdict concepts``: the concepts of store rows or new texts, one JSON line per item."""
    if args.dictionary is None:
        raise InvalidInputError("concepts needs --dictionary DICTIONARY (saved by "
                                "'daskdict fit').")
    model = _load_dictionary(args.dictionary)
    items = daskdict.explanations.item_concepts(
        model, args.explanations, args.store, rows=args.row, texts=args.text,
        layer=args.layer, top=args.top)
    for item in items:
        print(json.dumps(item, default=str))
    return 0
