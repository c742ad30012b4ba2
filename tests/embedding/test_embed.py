"""``daskdict.embed``: images → embedding store, checked against direct forward passes.

Models are tiny and randomly initialised (hidden size 32, 2 layers, 32 px images, patch 8),
saved with an image processor to a temporary folder and loaded by ``embed`` through
``from_pretrained``, as a user's model would be. Tests that need torch/transformers skip
without the ``embed`` extra; the flagged-row tests of ``fit`` run without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_store

import daskdict
from daskdict.cli.app import main as cli_main
from daskdict.embedding import backbone as backbone_module
from daskdict.errors import (
    CheckpointMismatchError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from daskdict.io.reads import open_rows

SCRIPT = Path(__file__).parents[1] / "scripts" / "embed_killable.py"
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=100, bos_token_id=0, eos_token_id=1,
                 pad_token_id=1)
FAMILIES = ["clip", "clip_projection", "clip_vision", "vit", "deit", "dinov2", "siglip",
            "siglip_full", "beit"]
# per family: how a hidden state becomes a vector, and what "final" is in the direct forward
MEAN_TOKEN_FAMILIES = {"siglip", "siglip_full", "beit"}
RTOL, ATOL = 1e-4, 1e-5


# --------------------------------------------------------------------------- helpers


def _build(kind: str):
    """A tiny random model of ``kind`` and an image processor making 32 x 32 inputs."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    square = {"height": 32, "width": 32}
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=TINY_TEXT, vision_config=TINY,
                                           projection_dim=16))
    elif kind == "clip_projection":
        model = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**TINY, projection_dim=16))
    elif kind == "clip_vision":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY))
    elif kind == "vit":
        return tf.ViTModel(tf.ViTConfig(**TINY)), tf.ViTImageProcessor(size=square)
    elif kind == "deit":
        return tf.DeiTModel(tf.DeiTConfig(**TINY)), tf.DeiTImageProcessor(
            size={"height": 40, "width": 40}, crop_size=square)
    elif kind == "dinov2":
        return tf.Dinov2Model(tf.Dinov2Config(**TINY)), tf.BitImageProcessor(
            size={"shortest_edge": 32}, crop_size=square)
    elif kind == "siglip":
        return (tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY)),
                tf.SiglipImageProcessor(size=square))
    elif kind == "siglip_full":
        return (tf.SiglipModel(tf.SiglipConfig(text_config=TINY_TEXT, vision_config=TINY)),
                tf.SiglipImageProcessor(size=square))
    elif kind == "beit":
        return tf.BeitModel(tf.BeitConfig(**TINY)), tf.BeitImageProcessor(
            size=square, do_center_crop=False)
    elif kind == "resnet":
        return (tf.ResNetModel(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                               depths=[1, 1])),
                tf.ConvNextImageProcessor(size={"shortest_edge": 32}))
    else:
        raise ValueError(kind)
    return model, tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=square)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``tiny_model(kind)``: the folder of a saved tiny model (built once per module)."""
    pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
    pytest.importorskip("transformers",
                        reason="needs the embed extra: pip install 'daskdict[embed]'")
    root = tmp_path_factory.mktemp("models")
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            model, processor = _build(kind)
            model.save_pretrained(root / kind)
            processor.save_pretrained(root / kind)
            cache[kind] = str(root / kind)
        return cache[kind]

    return get


def _write_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` images of various sizes and modes, some in a sub-folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        name = folder / ("sub" if i % 3 == 0 else ".") / f"img_{i:02d}"
        mode = i % 4
        if mode == 0:
            Image.fromarray(pixels).save(f"{name}.jpg", quality=90)
        elif mode == 1:
            Image.fromarray(pixels[:, :, 0]).save(f"{name}.png")  # grayscale
        elif mode == 2:
            alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
            Image.fromarray(np.concatenate([pixels, alpha], axis=2)).save(f"{name}.png")
        else:
            Image.fromarray(pixels).convert("P").save(f"{name}.gif")


def _write_corrupt(folder: Path) -> list[str]:
    """Three unreadable files; returns their relative paths."""
    good = next(iter(sorted(folder.rglob("*.jpg")))).read_bytes()
    (folder / "random.jpg").write_bytes(np.random.default_rng(1).bytes(300))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "sub" / "empty.png").write_bytes(b"")
    return ["random.jpg", "sub/empty.png", "truncated.jpg"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    pytest.importorskip("PIL", reason="needs the embed extra: pip install 'daskdict[embed]'")
    folder = tmp_path_factory.mktemp("images")
    _write_images(folder, 7)
    (folder / ".hidden.jpg").write_bytes(b"not an image, and hidden")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def corrupt_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    pytest.importorskip("PIL", reason="needs the embed extra: pip install 'daskdict[embed]'")
    folder = tmp_path_factory.mktemp("corrupt")
    _write_images(folder, 20, seed=2)
    return folder, _write_corrupt(folder)


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _direct_forward(kind: str, model_path: str, images) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden-state vectors and the final embedding, by the family's own classes and outputs."""
    import torch
    import transformers as tf

    processor = tf.AutoImageProcessor.from_pretrained(model_path)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if kind in ("clip", "siglip_full"):
            cls = tf.CLIPModel if kind == "clip" else tf.SiglipModel
            model = cls.from_pretrained(model_path).eval()
            out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
            features = model.get_image_features(pixel_values=pixels)
            final = features if isinstance(features, torch.Tensor) else features.pooler_output
        else:
            cls = {"clip_projection": tf.CLIPVisionModelWithProjection,
                   "clip_vision": tf.CLIPVisionModel,
                   "siglip": tf.SiglipVisionModel}.get(kind, tf.AutoModel)
            model = cls.from_pretrained(model_path).eval()
            out = model(pixel_values=pixels, output_hidden_states=True)
            final = {"clip_projection": lambda: out.image_embeds,
                     "clip_vision": lambda: out.pooler_output,
                     "siglip": lambda: out.pooler_output,
                     "beit": lambda: out.pooler_output}.get(
                kind, lambda: out.last_hidden_state[:, 0])()
    if kind in MEAN_TOKEN_FAMILIES:
        hidden = [h.mean(dim=1).numpy() for h in out.hidden_states]
    else:
        hidden = [h[:, 0].numpy() for h in out.hidden_states]
    return hidden, final.numpy()


