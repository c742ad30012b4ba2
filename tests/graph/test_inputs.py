"""What the models see of a layer: |x| over the concept's mean active |x|, in fit and inference."""

import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from scipy.special import expit

from daskdict.errors import InvalidInputError
from daskdict.graph import ConceptGraph
from daskdict.graph.inputs import input_scale, model_inputs
from daskdict.graph.planted import edge_scores, make_planted_graph
from daskdict.io.formats import HEADER_KEY

N_SAMPLES = 3000
LAYERS = (40, 40, 40)


@pytest.fixture(scope="module")
def planted():
    # signed codes, as K-SVD's are: half of every concept's codes are negative
    return make_planted_graph(N_SAMPLES, LAYERS, 3, random_state=2)


@pytest.fixture(scope="module")
def fitted(planted):
    return ConceptGraph(random_state=0, client="threads").fit(planted.codes)


def _edges(graph):
    return {(layer, int(parent), concept)
            for layer in range(1, len(graph.n_concepts_))
            for concept in range(graph.n_concepts_[layer])
            for parent in graph.parents(layer, concept)}


def _rescaled(codes, factors):
    """Codes with every concept's column multiplied by its factor (signs included)."""
    return codes @ sp.diags(factors)


def test_defaults_recover_the_edges_of_signed_codes(fitted, planted):
    # signed codes as inputs let a parent's two signs cancel: most targets got no parents
    assert fitted.get_params()["binarize_inputs"] is False
    scores = edge_scores(fitted, planted)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9
    assert scores["median_auc_driven"] >= 0.95


def test_the_graph_ignores_each_concepts_sign_and_units(fitted, planted):
    # a concept's codes times any non-zero factor carry the same activity: with the scale the
    # L1 penalty means the same in any units, so the models are the same
    rng = np.random.default_rng(0)
    factors = [rng.choice([-1.0, 1.0], size=k) * 10.0 ** rng.uniform(-3, 3, size=k)
               for k in LAYERS]
    codes = [_rescaled(c, f) for c, f in zip(planted.codes, factors, strict=True)]
    other = ConceptGraph(random_state=0, client="threads").fit(codes)
    assert _edges(other) == _edges(fitted)
    for layer in (1, 2):
        np.testing.assert_allclose(other.weights_[layer].toarray(),
                                   fitted.weights_[layer].toarray(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(other.input_scale_[layer - 1],
                                   fitted.input_scale_[layer - 1] * np.abs(factors[layer - 1]))


def test_input_scale_is_the_mean_active_magnitude_on_training_rows(fitted, planted):
    train = np.setdiff1d(np.arange(N_SAMPLES), fitted.held_out_)
    column = planted.codes[0][train].tocsc()[:, 3].data
    assert fitted.input_scale_[0][3] == pytest.approx(np.abs(column).mean())
    inputs = model_inputs(planted.codes[0], fitted.input_scale_[0], binarize=False)
    assert (inputs.data > 0).all()
    assert inputs[train].tocsc()[:, 3].data.mean() == pytest.approx(1.0)
    # a concept never active gets the unit scale (nothing to divide)
    assert input_scale(sp.csr_matrix((5, 2)))[1] == 1.0


def test_predict_scales_the_first_layer_as_fit_did(fitted, planted):
    first = planted.codes[0][:500]
    activations, proba = fitted.predict(first, return_proba=True)
    by_hand = expit((abs(first) @ sp.diags(1 / fitted.input_scale_[0]) @ fitted.weights_[1])
                    .toarray() + fitted.intercepts_[1])
    modelled = np.asarray(fitted.metrics_["status"])[:LAYERS[1]] == "ok"
    np.testing.assert_allclose(proba[1][:, modelled], by_hand[:, modelled], rtol=1e-5)
    # layer 2 sees layer 1's predicted activations as 1: a code of the mean magnitude
    by_hand_2 = expit((activations[1].astype(float) @ fitted.weights_[2]).toarray()
                      + fitted.intercepts_[2])
    modelled = np.asarray(fitted.metrics_["status"])[LAYERS[1]:] == "ok"
    np.testing.assert_allclose(proba[2][:, modelled], by_hand_2[:, modelled], rtol=1e-5)
    # the sign of a code is dropped, as in fit
    flipped = fitted.predict(-first)
    assert all((x != y).nnz == 0 for x, y in zip(activations, flipped, strict=True))


def test_intervene_forces_a_concept_at_its_mean_magnitude(fitted, planted):
    first = planted.codes[0][:500].tocsr()
    concept = int(np.argmax(np.diff(fitted.weights_[1].indptr)))  # the most children
    changes = fitted.intervene(0, concept, True, first)
    # the same as predicting from codes where the concept is active at its input scale
    forced = first.tolil()
    forced[:, concept] = fitted.input_scale_[0][concept]
    before, after = fitted.predict(first), fitted.predict(forced.tocsr())
    turned_on = np.asarray((after[1].astype(int) - after[1].multiply(before[1])).sum(axis=0))
    in_layer_1 = np.asarray(changes["layer"]) == 1
    assert in_layer_1.any()
    np.testing.assert_array_equal(np.asarray(changes["n_turned_on"])[in_layer_1],
                                  turned_on.ravel()[np.asarray(changes["concept"])[in_layer_1]])


def test_saved_graph_keeps_its_scale(fitted, planted, tmp_path):
    loaded = ConceptGraph.load(fitted.save(tmp_path / "graph.zarr"))
    for layer in range(len(LAYERS)):
        np.testing.assert_array_equal(loaded.input_scale_[layer], fitted.input_scale_[layer])
    _, before = fitted.predict(planted.codes[0], return_proba=True)
    _, after = loaded.predict(planted.codes[0], return_proba=True)
    np.testing.assert_array_equal(after[2], before[2])


def _as_first_layout(path):
    """Make a saved graph look like one of the first layout: no input encoding, no scale."""
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs[HEADER_KEY])
    del meta["settings"]["input_encoding"]
    group.attrs[HEADER_KEY] = meta
    for layer in group["layers"]:
        shutil.rmtree(path / "layers" / layer / "input_scale")
    return meta


def test_first_layout_graphs_on_signed_codes_are_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "old.zarr")
    _as_first_layout(path)
    with pytest.raises(InvalidInputError, match=r"first layout.*input_encoding.*Refit"):
        ConceptGraph.load(path)


def test_first_layout_binarised_graphs_still_load(planted, tmp_path):
    graph = ConceptGraph(n_models=5, binarize_inputs=True, random_state=0,
                         client="threads").fit(planted.codes)
    path = graph.save(tmp_path / "old.zarr")
    _as_first_layout(path)
    loaded = ConceptGraph.load(path)
    assert loaded.get_params()["binarize_inputs"] is True
    before, after = graph.predict(planted.codes[0]), loaded.predict(planted.codes[0])
    assert all((x != y).nnz == 0 for x, y in zip(before, after, strict=True))


def test_defaults_predict_two_layers_away(fitted, planted):
    # layer 2 from layer 1's predicted activations (each entering as 1, the mean scaled
    # magnitude) is a weaker guess than from the codes, yet far better than chance
    scores = fitted.score_predictions(planted.codes)
    in_layer = [np.asarray(scores["layer"]) == layer for layer in (1, 2)]
    auc = np.asarray(scores["auc"], dtype=float)
    assert np.nanmedian(auc[in_layer[0]][planted.driven(1)]) > 0.95
    assert np.nanmedian(auc[in_layer[1]][planted.driven(2)]) > 0.85
