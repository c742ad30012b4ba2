"""How concepts are shown: signed atoms split in two, representative items, dictionary levels,
and saved tables with these fields (and without them, as an earlier version saved them)."""

import csv
import json

import numpy as np
import pytest

import daskdict
from daskdict.errors import InvalidInputError
from daskdict.explanations import item_concepts
from daskdict.explanations.explain import Explanations, entry_cosines, explain
from daskdict.learn.dictionary import Codes, Dictionary

# 6 items over 3 atoms; atom 0 is used with both signs, atom 1 only positively, atom 2 never
INDICES = np.array([[0, 1], [0, -1], [0, 1], [1, -1], [0, 1], [0, -1]], dtype=np.int32)
VALUES = np.array([[2.0, 0.5], [-3.0, 0.0], [0.5, -0.0], [1.0, 0.0], [-1.0, 4.0],
                   [1.5, 0.0]])
CAPTIONS = ["red kite", "blue boat", "red kite", "green tree", "blue boat", "red kite"]


def codes(level_sizes=None):
    return Codes(INDICES, VALUES, 3, level_sizes=level_sizes)


def test_split_gives_a_row_per_used_side_with_that_sides_items_only():
    table = explain(codes(), CAPTIONS, min_count=1)
    assert table.concepts == ["0+", "0-", "1+"]  # 1- and atom 2 have no users: no rows
    assert [row["atom"] for row in table] == [0, 0, 1]
    assert [row["sign"] for row in table] == ["+", "-", "+"]
    dense = codes().to_dense()
    for row in table:
        side = dense[row["top_rows"], row["atom"]]
        assert np.all(side > 0) if row["sign"] == "+" else np.all(side < 0)
        # ranked by the coefficient on the side, largest magnitude first
        assert list(np.abs(side)) == sorted(np.abs(side), reverse=True)
    assert table["0+"]["top_rows"] == [0, 5, 2] and table["0+"]["n_active"] == 3
    assert table["0-"]["top_rows"] == [1, 4] and table["0-"]["n_active"] == 2
    assert table["0-"]["frequency"] == pytest.approx(2 / 6)
    # each side is explained from its own captions
    assert set(table["0+"]["themes"][:2]) == {"red", "kite"}
    assert set(table["0-"]["themes"][:2]) == {"blue", "boat"}
    assert table.meta["signs"] == "split" and table.meta["representatives"] == "coefficient"
    # an atom's own row is its side with more items; a sign picks the side
    assert table[0]["concept"] == "0+"
    assert table.concept_row(0, -0.2)["concept"] == "0-"
    with pytest.raises(KeyError):
        table.concept_row(1, -1.0)


def test_non_negative_codes_give_only_plus_rows():
    table = explain(Codes(INDICES, np.abs(VALUES), 3), CAPTIONS, min_count=1)
    assert table.concepts == ["0+", "1+"]
    assert table["0+"]["top_rows"] == [1, 0, 5, 4, 2]


def test_abs_reproduces_one_row_per_atom_ranked_by_magnitude():
    table = explain(codes(), CAPTIONS, min_count=1, signs="abs")
    assert table.concepts == ["0", "1", "2"] and {row["sign"] for row in table} == {"±"}
    dense = np.abs(codes().to_dense())
    for atom in range(2):
        used = np.flatnonzero(dense[:, atom])
        expected = used[np.argsort(-dense[used, atom], kind="stable")]
        assert table[atom]["top_rows"] == expected.tolist()
    assert table[2]["status"] == "inactive" and table[2]["top_rows"] == []


def test_share_prefers_an_item_whose_code_is_the_atom_over_a_larger_coefficient():
    indices = np.array([[0, 1], [0, -1], [0, 1]], dtype=np.int32)
    # item 0: coefficient 3 on atom 0 but 5 on atom 1 (share 9/34); item 1: 1 on atom 0 alone
    # (share 1); item 2: 3 on atom 0 and 5 on atom 1 too: a tie with item 0 on share and
    # coefficient, broken by the row
    values = np.array([[3.0, 5.0], [1.0, 0.0], [3.0, 5.0]])
    captions = ["a cat", "a dog", "a cat"]
    by_share = explain(Codes(indices, values, 2), captions, min_count=1,
                       representatives="share")
    assert by_share["0+"]["top_rows"] == [1, 0, 2]
    assert by_share.meta["representatives"] == "share"
    by_coefficient = explain(Codes(indices, values, 2), captions, min_count=1)
    assert by_coefficient["0+"]["top_rows"] == [0, 2, 1]
    # ties on share go to the larger coefficient
    values = np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    tied = explain(Codes(indices * 0 + np.array([0, -1]), values, 2), captions, min_count=1,
                   representatives="share")
    assert tied["0+"]["top_rows"] == [0, 2, 1]


