"""The concept graph's surface and formats: argument order, the writer rule, kind checks."""

import inspect

import numpy as np
import pytest
import zarr

import daskdict
from daskdict.errors import InvalidInputError, OutputNotWritableError, StoreNotFoundError
from daskdict.graph import ConceptGraph
from daskdict.graph import estimator as graph_module
from daskdict.graph.planted import make_planted_graph, write_planted_layers_store
from daskdict.io import formats
from daskdict.learn.layers import fit_layers, hidden_layers

N_SAMPLES = 1500
LAYERS = (16, 16, 16)


@pytest.fixture(scope="module")
def planted():
    return make_planted_graph(N_SAMPLES, LAYERS, 2, random_state=0)


@pytest.fixture(scope="module")
def fitted(planted):
    return ConceptGraph(n_models=5, binarize_inputs=True, random_state=0, client="sync").fit(
        planted.codes)


# --------------------------------------------------------------------------- argument order


def _public_methods(cls):
    return {name: method for name, method in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_every_method_takes_the_layer_before_the_concept():
    both = {}
    for name, method in _public_methods(ConceptGraph).items():
        params = list(inspect.signature(method).parameters)
        if "layer" in params and "concept" in params:
            both[name] = params
    assert {"parents", "intervene"} <= set(both)
    for name, params in both.items():
        assert params.index("layer") < params.index("concept"), (name, params)


def test_intervene_positional_order_is_layer_then_concept(fitted, planted):
    edges = fitted.edges()
    layer, parent = 1, int(np.asarray(edges["parent"])[np.asarray(edges["layer"]) == 2][0])
    positional = fitted.intervene(layer, parent, True, planted.codes[0])
    named = fitted.intervene(concept=parent, layer=layer, on=True, codes=planted.codes[0])
    for column in ("layer", "concept", "n_turned_on", "n_turned_off"):
        np.testing.assert_array_equal(np.asarray(positional[column]), np.asarray(named[column]))
    assert (np.asarray(positional["layer"]) == 2).all() and len(positional["concept"]) > 0
    # the old order (concept, layer) names a layer that does not exist: a clear error
    with pytest.raises(InvalidInputError, match="layer < 3"):
        fitted.intervene(parent + 3, layer, True, planted.codes[0])


def test_verbose_not_progress():
    for function in (fit_layers, ConceptGraph.__init__):
        params = inspect.signature(function).parameters
        assert "verbose" in params and "progress" not in params, function


def test_fit_layers_is_learn_work_and_graph_does_not_own_it():
    import daskdict.learn.layers as layers

    assert "daskdict.graph" not in inspect.getsource(layers)
    assert not hasattr(graph_module, "FORMAT_VERSION")  # io.formats owns it
    assert hidden_layers.__module__ == "daskdict.learn.layers"


# --------------------------------------------------------------------------- formats


def test_save_writes_a_concept_graph_header_and_registers_it(fitted, tmp_path):
    path = fitted.save(tmp_path / "graph.zarr")
    meta = formats.read_header(path)
    assert meta["kind"] == "concept graph" and meta["format"] == formats.FORMAT_VERSION
    assert formats.kind_of(path) == "concept graph"
    loaded = formats.load(path)
    assert isinstance(loaded, ConceptGraph) and loaded.n_concepts_ == fitted.n_concepts_
    described = formats.describe(path)
    assert described["kind"] == "concept graph" and described["n_concepts"] == list(LAYERS)
    layers = np.asarray(fitted.edges()["layer"])
    assert described["n_edges"] == [int((layers == 1).sum()), int((layers == 2).sum())]


def test_save_follows_the_writer_rule(fitted, planted, tmp_path):
    path = fitted.save(tmp_path / "graph.zarr")
    with pytest.raises(OutputNotWritableError, match="overwrite=True"):
        fitted.save(path)
    other = ConceptGraph(n_models=3, binarize_inputs=True, random_state=1,
                         client="sync").fit(planted.codes[:2])
    other.save(path, overwrite=True)  # the same kind: replaced
    assert ConceptGraph.load(path).n_concepts_ == list(LAYERS[:2])
    dictionary = daskdict.Dictionary(np.eye(4)).save(tmp_path / "d.zarr")
    with pytest.raises(OutputNotWritableError, match="dictionary"):
        fitted.save(dictionary, overwrite=True)  # another kind: never replaced
    assert formats.kind_of(dictionary) == "dictionary"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputNotWritableError):
        fitted.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_load_checks_the_kind_and_never_changes_the_disk(fitted, planted, tmp_path):
    path = fitted.save(tmp_path / "graph.zarr")
    leftover = tmp_path / ".graph.zarr.old-0123abcd"
    zarr.open_group(leftover, mode="w")  # as a crashed swap leaves it
    before = sorted(p.name for p in tmp_path.iterdir())
    ConceptGraph.load(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    ConceptGraph(n_models=3, binarize_inputs=True, random_state=0, client="sync").fit(
        planted.codes[:2], checkpoint=tmp_path / "checkpoint")
    pair = tmp_path / "checkpoint" / "pair-001.zarr"
    assert formats.kind_of(pair) == "concept graph pair"
    with pytest.raises(InvalidInputError, match="concept graph"):
        ConceptGraph.load(pair)  # a checkpoint's pair is not a graph
    with pytest.raises(StoreNotFoundError):
        ConceptGraph.load(tmp_path / "missing.zarr")


def test_checkpoint_refuses_other_objects_before_any_work(planted, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("fit_pair ran before the checkpoint was checked")

    monkeypatch.setattr(graph_module, "fit_pair", no_work)
    graph = ConceptGraph(n_models=3, binarize_inputs=True, random_state=0, client="sync")
    dictionary = daskdict.Dictionary(np.eye(4)).save(tmp_path / "d.zarr")
    with pytest.raises(OutputNotWritableError, match="dictionary"):
        graph.fit(planted.codes, checkpoint=dictionary)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(OutputNotWritableError, match=r"notes\.txt"):
        graph.fit(planted.codes, checkpoint=notes)
    assert notes.read_text() == "mine"
    checkpoint = tmp_path / "checkpoint"
    daskdict.Dictionary(np.eye(4)).save(checkpoint / "pair-002.zarr")
    with pytest.raises(OutputNotWritableError, match="pair-002"):
        graph.fit(planted.codes, checkpoint=checkpoint)
    assert formats.kind_of(checkpoint / "pair-002.zarr") == "dictionary"
    assert not (checkpoint / "pair-001.zarr").exists()


# --------------------------------------------------------------------------- fit_layers


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / "planted.zarr"
    write_planted_layers_store(path, 600, (8, 8), 12, 2, random_state=0)
    return path


@pytest.mark.parametrize("where", ["store", "inside", "dictionary", "codes of another kind",
                                   "a file"])
def test_fit_layers_refuses_outputs_before_any_work(store_path, tmp_path, monkeypatch, where):
    import daskdict.learn.layers as layers

    def no_work(*args, **kwargs):
        raise AssertionError("a dictionary was fit before the outputs were checked")

    monkeypatch.setattr(layers, "fit", no_work)
    out = {"store": store_path, "inside": store_path / "work",
           "dictionary": tmp_path / "d.zarr", "codes of another kind": tmp_path / "work",
           "a file": tmp_path / "notes.txt"}[where]
    if where == "a file":
        out.write_text("mine")
    if where == "dictionary":
        daskdict.Dictionary(np.eye(4)).save(out)
    if where == "codes of another kind":
        daskdict.Dictionary(np.eye(4)).save(out / "hidden_01.codes.zarr")
    with pytest.raises(OutputNotWritableError):
        fit_layers(store_path, n_atoms=8, n_nonzero=2, n_iter=2, out_dir=out,
                   client="sync", verbose=False)


def test_fit_layers_reruns_into_its_own_folder(store_path, tmp_path):
    work = tmp_path / "work"
    kwargs = {"n_atoms": 8, "n_nonzero": 2, "n_iter": 2, "out_dir": work, "client": "sync",
              "verbose": False, "random_state": 0}
    first, _ = fit_layers(store_path, **kwargs)
    again, codes = fit_layers(store_path, **kwargs)  # its own outputs are replaced
    assert formats.kind_of(work / "hidden_01.dictionary.zarr") == "dictionary"
    assert formats.kind_of(work / "hidden_01.codes.zarr") == "codes"
    np.testing.assert_allclose(again["hidden_00"].atoms, first["hidden_00"].atoms)
    assert codes["hidden_01"].shape == (600, 8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"free_rate": "often"}, "free_rate"),
    ({"free_fraction": 1.0}, "free_fraction"),
    ({"noise": 0.6}, "noise"),
    ({"n_active": 0}, "n_active"),
    ({"max_parents": -1}, "max_parents"),
])
def test_planted_graph_checks_its_parameters(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        make_planted_graph(100, (8, 8), **{"n_active": 2, **kwargs})