def _rows_done(path: Path) -> int:
    try:
        return int(zarr.open_group(path, mode="r").attrs["daskdict"]["embed"]["rows_done"])
    except Exception:  # not created yet, or being replaced
        return 0


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("kind", FAMILIES)
def test_rows_equal_a_direct_forward_pass(tmp_path, tiny_model, image_folder, kind):
    model = tiny_model(kind)
    if kind == "beit":  # no family rule: mean of tokens and the pooler output, with a warning
        with pytest.warns(UserWarning, match="no rule for the model family 'beit'"):
            store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=model,
                                   batch_size=3, chunk_rows=4, verbose=False)
    else:
        store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=model, batch_size=3,
                               chunk_rows=4, verbose=False)
    ids = list(store.ids)
    assert ids == sorted(ids) and len(ids) == 7 and "sub/img_00.jpg" in ids
    assert (np.asarray(store.group["items/error"][...]) == "").all()
    hidden, final = _direct_forward(kind, model, [_open_rgb(image_folder / i) for i in ids])
    assert store.layer_names == ["final"] + [f"hidden_{i:02d}" for i in range(len(hidden))]
    assert len(hidden) == TINY["num_hidden_layers"] + 1
    for i, expected in enumerate(hidden):
        np.testing.assert_allclose(store.layer_array(f"hidden_{i:02d}")[...], expected,
                                   rtol=RTOL, atol=ATOL, err_msg=f"hidden_{i:02d}")
    np.testing.assert_allclose(store.layer_array("final")[...], final, rtol=RTOL, atol=ATOL)
    assert store.layer_array("final").dtype == np.float32
    meta = store.attrs["embed"]
    assert meta["complete"] and meta["rows_done"] == 7 and meta["n_failed"] == 0
    assert store.attrs["model"] == model


def test_layer_selection(tmp_path, tiny_model, image_folder):
    store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=tiny_model("vit"),
                           layers=["final", -1, "hidden_00"], verbose=False)
    assert store.layer_names == ["final", "hidden_00", "hidden_02"]
    full = daskdict.embed(image_folder, tmp_path / "full.zarr", model=tiny_model("vit"),
                          verbose=False)
    for name in store.layer_names:
        np.testing.assert_allclose(store.layer_array(name)[...], full.layer_array(name)[...],
                                   rtol=RTOL, atol=ATOL)


