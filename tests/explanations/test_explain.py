"""Explanations from captions: keywords, FALCON, persistence, evaluation, CLI."""

import json

import numpy as np
import pytest

import daskdict
from daskdict.cli.app import main
from daskdict.datasets.planted import (
    CONCEPT_NAMES,
    planted_text_encoder,
    write_named_planted_store,
)
from daskdict.errors import InvalidInputError
from daskdict.explanations import keywords as _text
from daskdict.explanations.explain import Explanations, explain, explanation_accuracy
from daskdict.learn.dictionary import Codes


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """A named planted store (64 concepts, 3 per item) and its true codes."""
    path = tmp_path_factory.mktemp("named") / "planted.zarr"
    store, atoms, names = write_named_planted_store(path, 8000, 48, 64, 3, 20.0,
                                                    random_state=3, chunk_rows=2000)
    indices = np.asarray(store.group["planted/indices"][...])
    values = np.asarray(store.group["planted/values"][...])
    return store, atoms, names, Codes(indices, values, 64)


@pytest.fixture(scope="module")
def fitted(named):
    """A dictionary fit on the named store (converged: every planted atom recovered, so that
    the tests measure the explainers), and its codes."""
    store, *_ = named
    model = daskdict.fit(store.path, n_atoms=64, n_nonzero=3, n_iter=30, random_state=0,
                         client="threads")
    return model, model.encode(store.path, out=store.path.parent / "codes.zarr",
                               client="threads")


def test_named_store_captions_name_the_planted_concepts(named):
    store, _, names, codes = named
    captions = store.captions
    assert names[:5] == list(CONCEPT_NAMES[:5])
    strongest = codes.indices[np.arange(len(codes)), np.abs(codes.values).argmax(axis=1)]
    assert all(names[a] in caption for a, caption in zip(strongest[:200], captions[:200],
                                                         strict=True))
    # the distractors are shared: no caption word other than the names is specific to a concept
    assert "setting" in " ".join(captions[:50])


def test_contrastive_scores_match_a_direct_formula():
    counts = np.array([[10, 0, 5], [2, 8, 5]], dtype=float)  # 2 atoms x 3 terms
    totals = np.array([12, 8, 20], dtype=float)
    scores = _text.contrastive_scores(counts, totals, prior_weight=1.0).toarray()
    a, a0, total = totals, totals.sum(), totals.sum()
    for i in range(2):
        n1 = counts[i].sum()
        for w in range(3):
            y1, y2 = counts[i, w], totals[w] - counts[i, w]
            if y1 == 0:
                assert scores[i, w] == 0
                continue
            delta = (np.log((y1 + a[w]) / (n1 + a0 - y1 - a[w]))
                     - np.log((y2 + a[w]) / (total - n1 + a0 - y2 - a[w])))
            expected = delta / np.sqrt(1 / (y1 + a[w]) + 1 / (y2 + a[w]))
            assert scores[i, w] == pytest.approx(expected)


def test_keywords_top_word_is_the_planted_name_on_true_codes(named):
    store, atoms, names, codes = named
    explanations = explain(codes, store, top_n=3)
    result = explanation_accuracy(explanations, atoms, atoms, names)
    assert result["n_recovered"] == 64
    assert result["accuracy"] >= 0.9, result["mistakes"]


def test_keywords_on_a_fitted_dictionary_name_90_percent_of_recovered_atoms(named, fitted):
    store, atoms, names, _ = named
    model, codes = fitted
    explanations = explain(codes, store)
    result = explanation_accuracy(explanations, atoms, model.atoms, names)
    assert result["n_recovered"] >= 48  # the fit itself works
    assert result["accuracy"] >= 0.9, result["mistakes"]
    # atom 0 is two concepts: its positive and its negative coefficients
    dense = codes.to_dense()[:, 0]
    for label, side in (("0+", dense), ("0-", -dense)):
        row = explanations[label]
        assert row["n_active"] == int((side > 0).sum())
        assert row["top_captions"] == [str(store.captions[r]) for r in row["top_rows"]]
        # top items are ordered by the coefficient on the side
        assert list(row["top_rows"]) == list(np.argsort(-side, kind="stable")[:16])


