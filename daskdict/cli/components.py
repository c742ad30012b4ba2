"""``daskdict align`` and ``daskdict scores``: from a store of components (``daskdict
decompose``) to per-component maps into a CLIP space, and to which components carry which
text-described features."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

import daskdict
from daskdict.cli.commands import check_out, emit
from daskdict.decomposition import (
    CompAlign,
    component_layers,
    component_scores,
    feature_vectors,
)
from daskdict.errors import InvalidInputError
from daskdict.io import open_store
from daskdict.report import write_components_report

# components listed per feature in the verb's output
SHOWN = 5


def _components_store(path: str) -> Any:
    """The store of components at ``path``; raises naming the problem for any other store."""
    store = open_store(path)
    component_layers(store)
    return store


def align(args: Namespace) -> int:
    """``daskdict align``: fit CompAlign from a store of components to a target store."""
    out = check_out(args.out, "alignment", [args.components, args.target], args.force)
    components, target = _components_store(args.components), open_store(args.target)
    model = CompAlign(penalty=args.penalty, shared=args.shared, n_epochs=args.epochs,
                      random_state=args.seed, verbose=not args.quiet)
    model.fit(components, target)
    model.save(out, overwrite=args.force)
    return emit({"out": str(out), "n_components": len(model.component_names_),
                 "n_rows": model.n_rows_, "alignment": model.alignment_,
                 "history": model.history_})


def _features(path: str) -> dict:
    """The features file: a JSON object of feature name -> instantiation texts."""
    try:
        features = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"Cannot read the features file {path!r}: {exc}") from exc
    return features


def scores(args: Namespace) -> int:
    """``daskdict scores``: every component's score for every feature of a features file."""
    inputs = [args.components, args.alignment, args.features]
    out = check_out(args.out, "component scores", inputs, args.force, file=True)
    report = (None if args.report is None
              else check_out(args.report, "report", [*inputs, out], args.force, file=True))
    model = daskdict.load(args.alignment)
    if not isinstance(model, CompAlign):
        raise InvalidInputError(f"{args.alignment!r} is not an alignment: write one with "
                                "'daskdict align'.")
    components = _components_store(args.components)
    texts = _features(args.features)
    aligned = model.transform(components)
    table = component_scores(aligned, feature_vectors(texts, args.clip))
    table.save(out, overwrite=args.force)
    if report is not None:
        write_components_report(report, table, aligned=aligned, feature_texts=texts,
                                text_encoder=args.clip, store=components,
                                overwrite=args.force)
    return emit({"out": str(out), "report": None if report is None else str(report),
                 "n_rows": table.n_rows,
                 "top_components": {feature: table.top_components(
                     feature, min(SHOWN, len(table.components))) for feature in table.features}})