def test_every_source_kind_gives_the_same_rows(tmp_path, tiny_model, image_folder):
    model = tiny_model("clip_projection")
    reference = daskdict.embed(image_folder, tmp_path / "ref.zarr", model=model,
                               layers="final", verbose=False)
    ids = list(reference.ids)
    expected = reference.layer_array("final")[...]
    files = [image_folder / i for i in ids]
    pil_images = [_open_rgb(f) for f in files]
    captions = [f"caption {i}" for i in range(len(ids))]

    class Dataset:  # duck-typed like datasets.Dataset: len + getitem -> dict
        def __len__(self):
            return len(pil_images)

        def __getitem__(self, index):
            return {"image": pil_images[index], "text": captions[index], "label": 0}

    (tmp_path / "manifest.csv").write_text(
        "path,caption\n" + "".join(f"{image_folder / i},{c}\n" for i, c in zip(
            ids, captions, strict=True)))
    (image_folder.parent / "m.jsonl").write_text("".join(
        json.dumps({"path": f"{image_folder.name}/{i}"}) + "\n" for i in ids))
    sources = {
        "paths": ([str(f) for f in files], [str(f) for f in files], None),
        "pil": (pil_images, list(range(len(ids))), None),
        "arrays": ([np.asarray(p) for p in pil_images], list(range(len(ids))), None),
        "dataset": (Dataset(), list(range(len(ids))), captions),
        "csv": (tmp_path / "manifest.csv", [str(f) for f in files], captions),
        "jsonl": (image_folder.parent / "m.jsonl", [f"{image_folder.name}/{i}" for i in ids],
                  None),
    }
    for name, (images, expected_ids, expected_captions) in sources.items():
        store = daskdict.embed(images, tmp_path / f"{name}.zarr", model=model, layers="final",
                               verbose=False)
        np.testing.assert_allclose(store.layer_array("final")[...], expected, rtol=RTOL,
                                   atol=ATOL, err_msg=name)
        assert list(store.ids) == expected_ids, name
        if expected_captions is None:
            assert store.captions is None, name
        else:
            assert list(store.captions) == expected_captions, name


def test_stack_of_arrays_and_single_images(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    model = tiny_model("vit")
    whole = daskdict.embed(stack, tmp_path / "stack.zarr", model=model, layers="final",
                           verbose=False)
    assert list(whole.ids) == [0, 1, 2, 3, 4]
    floats = daskdict.embed(list(stack.astype(np.float64) / 255), tmp_path / "f.zarr",
                            model=model, layers="final", verbose=False)
    np.testing.assert_allclose(floats.layer_array("final")[...], whole.layer_array("final")[...],
                               rtol=RTOL, atol=ATOL)
    one = daskdict.embed(stack[2], tmp_path / "one.zarr", model=model, layers="final",
                         verbose=False)
    np.testing.assert_allclose(one.layer_array("final")[...], whole.layer_array("final")[2:3],
                               rtol=RTOL, atol=ATOL)


def test_captions_from_a_manifest_matched_by_path(tmp_path, tiny_model, image_folder):
    ids = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("img_*"))
    manifest = tmp_path / "captions.csv"
    # relative to the image folder, in another order, one image without a caption
    lines = [f"{i},a picture of {Path(i).stem}" for i in reversed(ids[1:])]
    manifest.write_text("path,caption\n" + "\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="1 of 7 images have no caption"):
        store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=tiny_model("vit"),
                               captions=manifest, layers="final", verbose=False)
    assert list(store.captions) == [""] + [f"a picture of {Path(i).stem}" for i in ids[1:]]


# --------------------------------------------------------------------------- reliability


