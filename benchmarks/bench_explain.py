"""Explain time of the ``keywords`` method: 1M captions, 3,072 atoms, 10 non-zeros.

Synthetic captions: 6 to 12 words drawn from a Zipf-like vocabulary (``--vocabulary`` words);
codes: 10 distinct random atoms per item with N(0, 1) coefficients. Timed: the whole
``daskdict.explain(codes, captions, method="keywords")`` call, and its two parts measured
separately: counting words and two-word phrases (scipy.sparse term-document matrix, shared by all
atoms) and scoring (per batch of atoms one sparse product ``support.T @ counts``, the log-odds
z-scores and the top themes). Reported per 1,000 atoms.

    python benchmarks/bench_explain.py             # 1M captions (~2 min on 2 cores)
    python benchmarks/bench_explain.py --quick     # 100k captions
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import environment, table, write_json

from daskdict.explanations import keywords as _text
from daskdict.explanations.explain import CodeTable, explain
from daskdict.learn.dictionary import Codes


def synthetic_captions(n_captions: int, n_words: int, random_state: int = 0) -> list[str]:
    """Captions of 6 to 12 words from a vocabulary with Zipf-like word frequencies."""
    rng = np.random.default_rng(random_state)
    vocabulary = np.array([f"w{i:05d}" for i in range(n_words)])
    weights = 1.0 / np.arange(1, n_words + 1) ** 0.8
    lengths = rng.integers(6, 13, size=n_captions)
    words = vocabulary[rng.choice(n_words, size=int(lengths.sum()), p=weights / weights.sum())]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" ".join(words[bounds[i]:bounds[i + 1]]) for i in range(n_captions)]


def random_codes(n_items: int, n_atoms: int, n_nonzero: int, random_state: int = 1) -> Codes:
    rng = np.random.default_rng(random_state)
    indices = rng.integers(n_atoms, size=(n_items, n_nonzero), dtype=np.int32)
    while True:  # redraw the rows that picked an atom twice
        ordered = np.sort(indices, axis=1)
        repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not repeated.size:
            break
        indices[repeated] = rng.integers(n_atoms, size=(repeated.size, n_nonzero))
    values = rng.standard_normal((n_items, n_nonzero)).astype(np.float32)
    return Codes(indices, values, n_atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-captions", type=int, default=1_000_000)
    parser.add_argument("--n-atoms", type=int, default=3072)
    parser.add_argument("--n-nonzero", type=int, default=10)
    parser.add_argument("--vocabulary", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="100,000 captions")
    args = parser.parse_args()
    if args.quick:
        args.n_captions = 100_000

    start = time.perf_counter()
    captions = synthetic_captions(args.n_captions, args.vocabulary)
    codes = random_codes(args.n_captions, args.n_atoms, args.n_nonzero)
    setup = time.perf_counter() - start

    start = time.perf_counter()
    explanations = explain(codes, captions, method="keywords")
    total = time.perf_counter() - start

    start = time.perf_counter()
    counts, terms = _text.caption_counts(captions, min_count=2)
    counting = time.perf_counter() - start
    start = time.perf_counter()
    code_table = CodeTable(codes.indices, codes.values, codes.n_atoms)
    support_t = code_table.support.T.tocsr()
    totals = np.asarray(counts.sum(axis=0)).ravel()
    for first in range(0, args.n_atoms, 512):
        atom_counts = (support_t[first:first + 512] @ counts).tocsr()
        scores = _text.contrastive_scores(atom_counts, totals)
        _text.top_per_row(scores, 10)
    scoring = time.perf_counter() - start

    per_1000 = 1000 / args.n_atoms
    rows = [
        ["explain(method='keywords'), whole call", total, total * per_1000],
        ["  counting words and phrases (shared)", counting, counting * per_1000],
        ["  scoring atoms (sparse product, z, top)", scoring, scoring * per_1000],
    ]
    table(["part", "seconds", "seconds per 1,000 atoms"], rows,
          title=f"keywords on {args.n_captions:,} captions, {args.n_atoms} atoms, "
                f"{args.n_nonzero} non-zeros ({len(terms):,} terms; setup {setup:.1f} s)")
    explained = sum(bool(row["themes"]) for row in explanations)
    print(f"{explained} of {len(explanations)} atoms got themes")
    write_json("bench_explain" + ("-quick" if args.quick else ""), {
        "n_captions": args.n_captions, "n_atoms": args.n_atoms, "n_nonzero": args.n_nonzero,
        "vocabulary": args.vocabulary, "n_terms": len(terms), "seconds_total": total,
        "seconds_counting": counting, "seconds_scoring": scoring,
        "seconds_per_1000_atoms": total * per_1000,
        "scoring_seconds_per_1000_atoms": scoring * per_1000, "explained": explained,
        "environment": environment()})


if __name__ == "__main__":
    main()