def cosine_case(tmp_path):
    """Atom 0 along x; item 0 has the larger coefficient but points away from x."""
    atoms = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    embeddings = np.array([[0.2, 1.0, 0.0], [1.0, 0.1, 0.0], [0.9, 0.0, 0.3],
                           [-1.0, 0.05, 0.0], [-0.3, 1.0, 0.0]])
    indices = np.array([[0, 1], [0, -1], [0, -1], [0, -1], [0, 1]], dtype=np.int32)
    values = np.array([[5.0, 2.0], [1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-4.0, 2.0]])
    store = daskdict.create_store(tmp_path / "s.zarr", {"final": embeddings},
                                  captions=["a", "b", "c", "d", "e"])
    return atoms, embeddings, Codes(indices, values, 2), store


def test_cosine_ranks_a_sides_users_by_cosine_with_its_direction(tmp_path):
    atoms, embeddings, made, store = cosine_case(tmp_path)
    table = explain(made, store, min_count=1, representatives="cosine", atoms=atoms)
    cos = embeddings[:, 0] / np.linalg.norm(embeddings, axis=1)
    # side +: items 0, 1, 2 by cosine with +x (not by coefficient: item 0 has 5)
    assert table["0+"]["top_rows"] == [1, 2, 0]
    assert cos[1] > cos[2] > cos[0]
    # side -: items 3, 4 by cosine with -x
    assert table["0-"]["top_rows"] == [3, 4]
    assert table.meta["representatives"] == "cosine"
    # a Dictionary brings its atoms (and encodes the store itself)
    model = Dictionary(atoms, params={"n_nonzero": 1})
    from_model = explain(model, store, min_count=1, representatives="cosine")
    assert from_model.meta["representatives"] == "cosine"
    for row in from_model:
        used = row["top_rows"]
        side = np.sign(np.asarray(model.encode(embeddings).to_dense())[used, row["atom"]])
        scores = (embeddings[used] @ atoms[row["atom"]]) * side / np.linalg.norm(
            embeddings[used], axis=1)
        assert list(scores) == sorted(scores, reverse=True)
    with pytest.raises(InvalidInputError, match="atoms="):
        explain(model, store, representatives="cosine", atoms=atoms)


def test_a_centred_dictionary_ranks_by_cosine_with_the_centred_rows(tmp_path):
    atoms, embeddings, _, store = cosine_case(tmp_path)
    mean = np.array([0.0, 0.0, 0.3])
    model = Dictionary(atoms, params={"n_nonzero": 1}, mean=mean)
    table = explain(model, store, min_count=1, representatives="cosine")
    centred = embeddings - mean
    codes = np.asarray(model.encode(embeddings).to_dense())
    for row in table:
        used = row["top_rows"]
        side = np.sign(codes[used, row["atom"]])
        scores = (centred[used] @ atoms[row["atom"]]) * side / np.linalg.norm(
            centred[used], axis=1)
        assert list(scores) == sorted(scores, reverse=True)
    # centred, item 2 (0.9, 0, 0.3) lies along x and leads side 0+; uncentred item 1 did
    assert table["0+"]["top_rows"] == [2, 1]
    # codes with the dictionary as atoms= (as the command line passes it): the same ranking
    codes = model.encode(embeddings)
    with_atoms = explain(codes, store, min_count=1, representatives="cosine", atoms=model)
    assert with_atoms["0+"]["top_rows"] == [2, 1]


def test_entry_cosines_match_a_direct_formula(rng):
    atoms = rng.standard_normal((4, 6))
    embeddings = rng.standard_normal((9, 6))
    indices = rng.integers(-1, 4, size=(9, 3)).astype(np.int32)
    out = entry_cosines(embeddings, atoms, indices, batch=4)
    for i, j in np.ndindex(indices.shape):
        a = indices[i, j]
        expected = 0.0 if a < 0 else embeddings[i] @ atoms[a] / (
            np.linalg.norm(embeddings[i]) * np.linalg.norm(atoms[a]))
        assert out[i, j] == pytest.approx(expected)


def test_cosine_without_its_inputs_is_refused_before_any_work(tmp_path, monkeypatch):
    atoms, _, made, store = cosine_case(tmp_path)
    with pytest.raises(InvalidInputError, match="needs the atoms"):
        explain(made, store, representatives="cosine")
    with pytest.raises(InvalidInputError, match="embeddings"):
        explain(made, ["a", "b", "c", "d", "e"], representatives="cosine", atoms=atoms)
    with pytest.raises(InvalidInputError, match=r"atoms of shape \(2, 3\)"):
        explain(made, store, representatives="cosine", atoms=atoms[:, :2])
    with pytest.raises(InvalidInputError, match="only with representatives='cosine'"):
        explain(made, store, atoms=atoms)
    with pytest.raises(InvalidInputError, match="representatives"):
        explain(made, store, representatives="closest")
    with pytest.raises(InvalidInputError, match="signs"):
        explain(made, store, signs="both")
    # a Dictionary with captions alone: refused before the (impossible) encoding
    monkeypatch.setattr(daskdict.Dictionary, "encode", lambda *a, **k: 1 / 0)
    with pytest.raises(InvalidInputError, match="embeddings"):
        explain(Dictionary(atoms), ["a"] * 5, representatives="cosine")


