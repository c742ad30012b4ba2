"""``item_concepts``: the concepts an item uses, with weights and themes, for rows of a store and
for new texts embedded like the store's (a tiny random BERT saved locally, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import daskdict
from daskdict.datasets import write_named_planted_store
from daskdict.errors import InvalidInputError
from daskdict.explanations import Explanations, explain, item_concepts
from daskdict.learn.dictionary import Codes, Dictionary

WORDS = ("the a an of for and with to in on game games strategy library libraries python "
         "data file files real time tool tools text editor web server client c development "
         "documentation plugin module support utility command line").split()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A named planted store (16 concepts, 2 per item), its true atoms, names and codes."""
    path = tmp_path_factory.mktemp("planted") / "planted.zarr"
    store, atoms, names = write_named_planted_store(path, 2000, 32, 16, 2, 30.0,
                                                    random_state=1, chunk_rows=500)
    codes = Codes(np.asarray(store.group["planted/indices"][...]),
                  np.asarray(store.group["planted/values"][...]), 16)
    return store, atoms, names, codes


def test_rows_of_a_planted_store_give_the_planted_concepts(planted):
    store, atoms, names, codes = planted
    model = Dictionary(atoms, params={"n_nonzero": 2})
    explanations = explain(codes, store, top_n=3)
    rows = list(range(0, 60, 3))
    items = item_concepts(model, explanations, store, rows=rows)
    assert [item["row"] for item in items] == rows
    assert [item["caption"] for item in items] == [str(store.captions[r]) for r in rows]
    matched = 0
    for item, row in zip(items, rows, strict=True):
        used = [c["atom"] for c in item["concepts"]]
        weights = [abs(c["weight"]) for c in item["concepts"]]
        assert weights == sorted(weights, reverse=True)
        planted_atoms = codes.indices[row]
        matched += set(used) == set(planted_atoms.tolist())
        strongest = int(planted_atoms[np.abs(codes.values[row]).argmax()])
        if used[0] == strongest:
            # the concept's themes are its side's explanation's, whose first is the planted
            # name
            label = item["concepts"][0]["concept"]
            sign = "+" if item["concepts"][0]["weight"] > 0 else "-"
            assert label == f"{strongest}{sign}"
            assert item["concepts"][0]["themes"] == explanations[label]["themes"]
            assert item["concepts"][0]["themes"][0] == names[strongest]
    assert matched >= 18
    one = item_concepts(model, explanations, store, rows=[rows[0]], top=1)
    assert len(one[0]["concepts"]) == 1
    assert one[0]["concepts"][0] == items[0]["concepts"][0]


def test_bad_calls_are_refused_before_any_work(planted, tmp_path):
    store, atoms, _, codes = planted
    model = Dictionary(atoms, params={"n_nonzero": 2})
    explanations = explain(codes, store, top_n=3)
    with pytest.raises(InvalidInputError, match="exactly one"):
        item_concepts(model, explanations, store)
    with pytest.raises(InvalidInputError, match="exactly one"):
        item_concepts(model, explanations, store, rows=[0], texts=["dog"])
    with pytest.raises(InvalidInputError, match="store="):
        item_concepts(model, explanations, rows=[0])
    with pytest.raises(InvalidInputError, match="Row 2000 is not in the store"):
        item_concepts(model, explanations, store, rows=[1, 2000])
    with pytest.raises(InvalidInputError, match="row numbers"):
        item_concepts(model, explanations, store, rows=["a"])
    with pytest.raises(InvalidInputError, match="top"):
        item_concepts(model, explanations, store, rows=[0], top=0)
    with pytest.raises(InvalidInputError, match="Text 1"):
        item_concepts(model, explanations, store, texts=["dog", "  "])
    # the planted store was not embedded from texts: no model to embed new ones with
    with pytest.raises(InvalidInputError, match="not made from texts"):
        item_concepts(model, explanations, store, texts=["a dog"])
    other = Explanations(explanations.rows[:4], {"n_atoms": 4})
    with pytest.raises(InvalidInputError, match="explain this dictionary"):
        item_concepts(model, other, store, rows=[0])
    fitted = Dictionary(atoms, params={"n_nonzero": 2}, fingerprint={"layer": "hidden_01"})
    with pytest.raises(InvalidInputError, match="fitted on layer 'hidden_01'"):
        item_concepts(fitted, explanations, store, rows=[0], layer="final")
    wide = Dictionary(np.eye(8, 64, dtype=np.float32), params={"n_nonzero": 2})
    with pytest.raises(InvalidInputError, match="features"):
        item_concepts(wide, Explanations([], {"n_atoms": 8}), store, rows=[0])


