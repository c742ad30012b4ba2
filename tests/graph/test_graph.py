"""The concept graph between layers: recovery, reproducibility, resume, inference, formats."""

import json
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import sparse

import daskdict
from daskdict import cli
from daskdict.errors import (
    CheckpointMismatchError,
    InvalidInputError,
)
from daskdict.evaluation.metrics import align_atoms
from daskdict.graph import ConceptGraph
from daskdict.graph import estimator as graph_module
from daskdict.graph.fitting import roc_curve_points
from daskdict.graph.inputs import as_code_matrix
from daskdict.graph.planted import edge_scores, make_planted_graph, write_planted_layers_store
from daskdict.learn.layers import fit_layers

N_SAMPLES = 3000
LAYERS = (40, 40, 40)


@pytest.fixture(scope="module")
def planted():
    return make_planted_graph(N_SAMPLES, LAYERS, 3, random_state=0)


@pytest.fixture(scope="module")
def fitted(planted):
    # the binarize_inputs option (tests/graph/test_inputs.py fits the defaults)
    return ConceptGraph(binarize_inputs=True, random_state=0, client="threads").fit(
        planted.codes)


def _parents(graph):
    return [[graph.parents(layer, c).tolist() for c in range(graph.n_concepts_[layer])]
            for layer in range(1, len(graph.n_concepts_))]


# --------------------------------------------------------------------------- recovery


def test_recovers_planted_edges_from_planted_codes(fitted, planted):
    scores = edge_scores(fitted, planted)
    assert scores["n_planted"] == sum(LAYERS[:-1])  # every concept is one concept's parent
    assert scores["precision"] >= 0.9
    assert scores["recall"] >= 0.9
    assert scores["median_auc_driven"] >= 0.95


def test_metrics_table(fitted, planted):
    metrics = fitted.metrics_
    n_targets = sum(LAYERS[1:])
    for column in ("layer", "concept", "n_parents", "auc", "f1", "n_train_positive",
                   "n_held_out_positive", "status"):
        assert len(metrics[column]) == n_targets
    layer = np.asarray(metrics["layer"])
    assert (layer[:LAYERS[1]] == 1).all() and (layer[LAYERS[1]:] == 2).all()
    assert (np.asarray(metrics["status"]) == "ok").all()
    n_parents = np.asarray(metrics["n_parents"])
    assert n_parents[3] == fitted.parents(1, 3).size
    # the held-out positives are those of the held-out rows, not of the training rows
    truth = planted.codes[2].tocsc()
    held_out = np.zeros(N_SAMPLES, dtype=bool)
    held_out[fitted.held_out_] = True
    concept = 5
    rows = truth.indices[truth.indptr[concept]:truth.indptr[concept + 1]]
    assert np.asarray(metrics["n_held_out_positive"])[LAYERS[1] + concept] == held_out[rows].sum()
    assert fitted.held_out_.size == round(0.2 * N_SAMPLES)
    # driven concepts are predicted far better than chance, free ones are not predicted
    auc = np.asarray(metrics["auc"], dtype=float)
    driven = np.concatenate([planted.driven(1), planted.driven(2)])
    assert np.median(auc[driven]) > 0.95
    assert np.median(np.asarray(metrics["f1"], dtype=float)[driven]) > 0.7
    assert np.median(n_parents[~driven]) == 0


def test_real_valued_inputs_on_positive_codes():
    planted = make_planted_graph(N_SAMPLES, (32, 32), 3, signed=False, random_state=1)
    graph = ConceptGraph(random_state=1, client="threads").fit(planted.codes)
    scores = edge_scores(graph, planted)
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9
    assert scores["median_auc_driven"] >= 0.95
    # mean_active_value_ describes the codes; the models see |x| over the training rows' mean
    np.testing.assert_allclose(graph.mean_active_value_[1][0],
                               planted.codes[1].tocsc()[:, 0].data.mean())
    train = np.setdiff1d(np.arange(N_SAMPLES), graph.held_out_)
    np.testing.assert_allclose(graph.input_scale_[1][0],
                               planted.codes[1][train].tocsc()[:, 0].data.mean())
    predicted = graph.score_predictions(planted.codes)
    assert np.nanmedian(np.asarray(predicted["auc"], dtype=float)[planted.driven(1)]) > 0.95


