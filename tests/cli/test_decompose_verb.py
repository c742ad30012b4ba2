"""``daskdict decompose``: texts through a tiny random BERT into a store whose components sum to
``final``; its output checked before any work."""

import json

import numpy as np
import pytest
from helpers_text import TEXTS, save_tiny_bert

import daskdict
from daskdict import cli

pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
pytest.importorskip("transformers", reason="needs the embed extra")


def test_decompose_verb_writes_components_that_sum_to_final(tmp_path, capsys):
    model = save_tiny_bert(tmp_path / "bert", 3, 32)
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    out = tmp_path / "parts.zarr"
    args = ["decompose", str(texts), "--model", str(model), "--blocks", "2", "--out", str(out),
            "--quiet"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_items"] == len(TEXTS) and result["n_components"] == 1 + 2 * (4 + 1)
    store = daskdict.open_store(out)
    parts = sum(np.asarray(store.layer_array(name)[...], dtype=np.float64)
                for name in store.layer_names if name != "final")
    final = np.asarray(store.layer_array("final")[...], dtype=np.float64)
    assert np.max(np.linalg.norm(parts - final, axis=1) / np.linalg.norm(final, axis=1)) < 1e-5
    assert cli.main(args) == 2  # the store exists: --force replaces it
    assert "--force" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0
    capsys.readouterr()
    assert cli.main(["decompose", str(texts), "--model", str(model), "--out", str(texts),
                     "--quiet"]) == 2  # never over its input
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "texts.csv" in err
