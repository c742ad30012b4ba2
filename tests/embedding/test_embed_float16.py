"""``daskdict.embed(..., store_dtype="float16")``: layers stored as float16, for images and texts.

Tiny random models (a ViT and a BERT, width 32; :mod:`helpers_vision`, :mod:`helpers_text`) are
built from configs and saved with ``save_pretrained``, as a user's model folder is. A float16
store must hold exactly the float32 store's values rounded to float16, fit as it is (no float32
copy on disk), refuse to be resumed in another dtype, and refuse values float16 would store as
inf.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_store
from helpers_text import TEXTS, save_tiny_bert
from helpers_vision import images, save_vision

import daskdict
from daskdict.cli.app import main as cli_main
from daskdict.embedding.writer import stored_as
from daskdict.errors import CheckpointMismatchError, InvalidInputError
from daskdict.io.reads import open_rows

torch = pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
transformers = pytest.importorskip(
    "transformers", reason="needs the embed extra: pip install 'daskdict[embed]'")

N_IMAGES = 24
# both stores of a comparison are written with the same batches, so their float32 rows agree
# bit for bit and the float16 store must be exactly their rounding
RUN = dict(batch_size=4, chunk_rows=8, verbose=False)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return save_vision("vit", tmp_path_factory.mktemp("models") / "vit", n_layers=2)


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return images(N_IMAGES, seed=3)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, vit, pictures) -> dict[str, daskdict.EmbeddingStore]:
    """The same images embedded into a float32 and a float16 store (read them, never write)."""
    root = tmp_path_factory.mktemp("stores")
    return {dtype: daskdict.embed(pictures, root / f"{dtype}.zarr", model=vit,
                                  store_dtype=dtype, **RUN)
            for dtype in ("float32", "float16")}


# --------------------------------------------------------------------------- the values


def test_float16_store_holds_the_float32_values_rounded(stores):
    full, half = stores["float32"], stores["float16"]
    assert half.layer_names == full.layer_names == ["final", "hidden_00", "hidden_01",
                                                   "hidden_02"]
    for name in full.layer_names:
        assert full.layer_array(name).dtype == np.float32
        assert half.layer_array(name).dtype == np.float16
        np.testing.assert_array_equal(half.layer_array(name)[...],
                                      full.layer_array(name)[...].astype(np.float16),
                                      err_msg=name)
    assert half.attrs["embed"]["store_dtype"] == "float16"
    assert full.attrs["embed"]["store_dtype"] == "float32"
    assert half.attrs["embed"]["complete"] and half.attrs["embed"]["precision"] == "float32"


def test_float16_chunks_take_half_the_bytes(stores):
    """Every layer chunk file: raw values and a 4-byte checksum, the values half as large."""
    full, half = stores["float32"].path, stores["float16"].path
    chunks = sorted(p.relative_to(full) for p in (full / "layers").rglob("c/*/*"))
    assert len(chunks) == 4 * (N_IMAGES // RUN["chunk_rows"])
    for chunk in chunks:
        assert (half / chunk).stat().st_size - 4 == ((full / chunk).stat().st_size - 4) // 2


def test_fit_reads_the_float16_store_as_it_is(tmp_path, stores):
    half = stores["float16"]
    copy = tmp_path / "half.zarr"
    shutil.copytree(half.path, copy)
    before = tree_hashes(tmp_path)
    rows, _, _ = open_rows(copy, layer="final")
    assert rows.dtype == np.float16  # read as stored: half the bytes of every iteration
    kwargs = dict(n_atoms=4, n_nonzero=1, n_iter=3, layer="final", client="threads",
                  random_state=0, verbose=False)
    from_half = daskdict.fit(copy, **kwargs)
    from_full = daskdict.fit(stores["float32"].path, **kwargs)
    # nothing written beside or inside the store: no float32 copy on disk
    assert tree_hashes(tmp_path) == before
    assert from_half.atoms.dtype == np.float32 and from_half.atoms.shape == (4, 32)
    cosines = np.abs(np.sum(from_half.atoms * from_full.atoms, axis=1))
    assert cosines.min() > 0.999, cosines
    np.testing.assert_allclose(from_half.atoms, from_full.atoms, atol=5e-3)


# --------------------------------------------------------------------------- resumption


def _as_killed(path: Path, rows_done: int) -> None:
    """Make the store at ``path`` look like a run killed after ``rows_done`` rows."""
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs["daskdict"])
    meta["embed"].update(rows_done=rows_done, complete=False, n_failed=None)
    group.attrs["daskdict"] = meta
    group["layers/final"][rows_done:] = 7.0


def test_resume_needs_the_store_dtype_the_store_was_started_with(tmp_path, stores, vit,
                                                                  pictures):
    path = tmp_path / "s.zarr"
    shutil.copytree(stores["float16"].path, path)
    _as_killed(path, 8)
    before = tree_hashes(path)
    with pytest.raises(CheckpointMismatchError,
                       match="store_dtype 'float16', not 'float32'") as caught:
        daskdict.embed(pictures, path, model=vit, **RUN)
    assert "store_dtype='float16'" in str(caught.value)  # how to continue it
    assert tree_hashes(path) == before
    resumed = daskdict.embed(pictures, path, model=vit, store_dtype="float16", **RUN)
    assert_same_store(resumed, stores["float16"])
    # a finished float32 store is not returned for a float16 call, nor silently rewritten
    full = tmp_path / "full.zarr"
    shutil.copytree(stores["float32"].path, full)
    with pytest.raises(CheckpointMismatchError, match="store_dtype 'float32', not 'float16'"):
        daskdict.embed(pictures, full, model=vit, store_dtype="float16", **RUN)
    replaced = daskdict.embed(pictures, full, model=vit, store_dtype="float16", resume=False,
                              **RUN)
    assert_same_store(replaced, stores["float16"])


# --------------------------------------------------------------------------- overflow


@pytest.fixture(scope="module")
def loud_vit(tmp_path_factory, vit) -> Path:
    """The tiny ViT with its final LayerNorm scaled up: ``final`` exceeds float16's range."""
    model = transformers.ViTModel.from_pretrained(vit)
    with torch.no_grad():
        model.layernorm.weight.mul_(1e5)
    folder = tmp_path_factory.mktemp("models") / "loud"
    model.save_pretrained(folder)
    transformers.ViTImageProcessor.from_pretrained(vit).save_pretrained(folder)
    return folder