def test_too_few_positives_get_a_record_not_a_crash(planted):
    right = planted.codes[1].tolil()
    right[:, 7] = 0
    right[:3, 7] = 1.0  # three samples: too few to fit
    right[:, 9] = 1.0  # always active: no negatives
    graph = ConceptGraph(n_models=3, binarize_inputs=True, random_state=0,
                         client="sync").fit([planted.codes[0], right.tocsr()])
    status = np.asarray(graph.metrics_["status"])
    auc = np.asarray(graph.metrics_["auc"], dtype=float)
    assert status[7] == "too_few_positives" and np.isnan(auc[7])
    assert status[9] == "too_few_negatives" and np.isnan(auc[9])
    assert graph.parents(1, 7).size == 0
    assert (np.delete(status, [7, 9]) == "ok").all()
    # concepts without a model are never predicted active
    activations = graph.predict(planted.codes[0])
    assert activations[1][:, 7].nnz == 0 and activations[1][:, 9].nnz == 0


# --------------------------------------------------------------------------- reproducibility


def test_reproducible_with_random_state(planted):
    codes = planted.codes[:2]
    a = ConceptGraph(n_models=5, binarize_inputs=True, random_state=3, client="sync",
                     batch_size=7).fit(codes)
    b = ConceptGraph(n_models=5, binarize_inputs=True, random_state=3, client="threads").fit(
        codes)
    c = ConceptGraph(n_models=5, binarize_inputs=True, random_state=4, client="sync").fit(codes)
    assert _parents(a) == _parents(b)
    np.testing.assert_array_equal(a.held_out_, b.held_out_)
    np.testing.assert_array_equal(np.asarray(a.metrics_["auc"]), np.asarray(b.metrics_["auc"]))
    np.testing.assert_array_equal(a.weights_[1].toarray(), b.weights_[1].toarray())
    assert not np.array_equal(a.held_out_, c.held_out_)


def test_code_types_give_the_same_matrix(planted):
    dense = planted.codes[0].toarray()
    indices = np.argsort(dense == 0, axis=1, kind="stable")[:, :3].astype(np.int32)
    values = np.take_along_axis(dense, indices, axis=1)
    codes = daskdict.Codes(indices, values, dense.shape[1])
    reference = as_code_matrix(planted.codes[0])
    for source in (codes, dense, sparse.COO.from_numpy(dense), sp.csc_array(dense)):
        converted = as_code_matrix(source)
        assert converted.shape == reference.shape
        assert (converted != reference).nnz == 0


def test_roc_points_match_scikit_learn(rng):
    from sklearn.metrics import roc_auc_score, roc_curve

    scores = rng.integers(0, 6, 400) / 5.0  # many ties, as constant-intercept models give
    labels = rng.random(400) < 0.1 + 0.6 * scores
    fpr, tpr = roc_curve_points(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores))
    reference_fpr, reference_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, reference_fpr)
    np.testing.assert_allclose(tpr, reference_tpr)


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted, planted, tmp_path):
    path = fitted.save(tmp_path / "graph.zarr")
    loaded = ConceptGraph.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.n_concepts_ == fitted.n_concepts_ and loaded.seed_ == fitted.seed_
    assert _parents(loaded) == _parents(fitted)
    for column in ("auc", "f1", "status", "n_parents"):
        np.testing.assert_array_equal(np.asarray(loaded.metrics_[column]),
                                      np.asarray(fitted.metrics_[column]))
    np.testing.assert_array_equal(loaded.roc_curves(2)[1], fitted.roc_curves(2)[1])
    before = fitted.predict(planted.codes[0])
    after = loaded.predict(planted.codes[0])
    assert all((x != y).nnz == 0 for x, y in zip(before, after, strict=True))