def test_explain_takes_a_dictionary_and_encodes_the_store(named, fitted):
    store, _atoms, _names, _ = named
    model, codes = fitted
    before = sorted(p.name for p in store.path.parent.iterdir())
    from_model = explain(model, store.path)
    from_codes = explain(codes, store.path)
    assert from_model.first_themes() == from_codes.first_themes()
    # the codes stay in memory: explaining writes nothing beside the store
    assert sorted(p.name for p in store.path.parent.iterdir()) == before


def test_falcon_top_word_is_the_planted_name(named, fitted):
    store, atoms, names, _ = named
    model, codes = fitted
    # a planted caption names its concepts whatever their signs, so each atom is one concept
    # here: split, the other side's items (named alike) would be counterfactuals of a side
    explanations = explain(codes, store, method="falcon", signs="abs",
                           text_encoder=planted_text_encoder(store))
    result = explanation_accuracy(explanations, atoms, model.atoms, names)
    assert result["accuracy"] >= 0.9, result["mistakes"]
    row = explanations.rows[0]
    assert row["n_high"] > 0 and row["n_low"] > 0
    # contrastive interpretation removed shared words, never the concept's own name
    assert row["removed_words"] and row["themes"][0] not in row["removed_words"]


def test_falcon_explains_groups_and_accepts_precomputed_embeddings(named):
    store, _atoms, names, codes = named
    encode = planted_text_encoder(store)
    corpus = list(store.captions)
    group_rows = explain(codes, store, method="falcon", groups=[[0, 1], [2]],
                         corpus_embeddings=encode(corpus),
                         image_embeddings=np.asarray(store.layer("final")))
    assert [row["atom"] for row in group_rows] == [[0, 1], [2]]
    both = np.isin(codes.indices, [0]).any(axis=1) & np.isin(codes.indices, [1]).any(axis=1)
    assert group_rows[[0, 1]]["n_active"] == int(both.sum())
    assert group_rows[[2]]["themes"][0] == names[2]


def test_falcon_without_text_embeddings_says_what_to_pass(named):
    store, _, _, codes = named
    with pytest.raises(InvalidInputError, match="text_encoder"):
        explain(codes, store, method="falcon")


def test_explanations_round_trip_json_csv_and_dataframe(named, tmp_path):
    store, _, _, codes = named
    explanations = explain(codes, store)
    for name in ("table.json", "table.csv"):
        loaded = Explanations.load(explanations.save(tmp_path / name))
        assert len(loaded) == len(explanations)
        assert loaded[5]["themes"] == explanations[5]["themes"]
        assert loaded[5]["top_items"] == explanations[5]["top_items"]
        assert loaded[5]["n_active"] == explanations[5]["n_active"]
    assert json.loads((tmp_path / "table.json").read_text())["daskdict"]["method"] == "keywords"
    pd = pytest.importorskip("pandas")
    frame = explanations.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(explanations) > 64
    assert "themes" in frame and list(frame["concept"]) == explanations.concepts


def test_csv_keeps_the_columns_a_method_adds(tmp_path):
    """FALCON's rows carry removed_words, n_high and n_low: a CSV keeps them, typed."""
    base = {"n_active": 3, "frequency": 0.5, "top_items": ["a", "b"], "top_rows": [4, 7],
            "top_captions": ["a cat", "a cat, indoors"], "themes": ["cat"],
            "theme_scores": [0.31], "summary": "cat", "score": 0.31, "status": "ok"}
    rows = [{"atom": 0, **base, "removed_words": ["photo"], "n_high": 12, "n_low": 40},
            {"atom": 1, **base, "removed_words": [], "n_high": 0, "n_low": 52},
            {"atom": 2, **base}]
    loaded = Explanations.load(Explanations(rows, {"method": "falcon"}).save(
        tmp_path / "falcon.csv"))
    assert loaded[0]["removed_words"] == ["photo"] and loaded[0]["n_high"] == 12
    assert loaded[1]["removed_words"] == [] and loaded[1]["n_low"] == 52
    assert "n_high" not in loaded[2]
    assert loaded[0]["themes"] == ["cat"] and loaded[0]["score"] == 0.31