def test_values_beyond_float16_are_refused_before_the_chunk_is_written(tmp_path, loud_vit,
                                                                      pictures):
    full = daskdict.embed(pictures, tmp_path / "full.zarr", model=loud_vit, **RUN)
    first = full.layer_array("final")[:RUN["chunk_rows"]]
    largest = float(np.abs(first).max())
    assert largest > 65504  # float32 holds them
    path = tmp_path / "half.zarr"
    with pytest.raises(InvalidInputError, match=r"Layer 'final'.*float16 \(\+-65504\)") as caught:
        daskdict.embed(pictures, path, model=loud_vit, store_dtype="float16", **RUN)
    assert f"{largest:.6g}" in str(caught.value) and "rows 0-7" in str(caught.value)
    # no array of the refused chunk was written, and no row is committed
    assert not [p for p in (path / "layers").rglob("c/*") if p.is_file()]
    assert zarr.open_group(path, mode="r").attrs["daskdict"]["embed"]["rows_done"] == 0
    for name in ("hidden_00", "hidden_02"):
        assert np.abs(full.layer_array(name)[...]).max() < 65504


def test_the_range_check_itself():
    limit = float(np.finfo(np.float16).max)
    block = np.array([[1.0, -limit], [0.5, np.nan]], dtype=np.float32)
    stored = stored_as(block, np.dtype(np.float16), "hidden_03", 40)
    assert stored.dtype == np.float16 and stored[0, 1] == -limit and np.isnan(stored[1, 1])
    assert stored_as(block, np.dtype(np.float32), "hidden_03", 40) is block
    block[1, 0] = -65600.0  # rounds to -inf in float16
    with pytest.raises(InvalidInputError, match=r"'hidden_03'.*65600 in rows 40-41"):
        stored_as(block, np.dtype(np.float16), "hidden_03", 40)