def test_corrupt_files_are_flagged_and_fit_skips_them(tmp_path, tiny_model, corrupt_folder):
    folder, corrupt = corrupt_folder
    with pytest.warns(UserWarning, match="3 of 23 images could not be read"):
        store = daskdict.embed(folder, tmp_path / "s.zarr", model=tiny_model("clip_projection"),
                               batch_size=4, chunk_rows=8, verbose=False)
    errors = np.asarray(store.group["items/error"][...])
    flagged = [str(i) for i, e in zip(store.ids, errors, strict=True) if e]
    assert flagged == corrupt
    assert all(e for e in errors[errors != ""])
    bad = errors != ""
    for name in store.layer_names:
        rows = store.layer_array(name)[...]
        assert not rows[bad].any() and np.abs(rows[~bad]).sum(axis=1).min() > 0
    assert store.attrs["embed"]["n_failed"] == 3
    # end to end: fit the final layer; the flagged (zero) rows are left out
    model = daskdict.fit(store.path, n_atoms=6, n_nonzero=2, n_iter=3, layer="final",
                         client="threads", random_state=0, verbose=False)
    assert model.fingerprint["shape"] == [20, 16]
    assert model.fingerprint["skipped_rows"] == 3
    assert model.atoms.shape == (6, 16) and np.isfinite(model.atoms).all()
    # encode keeps one row per item (flagged rows get empty codes)
    codes = model.encode(store.path, layer="final", client="threads",
                         out=tmp_path / "codes.zarr")
    assert codes.shape == (23, 6)
    assert (np.asarray(codes.indices)[bad] == -1).all()


def test_killed_run_resumes_to_the_same_store(tmp_path, tiny_model, corrupt_folder):
    """SIGKILL a CLI run after some chunks, then resume: identical to an uninterrupted run."""
    folder, _ = corrupt_folder
    model = tiny_model("clip_projection")
    with pytest.warns(UserWarning, match="could not be read"):
        reference = daskdict.embed(folder, tmp_path / "ref.zarr", model=model, chunk_rows=4,
                                   batch_size=2, num_workers=1, verbose=False)
    killed = tmp_path / "killed.zarr"
    # the run in another process computes with as many threads as this one: a Dask nanny
    # started earlier in this process may have set OMP_NUM_THREADS=1 for its children, and on
    # some CPUs a product's last bits depend on how many threads shared it
    import torch

    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(folder), str(killed), model,
                             "--throttle", "0.05"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while _rows_done(killed) < 8:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "timed out waiting for 8 committed rows"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _rows_done(killed)
    assert 8 <= done_at_kill < 23, done_at_kill
    with pytest.warns(UserWarning, match="could not be read"):
        resumed = daskdict.embed(folder, killed, model=model, chunk_rows=4, batch_size=2,
                                 num_workers=1, verbose=False)
    assert_same_store(resumed, reference)
    assert not list(killed.rglob("*.partial"))


def test_rows_past_the_counter_are_rewritten(tmp_path, tiny_model, image_folder):
    model = tiny_model("vit")
    kwargs = dict(model=model, chunk_rows=2, batch_size=2, verbose=False)
    reference = daskdict.embed(image_folder, tmp_path / "ref.zarr", **kwargs)
    path = tmp_path / "s.zarr"
    daskdict.embed(image_folder, path, **kwargs)
    # make it look like a run killed while writing the third chunk (rows 4-5)
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs["daskdict"])
    meta["embed"].update(rows_done=4, complete=False, n_failed=None)
    group.attrs["daskdict"] = meta
    group["layers/final"][4:] = 7.0
    group["items/error"][4:] = "junk"
    (path / "layers" / "hidden_01" / "c" / "2" / "0").unlink()
    (path / "layers" / "final" / "c" / "2" / "0.1234.partial").write_bytes(b"half")
    resumed = daskdict.embed(image_folder, path, **kwargs)
    assert_same_store(resumed, reference)


def test_finished_store_is_returned_without_work(tmp_path, tiny_model, image_folder):
    path = tmp_path / "s.zarr"
    daskdict.embed(image_folder, path, model=tiny_model("vit"), verbose=False)
    before = tree_hashes(path)
    daskdict.embed(image_folder, path, model=tiny_model("vit"), verbose=False)
    assert tree_hashes(path) == before


def test_resume_refuses_another_run(tmp_path, tiny_model, image_folder):
    path = tmp_path / "s.zarr"
    daskdict.embed(image_folder, path, model=tiny_model("vit"), layers="final", verbose=False)
    with pytest.raises(CheckpointMismatchError, match="layers"):
        daskdict.embed(image_folder, path, model=tiny_model("vit"), verbose=False)
    with pytest.raises(CheckpointMismatchError, match="model"):
        daskdict.embed(image_folder, path, model=tiny_model("dinov2"), layers="final",
                       verbose=False)
    with pytest.raises(CheckpointMismatchError, match="other images"):
        daskdict.embed(image_folder / "sub", path, model=tiny_model("vit"), layers="final",
                       verbose=False)
    store = daskdict.embed(image_folder, path, model=tiny_model("vit"), resume=False,
                           verbose=False)
    assert store.layer_names == ["final", "hidden_00", "hidden_01", "hidden_02"]