# --------------------------------------------------------------------------- new texts


def _vocabulary() -> dict[str, int]:
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"-,.()", *WORDS,
              *(f"##{s}" for s in ("s", "ing", "ed", "er"))]
    return {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """A store of 40 texts embedded by a tiny random BERT saved with save_pretrained."""
    torch = pytest.importorskip("torch", reason="needs the embed extra")
    transformers = pytest.importorskip("transformers", reason="needs the embed extra")
    root = tmp_path_factory.mktemp("texts")
    folder = root / "bert"
    torch.manual_seed(0)
    vocabulary = _vocabulary()
    config = transformers.BertConfig(vocab_size=len(vocabulary), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=24)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(vocab=vocabulary).save_pretrained(folder)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS[10:], size=rng.integers(2, 7))) for _ in range(40)]
    store = daskdict.embed(texts=texts, store=root / "texts.zarr", model=folder,
                           layers=["hidden_01", "final"], verbose=False)
    return store, texts, Path(folder)


@pytest.mark.parametrize("layer", ["final", "hidden_01"])
def test_a_new_text_gets_the_code_of_its_row(text_store, layer):
    store, texts, _ = text_store
    model = daskdict.fit(store.path, layer=layer, n_atoms=8, n_nonzero=3, n_iter=3,
                         random_state=0, client="threads", verbose=False)
    assert model.fingerprint["layer"] == layer
    explanations = explain(model, store, top_n=2, min_count=1)
    rows = [3, 17]
    # no layer=: the one the dictionary was fitted on
    by_row = item_concepts(model, explanations, store.path, rows=rows)
    by_text = item_concepts(model, explanations, store.path,
                            texts=[texts[r] for r in rows] + ["python web server"])
    assert [item["text"] for item in by_text[:2]] == [texts[r] for r in rows]
    for row_item, text_item in zip(by_row, by_text, strict=False):
        assert [c["atom"] for c in text_item["concepts"]] == [
            c["atom"] for c in row_item["concepts"]]
        np.testing.assert_allclose([c["weight"] for c in text_item["concepts"]],
                                   [c["weight"] for c in row_item["concepts"]],
                                   rtol=1e-4, atol=1e-5)
        assert [c["themes"] for c in text_item["concepts"]] == [
            explanations[c["atom"]]["themes"] for c in row_item["concepts"]]
    assert 1 <= len(by_text[2]["concepts"]) <= 3
    # the rows read are those of the fitted layer
    codes = model.encode(store.layer_array(layer)[...], client="threads")
    for item, row in zip(by_row, rows, strict=True):
        expected = dict(zip(codes.indices[row].tolist(), codes.values[row].tolist(),
                            strict=True))
        assert {c["atom"] for c in item["concepts"]} == set(expected)
        np.testing.assert_allclose([c["weight"] for c in item["concepts"]],
                                   [expected[c["atom"]] for c in item["concepts"]], rtol=1e-5)


def test_texts_of_a_store_of_token_rows_are_refused(text_store, tmp_path):
    _, texts, folder = text_store
    tokens = daskdict.embed(texts=texts[:4], store=tmp_path / "tokens.zarr", model=folder,
                            layers=["hidden_01"], tokens=True, verbose=False)
    model = Dictionary(np.eye(4, 32, dtype=np.float32), params={"n_nonzero": 1})
    with pytest.raises(InvalidInputError, match="row per token"):
        item_concepts(model, Explanations([], {"n_atoms": 4}), tokens, texts=["web server"])