def test_load_refuses_other_groups(tmp_path):
    daskdict.Dictionary(np.eye(8)).save(tmp_path / "d.zarr")
    with pytest.raises(InvalidInputError, match="concept graph"):
        ConceptGraph.load(tmp_path / "d.zarr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ConceptGraph.load(tmp_path / "missing.zarr")


def test_resume_after_a_finished_pair(fitted, planted, tmp_path, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    real_fit_pair = graph_module.fit_pair
    computed = []

    def interrupted(rt, left, right, layer, *args):
        if layer == 2:
            raise KeyboardInterrupt  # the fit dies after the first pair is saved
        computed.append(layer)
        return real_fit_pair(rt, left, right, layer, *args)

    def counting(rt, left, right, layer, *args):
        computed.append(layer)
        return real_fit_pair(rt, left, right, layer, *args)

    params = {"binarize_inputs": True, "random_state": 0, "client": "threads"}
    monkeypatch.setattr(graph_module, "fit_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ConceptGraph(**params).fit(planted.codes, checkpoint=checkpoint)
    assert computed == [1]
    assert (checkpoint / "pair-001.zarr" / "zarr.json").exists()
    assert not (checkpoint / "pair-002.zarr").exists()

    monkeypatch.setattr(graph_module, "fit_pair", counting)
    resumed = ConceptGraph(**params).fit(planted.codes, checkpoint=checkpoint)
    assert computed == [1, 2]  # pair 1 was read back, only pair 2 was fit
    assert _parents(resumed) == _parents(fitted)
    np.testing.assert_array_equal(np.asarray(resumed.metrics_["auc"]),
                                  np.asarray(fitted.metrics_["auc"]))

    # random_state=None adopts the checkpoint's seed (the held-out split must not change)
    again = ConceptGraph(binarize_inputs=True, client="threads").fit(planted.codes,
                                                                     checkpoint=checkpoint)
    assert computed == [1, 2] and again.seed_ == resumed.seed_

    with pytest.raises(CheckpointMismatchError, match="other parameters"):
        ConceptGraph(**{**params, "penalty": 2.0}).fit(planted.codes, checkpoint=checkpoint)
    with pytest.raises(CheckpointMismatchError, match="other parameters"):
        ConceptGraph(**{**params, "binarize_inputs": False}).fit(planted.codes,
                                                                 checkpoint=checkpoint)
    other_codes = [planted.codes[0], planted.codes[2], planted.codes[1]]
    with pytest.raises(CheckpointMismatchError, match="other codes"):
        ConceptGraph(**params).fit(other_codes, checkpoint=checkpoint)
    with pytest.raises(CheckpointMismatchError, match="random_state"):
        ConceptGraph(**{**params, "random_state": 1}).fit(planted.codes, checkpoint=checkpoint)


# --------------------------------------------------------------------------- inference


def test_predict_argmax_runs_every_layer(fitted, planted):
    activations = fitted.predict(planted.codes[0], mode="argmax")
    assert [a.shape for a in activations] == [(N_SAMPLES, k) for k in LAYERS]
    assert all(a.dtype == bool for a in activations)
    assert (activations[0] != (planted.codes[0] != 0)).nnz == 0
    # layer 1 from the true layer 0 is each layer-1 model applied to the input
    again, proba = fitted.predict(planted.codes[0], return_proba=True)
    assert proba[0] is None and proba[1].shape == (N_SAMPLES, LAYERS[1])
    np.testing.assert_array_equal(again[1].toarray(), proba[1] > 0.5)
    inputs = (planted.codes[0] != 0).astype(float)
    logits = (inputs @ fitted.weights_[1]).toarray() + fitted.intercepts_[1]
    np.testing.assert_allclose(proba[1], 1 / (1 + np.exp(-logits)), rtol=1e-5)


@pytest.mark.parametrize(("mode", "min_auc", "min_f1"), [("argmax", 0.9, 0.5),
                                                         ("sample", 0.6, 0.3)])
def test_predict_scores_on_held_out_rows_in_both_modes(fitted, planted, mode, min_auc, min_f1):
    """Two layers away from the input; one Bernoulli draw per layer is a noisier guess."""
    scores = fitted.score_predictions(planted.codes, mode=mode, random_state=0)
    last = np.asarray(scores["layer"]) == 2
    driven, free = planted.driven(2), ~planted.driven(2)
    auc = np.asarray(scores["auc"], dtype=float)[last]
    f1 = np.asarray(scores["f1"], dtype=float)[last]
    assert np.nanmedian(auc[driven]) > min_auc
    assert np.nanmedian(f1[driven]) > min_f1
    assert np.nanmedian(auc[free]) < 0.6  # free concepts do not depend on layer 1
    n_positive = np.asarray(scores["n_positive"])[last]
    truth = planted.codes[2][fitted.held_out_]
    np.testing.assert_array_equal(n_positive, truth.getnnz(axis=0))


def test_predict_sample_mode(fitted, planted):
    first = planted.codes[0]
    a = fitted.predict(first, mode="sample", random_state=5)
    b = fitted.predict(first, mode="sample", random_state=5)
    c = fitted.predict(first, mode="sample", random_state=6)
    assert all((x != y).nnz == 0 for x, y in zip(a, b, strict=True))
    assert (a[2] != c[2]).nnz > 0
    # calibrated draws keep the real frequencies: about 3 active concepts per sample
    for layer in (1, 2):
        assert 2.0 < a[layer].sum() / N_SAMPLES < 4.0
    uncalibrated = fitted.predict(first, mode="sample", random_state=5, calibrated=False)
    assert uncalibrated[2].sum() > a[2].sum()


def test_intervene_changes_only_children(fitted, planted):
    layer, concept = 1, next(c for c in range(LAYERS[1])
                             if any(concept_has_parent(fitted, 2, c)))
    changes = fitted.intervene(layer, concept, True, planted.codes[0])
    changed_layers = np.asarray(changes["layer"])
    assert (changed_layers == 2).all() and changed_layers.size > 0
    for child in np.asarray(changes["concept"]):
        assert concept in fitted.parents(2, int(child))
    assert np.asarray(changes["n_turned_on"]).sum() > 0
    off = fitted.intervene(layer, concept, False, planted.codes[0])
    assert np.asarray(off["n_turned_off"]).sum() > np.asarray(off["n_turned_on"]).sum()
    # forcing a layer-0 concept reaches its children in layer 1, and only them
    root = int(fitted.parents(1, int(np.flatnonzero(
        np.asarray(fitted.metrics_["n_parents"])[:LAYERS[1]])[0]))[0])
    changes = fitted.intervene(0, root, True, planted.codes[0])
    in_layer_1 = np.asarray(changes["concept"])[np.asarray(changes["layer"]) == 1]
    assert in_layer_1.size > 0
    assert all(root in fitted.parents(1, int(c)) for c in in_layer_1)
    # in sample mode both runs share their draws: only the intervention differs
    sampled = fitted.intervene(layer, concept, True, planted.codes[0], mode="sample",
                               random_state=0)
    for child in np.asarray(sampled["concept"]):
        assert concept in fitted.parents(2, int(child))


def concept_has_parent(graph, layer, parent):
    return (parent in graph.parents(layer, c) for c in range(graph.n_concepts_[layer]))


# --------------------------------------------------------------------------- views


def test_edges_and_networkx(fitted):
    pytest.importorskip("networkx", reason="to_networkx needs networkx (the graph extra)")
    edges = fitted.edges()
    assert len(edges["parent"]) == int(np.asarray(fitted.metrics_["n_parents"]).sum())
    nx_graph = fitted.to_networkx()
    assert nx_graph.number_of_nodes() == sum(LAYERS)
    assert nx_graph.number_of_edges() == len(edges["parent"])
    layer, parent, concept = (int(np.asarray(edges[k])[0]) for k in ("layer", "parent",
                                                                      "concept"))
    assert nx_graph.has_edge((layer - 1, parent), (layer, concept))
    assert 0.8 <= nx_graph.edges[(layer - 1, parent), (layer, concept)]["usage"] <= 1.0


def test_to_networkx_without_networkx(fitted, monkeypatch):
    monkeypatch.setitem(sys.modules, "networkx", None)
    with pytest.raises(ImportError, match=r"pip install 'daskdict\[graph\]'"):
        fitted.to_networkx()


def test_pictures(fitted):
    fig = fitted.plot_parents()
    heights = sum(patch.get_height() for patch in fig.axes[0].patches)
    assert heights == LAYERS[2]
    fig = fitted.plot_roc(layer=1)
    n_curves = int((~np.isnan(fitted.roc_curves(1)[1]).any(axis=1)).sum())
    assert len(fig.axes[0].lines) == n_curves + 2  # the curves, the median, chance
    _, median = fig.axes[0].lines[-2].get_data()
    assert np.all(np.diff(median) >= 0) and median[-1] == pytest.approx(1.0)
    assert len(fitted.plot_scores().axes) == 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("codes", "message"), [
    (lambda p: [p.codes[0]], "at least 2 layers"),
    (lambda p: p.codes[0], "list of per-layer codes"),
    (lambda p: "codes.zarr", "list of per-layer codes"),
    (lambda p: [p.codes[0], p.codes[1][:100]], "same number of samples"),
    (lambda p: [p.codes[0], [[1, 0]] * 3], "Got list"),
    (lambda p: [p.codes[0], np.zeros(5)], "2-D"),
    (lambda p: [p.codes[0], p.codes[1].multiply(np.nan).tocsr()], "NaN"),
    (lambda p: [p.codes[0], np.zeros((N_SAMPLES, 4), dtype="U1")], "numbers"),
])
def test_bad_codes(planted, codes, message):
    with pytest.raises(InvalidInputError, match=message):
        ConceptGraph(client="sync").fit(codes(planted))


@pytest.mark.parametrize(("params", "message"), [
    ({"n_models": 0}, "n_models"), ({"n_models": 2.5}, "n_models"),
    ({"penalty": -1.0}, "penalty"), ({"penalty": float("nan")}, "penalty"),
    ({"min_usage": 0.0}, "min_usage"), ({"min_usage": 1.5}, "min_usage"),
    ({"test_size": 1.0}, "test_size"), ({"binarize_inputs": "yes"}, "binarize_inputs"),
    ({"max_samples_per_class": 0}, "max_samples_per_class"), ({"batch_size": -3}, "batch_size"),
])
def test_bad_parameters(planted, params, message):
    with pytest.raises(InvalidInputError, match=message):
        ConceptGraph(client="sync", **params).fit(planted.codes)


def test_bad_queries(fitted, planted):
    with pytest.raises(InvalidInputError, match="1 <= layer < 3"):
        fitted.parents(0, 1)
    with pytest.raises(InvalidInputError, match="concept"):
        fitted.parents(1, 40)
    with pytest.raises(InvalidInputError, match="40 concepts"):
        fitted.predict(planted.codes[0][:, :10])
    with pytest.raises(InvalidInputError, match="mode"):
        fitted.predict(planted.codes[0], mode="max")
    with pytest.raises(InvalidInputError, match="on to be True or False"):
        fitted.intervene(1, 1, "on", planted.codes[0])
    with pytest.raises(InvalidInputError, match="mode to be one of"):
        fitted.intervene(1, 1, True, planted.codes[0], mode="max")
    with pytest.raises(InvalidInputError, match="held_out"):
        fitted.score_predictions([c[:100] for c in planted.codes])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ConceptGraph().parents(1, 0)


# --------------------------------------------------------------------------- end to end


def test_planted_store_to_graph_end_to_end(tmp_path):
    """Embeddings -> one K-SVD dictionary per layer -> codes -> graph -> planted edges."""
    path = tmp_path / "planted.zarr"
    _, planted = write_planted_layers_store(path, 4000, (40, 40, 40), 48, 3, snr_db=30.0,
                                            random_state=0)
    dictionaries, codes = fit_layers(path, n_atoms=40, n_nonzero=3, n_iter=50, random_state=0,
                                     client="threads", verbose=False)
    assert list(codes) == ["hidden_00", "hidden_01", "hidden_02"]
    assert all(isinstance(c, daskdict.Codes) for c in codes.values())
    aligned = [align_atoms(atoms, d.atoms)
               for atoms, d in zip(planted.atoms, dictionaries.values(), strict=True)]
    graph = ConceptGraph(binarize_inputs=True, random_state=0, client="threads").fit(
        list(codes.values()))
    scores = edge_scores(graph, planted.graph, [m for m, _ in aligned], min_similarity=0.9,
                         similarities=[s for _, s in aligned])
    assert scores["precision"] >= 0.9 and scores["recall"] >= 0.9
    assert scores["median_auc_driven"] >= 0.95


def test_cli_graph(tmp_path, capsys):
    path = tmp_path / "planted.zarr"
    write_planted_layers_store(path, 1500, (12, 12), 16, 2, random_state=0)
    out = tmp_path / "graph.zarr"
    assert cli.main(["graph", str(path), "--out", str(out), "--atoms", "12", "--nonzero", "2",
                     "--iters", "10", "--models", "5", "--binarize", "--seed", "0",
                     "--in-process", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["layers"] == ["hidden_00", "hidden_01"] and result["n_concepts"] == [12, 12]
    graph = ConceptGraph.load(out)
    assert result["n_edges"] == len(graph.edges()["parent"]) > 0
    assert (tmp_path / "graph.zarr.work" / "hidden_01.codes.zarr").exists()
    assert (tmp_path / "graph.zarr.work" / "graph-checkpoint" / "pair-001.zarr").exists()
    # a store with one hidden layer is refused before any work
    daskdict.create_store(tmp_path / "one.zarr", {"hidden_00": np.ones((10, 4))})
    assert cli.main(["graph", str(tmp_path / "one.zarr"), "--out", str(tmp_path / "g2.zarr"),
                     "--in-process", "--quiet"]) == 2
    assert "at least 2 layers" in capsys.readouterr().err