def test_inactive_atoms_and_bad_input_are_named():
    indices = np.array([[0, -1], [0, 1], [1, -1]], dtype=np.int32)
    values = np.array([[1.0, 0.0], [0.5, 2.0], [1.0, 0.0]])
    codes = Codes(indices, values, 3)
    captions = ["a red kite", "a red kite and a boat", "a boat"]
    explanations = explain(codes, captions, top_n=2, min_count=1, signs="abs")
    assert explanations[2]["status"] == "inactive" and explanations[2]["n_active"] == 0
    # split, an unused atom has no side with users, so no row
    assert 2 not in explain(codes, captions, top_n=2, min_count=1).atoms
    assert explanations[0]["themes"][0] == "kite" or explanations[0]["themes"][0] == "red"
    with pytest.raises(InvalidInputError, match="method"):
        explain(codes, captions, method="magic")
    with pytest.raises(InvalidInputError, match="captions"):
        explain(codes, captions[:2])
    with pytest.raises(InvalidInputError, match="top_n"):
        explain(codes, captions, top_n=0)


def test_store_without_captions_is_refused(tmp_path, rng):
    store = daskdict.create_store(tmp_path / "s.zarr", {"final": rng.random((4, 3))})
    codes = Codes(np.zeros((4, 1), np.int32), np.ones((4, 1)), 2)
    with pytest.raises(InvalidInputError, match="no captions"):
        explain(codes, store)


def test_report_verb_writes_html_and_explanations(named, fitted, tmp_path):
    store, *_ = named
    model, _ = fitted
    model.save(tmp_path / "dictionary.zarr")
    out = tmp_path / "report.html"
    assert main(["report", str(store.path), "--model", str(tmp_path / "dictionary.zarr"),
                 "--out", str(out), "--in-process"]) == 0
    text = out.read_text()
    saved = Explanations.load(tmp_path / "report.explanations.json")
    assert saved.meta["method"] == "keywords" and saved.meta["signs"] == "split"
    # a concept per side of a signed atom
    assert text.count('class="atom"') == len(saved) > 64
    assert main(["report", str(store.path), "--out", str(out)]) == 2


def test_top_per_row_matches_a_sorted_reference():
    import scipy.sparse as sp

    matrix = sp.random(40, 120, density=0.1, random_state=1, format="csr")
    matrix.data = np.round(matrix.data * 5)  # ties, broken by column
    matrix.data[::7] = -np.inf
    columns, _values = _text.top_per_row(matrix, 4)
    for row in range(40):
        cols = matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]
        vals = matrix.data[matrix.indptr[row]:matrix.indptr[row + 1]]
        expected = [cols[i] for i in sorted(range(len(cols)), key=lambda i: (-vals[i],
                                                                             cols[i]))[:4]]
        assert list(columns[row][:len(expected)]) == expected
        assert np.all(columns[row][len(expected):] == -1)


def test_top_per_row_orders_close_values_in_late_rows():
    """Values 1e-13 apart in row 150,000 keep their order (a combined row + value float key
    cannot resolve them there), and NaN comes after -inf."""
    import scipy.sparse as sp

    n_rows = 150_001
    data = np.array([1.0, 1.0 + 1e-13, 0.3, np.nan, -np.inf])
    matrix = sp.csr_matrix((data, (np.full(5, n_rows - 1), np.arange(5))), shape=(n_rows, 5))
    columns, values = _text.top_per_row(matrix, 5)
    assert list(columns[-1]) == [1, 0, 2, 4, 3]
    assert np.all(columns[:-1] == -1) and np.isnan(values[:-1]).all()


def test_demo_explains_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--samples", "8000", "--features", "32",
                 "--atoms", "32", "--nonzero", "3", "--iters", "15", "--chunk-rows", "2000",
                 "--in-process", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recovered = int(next(s for s in lines if s.startswith("recovered")).split()[1])
    explained = next(s for s in lines if s.startswith("explained")).split()
    assert int(explained[3]) == recovered >= 28
    assert int(explained[1]) >= 0.9 * recovered
    report = next(s for s in lines if s.startswith("report: ")).removeprefix("report: ")
    assert report.endswith("report.html") and 'class="atom"' in open(report).read()
    assert Explanations.load(tmp_path / "explanations.json").meta["n_atoms"] == 32


def test_falcon_explains_each_side_from_its_own_items(named, fitted):
    store, *_ = named
    _, codes = fitted
    split = explain(codes, store, method="falcon", text_encoder=planted_text_encoder(store),
                    max_images=20)
    dense = codes.to_dense()
    for label, side in (("0+", dense[:, 0]), ("0-", -dense[:, 0])):
        row = split[label]
        assert row["atom"] == 0 and row["sign"] == label[-1]
        assert row["n_high"] == min(20, int((side > 0).sum())) and row["n_low"] > 0
    assert split.concepts[:2] == ["0+", "0-"]