def test_a_store_embed_did_not_write_is_never_replaced(tmp_path, tiny_model, image_folder):
    other = tmp_path / "other.zarr"
    daskdict.create_store(other, {"final": np.ones((3, 2), dtype=np.float32)})
    before = tree_hashes(other)
    # refused before the model loads: this model path would fail to load
    for resume in (True, False):
        with pytest.raises(OutputNotWritableError, match=r"not written by daskdict\.embed"):
            daskdict.embed(image_folder, other, model=str(tmp_path / "no-model"),
                           resume=resume, verbose=False)
    assert tree_hashes(other) == before


def test_out_of_memory_halves_the_batch(tmp_path, tiny_model, image_folder, monkeypatch):
    import torch

    model = tiny_model("vit")
    reference = daskdict.embed(image_folder, tmp_path / "ref.zarr", model=model, batch_size=4,
                               verbose=False)
    backbone_class = backbone_module.Backbone
    real_vectors = backbone_class.vectors
    sizes = []

    def vectors(self, pixel_values, *args, **kwargs):
        sizes.append(len(pixel_values))
        if len(pixel_values) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real_vectors(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(backbone_class, "vectors", vectors)
    with pytest.warns(UserWarning, match="Out of memory at batch size 4"):
        store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=model, batch_size=4,
                               verbose=False)
    # the probe (1 image), then batches of 4 and 3 images run as 2 + 2 and 2 + 1
    assert sizes == [1, 4, 2, 2, 2, 1]
    for name in store.layer_names:
        np.testing.assert_allclose(store.layer_array(name)[...],
                                   reference.layer_array(name)[...], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_error(tmp_path, tiny_model, image_folder):
    vit = tiny_model("vit")
    out = tmp_path / "s.zarr"
    (tmp_path / "empty").mkdir()
    cases = [
        (StoreNotFoundError, "does not exist", dict(images=tmp_path / "missing")),
        (InvalidInputError, "No images found", dict(images=tmp_path / "empty")),
        (InvalidInputError, "list is empty", dict(images=[])),
        (InvalidInputError, "Expected 7 captions", dict(images=image_folder, captions=["a"])),
        (StoreNotFoundError, "No caption manifest",
         dict(images=image_folder, captions=tmp_path / "nope.csv")),
        (InvalidInputError, "Unknown layer 'hidden_09'",
         dict(images=image_folder, layers=["hidden_09"])),
        (InvalidInputError, "out of range", dict(images=image_folder, layers=[5])),
        (InvalidInputError, "batch_size", dict(images=image_folder, batch_size=0)),
        (InvalidInputError, "precision", dict(images=image_folder, precision="float8")),
        (InvalidInputError, "device", dict(images=image_folder, device="tpu:7")),
        (InvalidInputError, "Cannot load the model",
         dict(images=image_folder, model=str(tmp_path / "no-model"))),
        (InvalidInputError, "hidden states of shape",
         dict(images=image_folder, model=tiny_model("resnet"))),
    ]
    for error, message, kwargs in cases:
        kwargs = {"store": out, "model": vit, "verbose": False, **kwargs}
        with pytest.raises(error, match=message):
            daskdict.embed(**kwargs)
        assert not out.exists(), kwargs


def test_input_is_never_modified(tmp_path, tiny_model, image_folder):
    before = tree_hashes(image_folder)
    arrays = [np.random.default_rng(0).random((20, 30, 3)) for _ in range(3)]
    copies = [a.copy() for a in arrays]
    images = list(arrays)
    daskdict.embed(image_folder, tmp_path / "a.zarr", model=tiny_model("vit"), verbose=False)
    daskdict.embed(images, tmp_path / "b.zarr", model=tiny_model("vit"), verbose=False)
    assert tree_hashes(image_folder) == before
    assert len(images) == 3 and all(x is y for x, y in zip(images, arrays, strict=True))
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_missing_extras_give_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'daskdict\[embed\]'"):
        daskdict.embed(["x.jpg"], "never-written.zarr")
    assert not Path("never-written.zarr").exists()


def test_import_daskdict_does_not_import_torch():
    code = ("import sys, daskdict; print(sorted(m for m in ('torch', 'transformers', 'PIL') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- command line


def test_cli_embed(tmp_path, tiny_model, image_folder, capsys):
    manifest = tmp_path / "captions.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p), "caption": p.stem}) + "\n"
                                for p in image_folder.rglob("img_*")))
    out = tmp_path / "s.zarr"
    assert cli_main(["embed", str(image_folder), "--model", tiny_model("vit"), "--out",
                     str(out), "--captions", str(manifest), "--layers", "final", "-1",
                     "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == {"out": str(out), "model": tiny_model("vit"), "n_items": 7, "n_failed": 0,
                      "layers": ["final", "hidden_02"]}
    store = daskdict.open_store(out)
    assert [Path(i).stem for i in store.ids] == list(store.captions)
    assert cli_main(["embed", str(tmp_path / "missing"), "--model", tiny_model("vit"),
                     "--out", str(tmp_path / "x.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_help_lists_embed(capsys):
    with pytest.raises(SystemExit):
        cli_main(["embed", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--out", "--captions", "--layers", "--batch-size"):
        assert option in out


# --------------------------------------------------------------------------- fit skips flags


def _flagged_store(path: Path, rng, flagged: list[int], n: int = 300, chunk_rows: int = 100):
    data = rng.standard_normal((n, 8)).astype(np.float32)
    data[flagged] = np.nan  # fit refuses NaN rows, so a row that is not skipped fails the fit
    daskdict.create_store(path, {"final": data}, chunk_rows=chunk_rows)
    errors = np.full(n, "", dtype=object)
    errors[flagged] = "OSError: image file is truncated"
    group = zarr.open_group(path, mode="r+")
    group.create_array("items/error", shape=(n,), dtype=str)[...] = errors.astype(str)
    return data


def test_open_rows_skips_flagged_rows(tmp_path, rng):
    flagged = [0, 5, 6, 99, 100, 150, *range(200, 300)]  # the last chunk entirely
    data = _flagged_store(tmp_path / "s.zarr", rng, flagged)
    kept = np.delete(data, flagged, axis=0)
    array, description, reader = open_rows(tmp_path / "s.zarr", skip_flagged=True)
    assert array.shape == kept.shape and array.chunks[0] == (96, 98)
    assert description["skipped_rows"] == len(flagged)
    np.testing.assert_array_equal(array.compute(), kept)
    for start, stop in [(0, 1), (3, 97), (95, 194), (193, 194), (10, 10)]:
        np.testing.assert_array_equal(reader[start:stop], kept[start:stop])
    # without skip_flagged (encode: one row per item) every row is there
    assert open_rows(tmp_path / "s.zarr")[0].shape == (300, 8)


def test_fit_ignores_flagged_rows(tmp_path, rng):
    flagged = list(range(100, 200))  # a whole chunk: the kept rows chunk like a plain store
    data = _flagged_store(tmp_path / "flagged.zarr", rng, flagged)
    daskdict.create_store(tmp_path / "plain.zarr", {"final": np.delete(data, flagged, axis=0)},
                          chunk_rows=100)
    kwargs = dict(n_atoms=12, n_nonzero=2, n_iter=3, client="threads", random_state=0,
                  verbose=False)
    skipped = daskdict.fit(tmp_path / "flagged.zarr", **kwargs)
    plain = daskdict.fit(tmp_path / "plain.zarr", **kwargs)
    np.testing.assert_array_equal(skipped.atoms, plain.atoms)
    assert skipped.fingerprint["shape"] == [200, 8]
    # rows flagged inside chunks are skipped too (they hold NaN: a fit over them would fail)
    _flagged_store(tmp_path / "inside.zarr", rng, [3, 50, 150, 299])
    model = daskdict.fit(tmp_path / "inside.zarr", **kwargs)
    assert model.fingerprint["shape"] == [296, 8]
    with pytest.raises(InvalidInputError, match="NaN"):
        daskdict.fit(np.asarray(open_rows(tmp_path / "inside.zarr")[0]), **kwargs)


def test_every_row_flagged_is_a_clear_error(tmp_path, rng):
    _flagged_store(tmp_path / "s.zarr", rng, list(range(50)), n=50, chunk_rows=20)
    with pytest.raises(InvalidInputError, match=r"All 50 rows .* are flagged"):
        daskdict.fit(tmp_path / "s.zarr", n_atoms=4, n_nonzero=1, client="threads",
                     verbose=False)


# --------------------------------------------------------------------------- a real model


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_a_hub_model_by_name(tmp_path, image_folder):
    pytest.importorskip("transformers", reason="needs the embed extra")
    if not _hub_reachable():
        pytest.skip("needs network access to huggingface.co to download "
                    "hf-internal-testing/tiny-random-CLIPModel (offline here)")
    name = "hf-internal-testing/tiny-random-CLIPModel"
    store = daskdict.embed(image_folder, tmp_path / "s.zarr", model=name, layers="final",
                           verbose=False)
    _, final = _direct_forward("clip", name,
                                    [_open_rgb(image_folder / i) for i in store.ids])
    np.testing.assert_allclose(store.layer_array("final")[...], final, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- the writer rule


def test_output_that_is_an_input_is_refused_before_any_work(tmp_path, tiny_model,
                                                             image_folder):
    manifest = tmp_path / "captions.csv"
    manifest.write_text("path,caption\n" + "".join(
        f"{p},{p.stem}\n" for p in sorted(image_folder.rglob("img_*"))))
    model = Path(tiny_model("vit"))
    before = {root: tree_hashes(root) for root in (image_folder, model)}
    manifest_bytes = manifest.read_bytes()
    cases = [
        dict(images=image_folder, store=image_folder),
        dict(images=image_folder, store=image_folder / "inside.zarr"),
        dict(images=image_folder, captions=manifest, store=manifest),
        dict(images=image_folder, store=model),
        dict(images=image_folder, store=model / "embeddings.zarr"),
    ]
    for kwargs in cases:
        with pytest.raises(OutputNotWritableError, match="is the input"):
            daskdict.embed(model=str(model), verbose=False, **kwargs)
    assert not (image_folder / "inside.zarr").exists()
    assert not (model / "embeddings.zarr").exists()
    assert {root: tree_hashes(root) for root in before} == before
    assert manifest.read_bytes() == manifest_bytes


def test_other_outputs_are_refused_before_the_model_loads(tmp_path, image_folder, rng):
    a_file = tmp_path / "notes.zarr"
    a_file.write_text("not a store")
    dictionary = daskdict.Dictionary(np.eye(4)).save(tmp_path / "dictionary.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    for target in (a_file, dictionary, plain):
        before = tree_hashes(target) if target.is_dir() else target.read_bytes()
        for resume in (True, False):
            with pytest.raises(OutputNotWritableError):
                daskdict.embed(image_folder, target, model=str(tmp_path / "no-model"),
                               resume=resume, verbose=False)
        assert (tree_hashes(target) if target.is_dir() else target.read_bytes()) == before


def test_store_header_comes_from_formats(tmp_path, tiny_model, image_folder):
    from daskdict.io import formats

    path = tmp_path / "s.zarr"
    daskdict.embed(image_folder, path, model=tiny_model("vit"), layers="final", verbose=False)
    header = formats.read_header(path)
    assert header["kind"] == "embedding store"
    assert header["format"] == formats.FORMAT_VERSION
    assert header["version"] == daskdict.__version__
    assert header["embed"]["complete"] and header["n_items"] == 7


def test_verbose_is_checked(tmp_path, tiny_model, image_folder):
    path = tmp_path / "s.zarr"
    with pytest.raises(InvalidInputError, match="verbose"):
        daskdict.embed(image_folder, path, model=tiny_model("vit"), verbose="no")
    assert not path.exists()
    daskdict.embed(image_folder, path, model=tiny_model("vit"), layers="final", verbose=False)
    assert daskdict.open_store(path).n_items == 7


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_output_that_cannot_be_created_is_refused_before_the_model_loads(tmp_path,
                                                                           image_folder):
    # nothing can be created in /proc, although its permission bits say yes to root
    out = Path("/proc/daskdict-embed-test.zarr")
    with pytest.raises(OutputNotWritableError, match="daskdict-embed-test"):
        daskdict.embed(image_folder, out, model=str(tmp_path / "no-model"), verbose=False)
    assert not out.exists()