def test_levels_are_recorded_ordered_and_selectable():
    table = explain(codes(level_sizes=[1, 2]), CAPTIONS, min_count=1)
    assert [(row["concept"], row["level"]) for row in table] == [("0+", 0), ("0-", 0),
                                                                 ("1+", 1)]
    assert table.meta["level_sizes"] == [1, 2] and table.levels == [0, 1]
    coarse = table.level(0)
    assert isinstance(coarse, Explanations) and coarse.concepts == ["0+", "0-"]
    assert table.level(1).concepts == ["1+"] and table.level(1).meta["level_sizes"] == [1, 2]
    with pytest.raises(InvalidInputError, match="level"):
        table.level(2)
    whole = explain(codes(level_sizes=[2, 1]), CAPTIONS, min_count=1, signs="abs")
    assert [(row["concept"], row["level"]) for row in whole] == [("0", 0), ("1", 0), ("2", 1)]
    assert whole.level(1).concepts == ["2"]
    plain = explain(codes(), CAPTIONS, min_count=1)
    assert "level_sizes" not in plain.meta and plain.levels == [0]


@pytest.mark.parametrize("name", ["e.json", "e.csv"])
def test_new_fields_round_trip(tmp_path, name):
    table = explain(codes(level_sizes=[1, 2]), CAPTIONS, min_count=1)
    loaded = Explanations.load(table.save(tmp_path / name))
    for field in ("concept", "sign", "level", "atom", "top_rows", "themes"):
        assert [row[field] for row in loaded] == [row[field] for row in table], field
    assert loaded["0-"]["top_rows"] == [1, 4]
    if name.endswith(".json"):
        assert loaded.meta["level_sizes"] == [1, 2] and loaded.meta["signs"] == "split"
        assert loaded.level(1).concepts == ["1+"]
    abs_table = explain(codes(), CAPTIONS, min_count=1, signs="abs")
    again = Explanations.load(abs_table.save(tmp_path / f"abs-{name}"))
    assert [row["sign"] for row in again] == ["±"] * 3 and again.concepts == ["0", "1", "2"]


OLD_ROW = {"atom": 4, "n_active": 3, "frequency": 0.6, "top_items": [0, 1], "top_rows": [0, 1],
           "top_captions": ["a kite", "a kite and a boat"], "themes": ["kite"],
           "theme_scores": [1.5], "summary": "kite", "score": 1.5, "status": "ok"}


def test_a_table_saved_without_the_new_fields_loads_as_whole_atoms(tmp_path):
    old_json = tmp_path / "old.json"
    old_json.write_text(json.dumps({"daskdict": {"format": 1, "kind": "explanations",
                                                 "version": "0.1", "method": "keywords"},
                                    "rows": [OLD_ROW]}))
    old_csv = tmp_path / "old.csv"
    with old_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(OLD_ROW))
        writer.writerow([json.dumps(v) if isinstance(v, list) else v for v in OLD_ROW.values()])
    for path in (old_json, old_csv):
        loaded = Explanations.load(path)
        row = loaded[4]
        assert (row["sign"], row["level"], row["concept"]) == ("±", 0, "4")
        assert loaded["4"] is row and loaded.concept_row(4, -2.0) is row
        assert row["themes"] == ["kite"] and loaded.levels == [0]


def test_item_concepts_read_the_side_of_each_weight(tmp_path):
    atoms = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    embeddings = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [1.5, 0.0, 0.0],
                           [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    store = daskdict.create_store(tmp_path / "s.zarr", {"final": embeddings},
                                  captions=["red kite", "blue boat", "red kite", "blue boat",
                                            "tree"])
    model = Dictionary(atoms, params={"n_nonzero": 1})
    table = explain(model, store, min_count=1)
    assert table.concepts == ["0+", "0-", "2+"]
    items = item_concepts(model, table, store, rows=[0, 1])
    assert [item["concepts"][0]["concept"] for item in items] == ["0+", "0-"]
    assert items[0]["concepts"][0]["themes"] == table["0+"]["themes"]
    assert items[1]["concepts"][0]["themes"] == table["0-"]["themes"]
    assert items[0]["concepts"][0]["themes"] != items[1]["concepts"][0]["themes"]
