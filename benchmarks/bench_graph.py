"""The concept graph between layers: planted recovery and one 3072 x 3072 layer pair.

The method of *Dictionary Learning for Disentangling Concepts in Vision Transformers*.

(a) Planted multi-layer benchmark. ``write_planted_layers_store`` writes per-layer planted
    dictionaries whose concept activations follow a known DAG (every concept of layer l is the
    parent of one driven concept of layer l+1; free concepts have no parents), embeddings =
    codes x atoms + noise. ``fit_layers`` learns one K-SVD dictionary per layer and encodes
    it; ``ConceptGraph(binarize_inputs=True)`` links the layers (planted codes have random
    signs, so only their support carries the activity). Learned atoms are aligned to planted
    ones (Hungarian, |cos| >= 0.9) and the learned edges compared with the planted edges.
    Bars: edge precision >= 0.9, recall >= 0.9, median held-out AUC of driven concepts >= 0.95.
    Also: running the graph from the first layer's codes to the last layer (held-out rows),
    median AUC and F1 of the last layer's driven concepts in both inference modes (reported).

(b) One layer pair with 3,072 concepts on each side, N = 100,000, 10 active concepts per sample
    (planted codes, real-valued and positive, so the default real-valued inputs are meaningful),
    ``ConceptGraph()`` with the paper's defaults (T = 20, penalty 5.0, 80 %) on a LocalCluster of
    one worker per core (``--client threads`` fits in this process, one model at a time). Bar:
    fit wall time <= 600 s on the 2-core machine. Also edge precision/recall and median AUC of
    driven targets.

    python benchmarks/bench_graph.py            # both, full size (~5 min on 2 cores)
    python benchmarks/bench_graph.py --quick    # small sizes, under a minute
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import table, verdict, wait_until_idle, write_json

from daskdict.evaluation.metrics import align_atoms
from daskdict.graph import ConceptGraph
from daskdict.graph.planted import edge_scores, make_planted_graph, write_planted_layers_store
from daskdict.learn.layers import fit_layers

BAR_PRECISION = BAR_RECALL = 0.9
BAR_AUC = 0.95
BAR_SECONDS = 600.0


def _median_driven(scores, planted, layer, matches=None, column="auc") -> float:
    """Median of a score over the concepts of ``layer`` matched to driven planted concepts."""
    in_layer = np.asarray(scores["layer"]) == layer
    concepts = np.asarray(scores["concept"])[in_layer]
    values = np.asarray(scores[column], dtype=float)[in_layer]
    if matches is not None:
        to_planted = np.full(concepts.max() + 1, -1)
        match = matches[layer]
        to_planted[match[match >= 0]] = np.flatnonzero(match >= 0)
        planted_index = to_planted[concepts]
    else:
        planted_index = concepts
    keep = (planted_index >= 0) & planted.driven(layer)[np.maximum(planted_index, 0)]
    return float(np.nanmedian(values[keep]))


def planted_layers(args) -> dict:
    n_concepts = [args.a_concepts] * args.a_layers
    with tempfile.TemporaryDirectory(prefix="daskdict-bench-graph-") as tmp:
        path = Path(tmp) / "planted.zarr"
        start = time.perf_counter()
        _, planted = write_planted_layers_store(
            path, args.a_samples, n_concepts, args.a_features, args.a_active,
            snr_db=args.a_snr, random_state=args.seed)
        dictionaries, codes = fit_layers(path, n_atoms=args.a_concepts, n_nonzero=args.a_active,
                                         n_iter=args.a_iters, random_state=args.seed,
                                         client="threads", verbose=False)
        learn_seconds = time.perf_counter() - start
    matches, similarities = [], []
    for dictionary, atoms in zip(dictionaries.values(), planted.atoms, strict=True):
        match, similarity = align_atoms(atoms, dictionary.atoms)
        matches.append(match)
        similarities.append(similarity)
    start = time.perf_counter()
    graph = ConceptGraph(binarize_inputs=True, random_state=args.seed, client="threads")
    graph.fit(list(codes.values()))
    graph_seconds = time.perf_counter() - start
    scores = edge_scores(graph, planted.graph, matches, min_similarity=0.9,
                         similarities=similarities)
    last = args.a_layers - 1
    inference = {}
    for mode in ("argmax", "sample"):
        predicted = graph.score_predictions(list(codes.values()), mode=mode,
                                            random_state=args.seed)
        inference[mode] = {
            "median_auc_driven_last_layer": _median_driven(predicted, planted.graph, last,
                                                           matches),
            "median_f1_driven_last_layer": _median_driven(predicted, planted.graph, last,
                                                          matches, "f1")}
    return {"n_concepts": n_concepts, "n_samples": args.a_samples,
            "n_features": args.a_features, "n_active": args.a_active, "snr_db": args.a_snr,
            "atoms_matched_0.99": [float(np.mean(s >= 0.99)) for s in similarities],
            "learn_seconds": learn_seconds, "graph_seconds": graph_seconds, **scores,
            "inference": inference,
            "pass": (scores["precision"] >= BAR_PRECISION and scores["recall"] >= BAR_RECALL
                     and scores["median_auc_driven"] >= BAR_AUC)}


def one_pair(args) -> dict:
    planted = make_planted_graph(args.b_samples, (args.b_concepts, args.b_concepts),
                                 args.b_active, signed=False, random_state=args.seed)
    busy = wait_until_idle(max_wait=args.wait_idle)
    graph = ConceptGraph(random_state=args.seed, client=args.client, verbose=True)
    start = time.perf_counter()
    graph.fit(planted.codes)
    seconds = time.perf_counter() - start
    scores = edge_scores(graph, planted)
    metrics = graph.metrics_
    return {"n_samples": args.b_samples, "n_concepts": args.b_concepts,
            "n_active": args.b_active, "client": args.client, "busy_percent_before": busy,
            "seconds": seconds, "ms_per_target": 1e3 * seconds / args.b_concepts, **scores,
            "median_f1_driven": _median_driven(metrics, planted, 1, column="f1"),
            "median_parents": float(np.median(np.asarray(metrics["n_parents"]))),
            "pass": seconds <= BAR_SECONDS}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a trial run")
    parser.add_argument("--only", choices=("a", "b"), default=None, help="run one part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client", default="local", choices=("local", "threads"),
                        help="part (b) on a LocalCluster (default) or in process")
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="seconds to wait for other processes to leave the CPU")
    args = parser.parse_args()
    full = not args.quick
    args.a_layers, args.a_concepts = (4, 64) if full else (3, 48)
    args.a_samples, args.a_features = (10_000, 48) if full else (4000, 32)
    args.a_active, args.a_snr, args.a_iters = 3, 30.0, 50
    args.b_samples, args.b_concepts = (100_000, 3072) if full else (20_000, 768)
    args.b_active = 10

    results = {}
    if args.only in (None, "a"):
        a = results["planted_layers"] = planted_layers(args)
        table(["layers x concepts", "N", "edges", "precision", "recall", "median AUC (driven)",
               "K-SVD s", "graph s", "bar", "result"],
              [[f"{args.a_layers} x {args.a_concepts}", a["n_samples"], a["n_planted"],
                f"{a['precision']:.3f}", f"{a['recall']:.3f}", f"{a['median_auc_driven']:.3f}",
                f"{a['learn_seconds']:.1f}", f"{a['graph_seconds']:.1f}",
                "P,R >= 0.9, AUC >= 0.95", verdict(a["pass"])]],
              title="(a) planted multi-layer graph: K-SVD per layer, aligned atoms, edges")
        print()
        table(["mode", "median AUC", "median F1"],
              [[mode, f"{v['median_auc_driven_last_layer']:.3f}",
                f"{v['median_f1_driven_last_layer']:.3f}"]
               for mode, v in a["inference"].items()],
              title=f"(a) running the graph from layer 0 to layer {args.a_layers - 1} "
                    "(held-out rows, driven concepts of the last layer)")
        print()
    if args.only in (None, "b"):
        b = results["one_pair"] = one_pair(args)
        table(["concepts", "N", "k", "client", "fit s", "ms/target", "precision", "recall",
               "median AUC (driven)", "median F1 (driven)", "bar s", "result"],
              [[f"{b['n_concepts']} x {b['n_concepts']}", b["n_samples"], b["n_active"],
                b["client"], f"{b['seconds']:.1f}", f"{b['ms_per_target']:.1f}",
                f"{b['precision']:.3f}", f"{b['recall']:.3f}", f"{b['median_auc_driven']:.3f}",
                f"{b['median_f1_driven']:.3f}", f"<= {BAR_SECONDS:.0f}", verdict(b["pass"])]],
              title="(b) one layer pair, the paper's defaults (T=20, penalty 5, 80 %)")
    write_json("bench_graph-quick" if args.quick else "bench_graph",
               {"params": vars(args), **results})


if __name__ == "__main__":
    main()
