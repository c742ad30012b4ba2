"""Planted stores: their header, their text encoder, and the stages they may import."""

import ast
from pathlib import Path

import numpy as np

from daskdict.datasets import planted
from daskdict.datasets.planted import (
    planted_text_encoder,
    write_named_planted_store,
)
from daskdict.io import formats


def test_named_planted_store_has_a_store_header_and_names(tmp_path):
    store, atoms, names = write_named_planted_store(tmp_path / "p.zarr", 120, n_features=8,
                                                    n_atoms=12, n_nonzero=2, random_state=0,
                                                    chunk_rows=50)
    meta = formats.read_header(tmp_path / "p.zarr")
    assert meta["kind"] == "embedding store" and meta["format"] == formats.FORMAT_VERSION
    assert meta["n_items"] == 120 and meta["layers"] == ["final"] and meta["model"] == "planted"
    assert meta["planted"]["names"] == names and meta["planted"]["n_atoms"] == 12
    assert len(store.captions) == 120 and store.captions[0].startswith("a ")
    np.testing.assert_array_equal(np.asarray(store.group["planted/atoms"][...]),
                                  atoms.astype(np.float32))


def test_planted_text_encoder_sums_the_named_atoms(rng):
    atoms = rng.standard_normal((3, 5))
    encode = planted_text_encoder(atoms, ["dog", "cat", "owl"])
    out = encode(["A Dog and a cat.", "a hotdog", "owl_2 owls", "owl"])
    expected = atoms[0] + atoms[1]
    np.testing.assert_allclose(out[0], expected / np.linalg.norm(expected), rtol=1e-6)
    assert not out[1].any() and not out[2].any()  # whole words only
    np.testing.assert_allclose(out[3], atoms[2] / np.linalg.norm(atoms[2]), rtol=1e-6)


def test_datasets_imports_only_lower_stages_and_public_names():
    """datasets sits below learn, embedding and explanations, and uses io's public names."""
    tree = ast.parse(Path(planted.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("daskdict"):
            stage = node.module.split(".")[1]
            assert stage in ("errors", "validation", "io", "compute", "datasets"), node.module
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, (node.module, private)