# --------------------------------------------------------------------------- texts


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "bert", 2, 24)


@pytest.mark.parametrize("tokens", [False, True])
def test_texts_are_stored_as_float16(tmp_path, tiny_bert, tokens):
    texts = TEXTS * 2
    kwargs = dict(model=tiny_bert, tokens=tokens, batch_size=3, chunk_rows=5, verbose=False)
    full = daskdict.embed(texts=texts, store=tmp_path / "full.zarr", **kwargs)
    half = daskdict.embed(texts=texts, store=tmp_path / "half.zarr",
                          store_dtype=np.float16, **kwargs)  # a NumPy dtype is taken as well
    assert half.layer_names == full.layer_names
    for name in full.layer_names:
        assert half.layer_array(name).dtype == np.float16
        np.testing.assert_array_equal(half.layer_array(name)[...],
                                      full.layer_array(name)[...].astype(np.float16))
    assert half.attrs["embed"]["store_dtype"] == "float16"
    if not tokens:
        _as_killed(tmp_path / "half.zarr", 5)
        with pytest.raises(CheckpointMismatchError, match="store_dtype"):
            daskdict.embed(texts=texts, store=tmp_path / "half.zarr", **kwargs)


def test_a_bad_store_dtype_is_refused_before_any_work(tmp_path):
    path = tmp_path / "s.zarr"
    for bad in ("float64", "bfloat16", "half", None, 16):
        with pytest.raises(InvalidInputError, match=r"store_dtype.*\['float32', 'float16'\]"):
            daskdict.embed(texts=TEXTS, store=path, model=str(tmp_path / "no-model"),
                           store_dtype=bad, verbose=False)
    assert not path.exists()


# --------------------------------------------------------------------------- command line


def test_cli_store_dtype(tmp_path, vit, tiny_bert, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, pixels in enumerate(images(5, seed=4)):
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    out = tmp_path / "images.zarr"
    assert cli_main(["embed", str(folder), "--model", str(vit), "--out", str(out),
                     "--store-dtype", "float16", "--layers", "final", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_items"] == 5
    store = daskdict.open_store(out)
    assert store.layer_array("final").dtype == np.float16
    assert store.attrs["embed"]["store_dtype"] == "float16"
    reference = daskdict.embed(folder, tmp_path / "ref.zarr", model=vit, layers="final",
                               verbose=False)
    np.testing.assert_array_equal(store.layer_array("final")[...],
                                  reference.layer_array("final")[...].astype(np.float16))
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "texts.zarr"
    assert cli_main(["embed", str(texts), "--texts", "--model", str(tiny_bert), "--out",
                     str(out), "--store-dtype", "float16", "--quiet"]) == 0
    store = daskdict.open_store(out)
    assert {str(store.layer_array(n).dtype) for n in store.layer_names} == {"float16"}
    # the default stays float32; a dtype outside the choices is a usage error
    assert cli_main(["embed", str(texts), "--texts", "--model", str(tiny_bert), "--out",
                     str(tmp_path / "default.zarr"), "--quiet"]) == 0
    assert daskdict.open_store(tmp_path / "default.zarr").layer_array().dtype == np.float32
    with pytest.raises(SystemExit) as caught:
        cli_main(["embed", str(texts), "--texts", "--out", str(tmp_path / "x.zarr"),
                  "--store-dtype", "float64"])
    assert caught.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
