"""``daskdict concepts``: the concepts of store rows or new texts, a JSON object per line, and
one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import daskdict
from daskdict import cli
from daskdict.datasets import write_named_planted_store
from daskdict.explanations import explain
from daskdict.learn.dictionary import Codes, Dictionary

WORDS = ("game games strategy library python data file real time tool text editor web server "
         "client development documentation plugin module support utility command line").split()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A named planted store, its true dictionary and the explanations of its true codes."""
    root = tmp_path_factory.mktemp("concepts")
    store, atoms, _ = write_named_planted_store(root / "planted.zarr", 1000, 32, 16, 2, 30.0,
                                                random_state=2, chunk_rows=500)
    codes = Codes(np.asarray(store.group["planted/indices"][...]),
                  np.asarray(store.group["planted/values"][...]), 16)
    Dictionary(atoms, params={"n_nonzero": 2}).save(root / "dictionary.zarr")
    explain(codes, store, top_n=3).save(root / "explanations.json")
    return root, store, codes


def _args(root, *more):
    return ["concepts", str(root / "planted.zarr"), "--dictionary", str(root / "dictionary.zarr"),
            "--explanations", str(root / "explanations.json"), *more]


def _one_line_error(capsys, *words):
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskdict: error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_rows_print_one_json_object_per_item(planted, capsys):
    root, store, codes = planted
    assert cli.main(_args(root, "--row", "0", "7", "--top", "2", "--quiet")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    items = [json.loads(line) for line in lines]
    assert [item["row"] for item in items] == [0, 7]
    explanations = daskdict.Explanations.load(root / "explanations.json")
    for item in items:
        assert item["caption"] == str(store.captions[item["row"]])
        assert {c["atom"] for c in item["concepts"]} == set(codes.indices[item["row"]].tolist())
        weights = [abs(c["weight"]) for c in item["concepts"]]
        assert weights == sorted(weights, reverse=True)
        for concept in item["concepts"]:
            assert concept["themes"] == explanations[concept["concept"]]["themes"]


def test_errors_are_one_line_with_exit_code_2(planted, capsys, tmp_path):
    root, _, _ = planted
    assert cli.main(_args(root, "--row", "1000")) == 2
    _one_line_error(capsys, "Row 1000", "1000 rows")
    assert cli.main(_args(root, "--row", "0", "--top", "0")) == 2
    _one_line_error(capsys, "top")
    assert cli.main(_args(root, "--text", "a dog")) == 2
    _one_line_error(capsys, "not made from texts")
    missing = ["concepts", str(root / "planted.zarr"), "--dictionary",
               str(root / "dictionary.zarr"), "--explanations", str(tmp_path / "none.json"),
               "--row", "0"]
    assert cli.main(missing) == 2
    _one_line_error(capsys, "none.json")
    wrong_kind = _args(root, "--row", "0")
    wrong_kind[3] = str(root / "planted.zarr")
    assert cli.main(wrong_kind) == 2
    _one_line_error(capsys, "not a dictionary")
    # argparse's own errors: --dictionary is required; one of --row and --text, never both
    no_dictionary = ["concepts", str(root / "planted.zarr"), "--explanations",
                     str(root / "explanations.json"), "--row", "0"]
    for argv in (no_dictionary, _args(root), _args(root, "--row", "0", "--text", "dog")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        _one_line_error(capsys, "concepts")


def test_new_texts_are_embedded_like_the_stores_rows(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="needs the embed extra")
    transformers = pytest.importorskip("transformers", reason="needs the embed extra")
    vocabulary = {piece: i for i, piece in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocabulary), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    transformers.BertTokenizer(vocab=vocabulary).save_pretrained(tmp_path / "bert")
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 6))) for _ in range(30)]
    store = daskdict.embed(texts=texts, store=tmp_path / "texts.zarr", model=tmp_path / "bert",
                           layers=["final"], verbose=False)
    model = daskdict.fit(store.path, n_atoms=6, n_nonzero=2, n_iter=3, random_state=0,
                         client="threads", verbose=False)
    model.save(tmp_path / "dictionary.zarr")
    explain(model, store, top_n=2, min_count=1).save(tmp_path / "explanations.json")
    base = ["concepts", str(store.path), "--dictionary", str(tmp_path / "dictionary.zarr"),
            "--explanations", str(tmp_path / "explanations.json")]
    assert cli.main([*base, "--row", "4"]) == 0
    by_row = json.loads(capsys.readouterr().out)
    assert cli.main([*base, "--text", texts[4], "web server"]) == 0
    by_text = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [item["text"] for item in by_text] == [texts[4], "web server"]
    assert [c["atom"] for c in by_text[0]["concepts"]] == [
        c["atom"] for c in by_row["concepts"]]
    np.testing.assert_allclose([c["weight"] for c in by_text[0]["concepts"]],
                               [c["weight"] for c in by_row["concepts"]], rtol=1e-4, atol=1e-5)
