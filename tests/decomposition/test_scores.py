"""Component scores (Balasubramanian, Basu, Feizi (2024), Alg. 2) on planted features.

The planted data (:mod:`daskdict.datasets.features`) give each component a known importance
for each feature, so the scores' orderings can be checked against them; small random data
check the one-pass moments against ``np.corrcoef``.
"""

from __future__ import annotations

import json
import warnings

import dask.array as da
import numpy as np
import pytest
from helpers_clip import save_tiny_clip
from helpers_text import save_tiny_bert
from scipy.stats import spearmanr

import daskdict
import daskdict.decomposition.scores as scores_module
from daskdict.datasets.features import make_feature_components, planted_feature_components
from daskdict.decomposition.scores import (
    ComponentScores,
    component_scores,
    feature_vectors,
    ordering_agreement,
    orthonormal_basis,
    proxy_scores,
)
from daskdict.errors import InvalidInputError, OutputNotWritableError

# the bar: Spearman between the score ordering and the planted importances, per feature
SPEARMAN_BAR = 0.8


def _reference_scores(aligned: dict, features: dict) -> np.ndarray:
    """Alg. 2 written out in memory: np.corrcoef per basis direction."""
    total = sum(aligned.values())
    out = np.zeros((len(aligned), len(features)))
    for p, vectors in enumerate(features.values()):
        basis = orthonormal_basis(vectors)
        s_z = total @ basis.T
        for i, contribution in enumerate(aligned.values()):
            s_c = contribution @ basis.T
            out[i, p] = np.mean([np.corrcoef(s_z[:, j], s_c[:, j])[0, 1]
                                 for j in range(basis.shape[0])])
    return out


@pytest.fixture(scope="module")
def planted():
    return planted_feature_components(n_rows=2000, n_components=12, n_features=4,
                                      random_state=0)


def _small(rng, n=300, m=4, width=8):
    aligned = {f"c{i}": rng.standard_normal((n, width)) for i in range(m)}
    aligned["c0"] += 2 * aligned["c1"]  # correlated components, as in a real model
    features = {"a": rng.standard_normal((3, width)), "b": rng.standard_normal((2, width))}
    return aligned, features


def test_scores_order_components_like_the_planted_importances(planted):
    scores = component_scores(planted.aligned, planted.feature_vectors)
    rho = [spearmanr(scores.scores[:, p], planted.importances[:, p])[0]
           for p in range(len(planted.features))]
    print(f"Spearman(score ordering, planted importances) per feature: {np.round(rho, 3)}, "
          f"mean {np.mean(rho):.3f}")
    assert np.mean(rho) >= SPEARMAN_BAR
    assert min(rho) >= 0.6
    assert scores.components == tuple(planted.components)
    assert scores.features == tuple(planted.features)
    assert scores.n_rows == 2000 and scores.method == "projection"


def test_make_feature_components_is_the_short_form():
    aligned, vectors, importances = make_feature_components(n_rows=50, n_components=5,
                                                            n_features=2, width=16)
    assert len(aligned) == 5 and all(a.shape == (50, 16) for a in aligned.values())
    assert [v.shape for v in vectors.values()] == [(3, 16), (3, 16)]
    assert importances.shape == (5, 2) and np.all(importances >= 0)
    # each feature is a subspace of its own: different features' vectors are orthogonal
    np.testing.assert_allclose(vectors["feature_0"] @ vectors["feature_1"].T, 0, atol=1e-12)


def test_planted_alignment_maps_are_exact(planted):
    for name in planted.components:
        np.testing.assert_allclose(planted.contributions[name] @ planted.maps[name].T,
                                   planted.aligned[name], atol=1e-10)


def test_scores_match_corrcoef_in_memory_and_out_of_core(rng):
    aligned, features = _small(rng)
    expected = _reference_scores(aligned, features)
    np.testing.assert_allclose(component_scores(aligned, features).scores, expected,
                               atol=1e-10)
    lazy = {k: da.from_array(v.astype(np.float32), chunks=(37, 3)) for k, v in aligned.items()}
    np.testing.assert_allclose(component_scores(lazy, features).scores, expected, atol=1e-5)
    # NumPy and Dask arrays of other row chunks together
    mixed = {**lazy, "c1": aligned["c1"], "c2": da.from_array(aligned["c2"], chunks=(100, -1))}
    np.testing.assert_allclose(component_scores(mixed, features).scores, expected, atol=1e-5)


def test_the_pass_cuts_row_chunks_to_bound_its_memory(rng, monkeypatch):
    aligned, features = _small(rng)
    expected = _reference_scores(aligned, features)
    seen = []
    original = scores_module._block_moments

    def spy(*blocks, **kwargs):
        seen.append(blocks[0].shape[0])
        return original(*blocks, **kwargs)

    # 5 directions x 4 components x 8 bytes per row: 40 rows per task at most
    monkeypatch.setattr(scores_module, "MOMENT_BYTES", 40 * 5 * 4 * 8)
    monkeypatch.setattr(scores_module, "_block_moments", spy)
    lazy = {k: da.from_array(v, chunks=(300, -1)) for k, v in aligned.items()}
    np.testing.assert_allclose(component_scores(lazy, features).scores, expected, atol=1e-10)
    assert max(seen) == 40 and sum(s for s in seen if s > 1) >= 300


def test_zarr_layers_are_read_by_row_chunks(rng, tmp_path):
    zarr = pytest.importorskip("zarr")
    aligned, features = _small(rng)
    stored = {}
    for name, values in aligned.items():
        stored[name] = zarr.create_array(tmp_path / f"{name}.zarr", shape=values.shape,
                                         chunks=(64, 8), dtype="f8")
        stored[name][:] = values
    np.testing.assert_allclose(component_scores(stored, features).scores,
                               _reference_scores(aligned, features), atol=1e-10)


def test_a_large_offset_does_not_cancel_the_correlations(rng):
    aligned, features = _small(rng)
    expected = _reference_scores(aligned, features)  # correlations ignore offsets
    shifted = {k: da.from_array(v + 1e7, chunks=(50, -1)) for k, v in aligned.items()}
    np.testing.assert_allclose(component_scores(shifted, features).scores, expected,
                               atol=1e-6)


def test_orthonormal_basis_handles_rank_deficiency(rng):
    vectors = rng.standard_normal((3, 6))
    dependent = np.vstack([vectors, vectors[0] + 2 * vectors[2], np.zeros(6), vectors[1]])
    basis = orthonormal_basis(dependent)
    assert basis.shape == (3, 6)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
    # the same span, and the first direction is the first instantiation's
    np.testing.assert_allclose(dependent - dependent @ basis.T @ basis, 0, atol=1e-10)
    np.testing.assert_allclose(basis[0], vectors[0] / np.linalg.norm(vectors[0]))
    with pytest.raises(InvalidInputError, match="all zero"):
        orthonormal_basis(np.zeros((2, 6)))
    # a dependent instantiation leaves the scores as without it
    aligned, _ = _small(rng, width=6)
    one = component_scores(aligned, {"f": vectors}).scores
    np.testing.assert_allclose(component_scores(aligned, {"f": dependent}).scores, one,
                               atol=1e-12)


def _table() -> ComponentScores:
    return ComponentScores(np.array([[0.9, 0.8, 0.1], [0.5, 0.0, 0.0], [0.2, 0.7, 0.6],
                                     [0.6, 0.1, 0.55]]),
                           ["h0", "h1", "h2", "mlp"], ["color", "shape", "texture"])


def test_orderings_and_the_score_gap():
    table = _table()
    assert table.component_order("color") == ["h0", "mlp", "h1", "h2"]
    assert table.feature_order("h2") == ["shape", "texture", "color"]
    assert table.top_components("color", 2) == ["h0", "mlp"]
    # gaps for color: h0 0.1, h1 0.5, h2 -0.5, mlp 0.05: h1 is color's most specific
    np.testing.assert_allclose(table.gaps("color"), [0.1, 0.5, -0.5, 0.05])
    assert table.gap_components("color", 2) == ["h1", "h0"]
    single = ComponentScores(table.scores[:, :1], table.components, ["color"])
    assert single.gap_components("color", 1) == ["h0"]


def test_rows_list_every_pair_with_its_rank():
    rows = _table().rows()
    assert len(rows) == 12
    assert {"component": "mlp", "feature": "color", "score": 0.6, "rank": 2} in rows
    assert {"component": "h2", "feature": "shape", "score": 0.7, "rank": 2} in rows


@pytest.mark.parametrize("call, message", [
    (lambda t: t.top_components("color", 5), "exceeds the number of components"),
    (lambda t: t.top_components("color", 0), "positive integer"),
    (lambda t: t.component_order("size"), "Unknown feature 'size'"),
    (lambda t: t.feature_order("h9"), "Unknown component 'h9'"),
    (lambda t: t.gap_components("size", 1), "Unknown feature"),
])
def test_table_queries_name_the_problem(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(_table())


def test_save_load_round_trip_through_daskdict_load(tmp_path):
    table = _table()
    path = table.save(tmp_path / "scores.json")
    header = json.loads(path.read_text())["daskdict"]
    assert header["kind"] == "component scores"
    loaded = daskdict.load(path)
    assert isinstance(loaded, ComponentScores)
    np.testing.assert_array_equal(loaded.scores, table.scores)
    assert loaded.components == table.components and loaded.features == table.features
    assert daskdict.describe(path)["top_components"]["color"] == ["h0", "mlp", "h1"]
    with pytest.raises(OutputNotWritableError, match="overwrite=True"):
        table.save(path)
    changed = ComponentScores(table.scores * 0.5, table.components, table.features)
    changed.save(path, overwrite=True)
    np.testing.assert_array_equal(ComponentScores.load(path).scores, table.scores * 0.5)
    other = tmp_path / "notes.json"
    other.write_text("{}")
    with pytest.raises(OutputNotWritableError):
        table.save(other, overwrite=True)
    assert other.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_inputs_are_refused_before_any_work(rng):
    aligned, features = _small(rng)
    cases = [
        ({}, features, "non-empty mapping"),
        ({**aligned, "c9": rng.standard_normal((299, 8))}, features, "same rows and width"),
        ({**aligned, "c9": rng.standard_normal((300, 7))}, features, "same rows and width"),
        (aligned, {"a": rng.standard_normal((3, 7))}, r"shape \(k, 8\)"),
        (aligned, {"a": np.full((2, 8), np.nan)}, "NaN"),
        ({**aligned, "c0": np.where(np.eye(300, 8) > 0, np.nan, 1.0)}, features,
         r"aligned\['c0'\] holds NaN"),
        ({k: v[:1] for k, v in aligned.items()}, features, "at least 2 rows"),
        ({k: v.astype(complex) for k, v in aligned.items()}, features, "numeric 2-D"),
        (aligned, [], "non-empty mapping"),
    ]
    for bad_aligned, bad_features, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            component_scores(bad_aligned, bad_features)


def test_nan_in_a_dask_component_is_named(rng):
    aligned, features = _small(rng)
    values = aligned["c2"].copy()
    values[123, 4] = np.nan
    lazy = {**aligned, "c2": da.from_array(values, chunks=(100, -1))}
    with pytest.raises(InvalidInputError, match=r"aligned\['c2'\] holds NaN"):
        component_scores(lazy, features)


def test_proxy_matches_cosine_correlations_and_agrees_on_planted(planted, rng):
    aligned, features = _small(rng)
    target = sum(aligned.values()) + rng.standard_normal((300, 8))
    proxy = proxy_scores(aligned, target, features)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    for p, vectors in enumerate(features.values()):
        cos_t = unit(target) @ unit(vectors).T
        for i, contribution in enumerate(aligned.values()):
            cos_c = unit(contribution) @ unit(vectors).T
            expected = np.mean([np.corrcoef(cos_c[:, s], cos_t[:, s])[0, 1]
                                for s in range(len(vectors))])
            assert proxy.scores[i, p] == pytest.approx(expected, abs=1e-10)
    assert proxy.method == "clip proxy"
    # on planted data, with the representation plus noise as the CLIP embedding
    clip = sum(planted.aligned.values()) + np.random.default_rng(1).standard_normal(
        (2000, 64)) * 0.5
    scores = component_scores(planted.aligned, planted.feature_vectors)
    agreement = ordering_agreement(scores, proxy_scores(planted.aligned, clip,
                                                        planted.feature_vectors))
    print(f"ordering agreement with the CLIP proxy: {agreement['component_ordering']:.3f} "
          f"(components), {agreement['feature_ordering']:.3f} (features)")
    assert agreement["component_ordering"] >= 0.8
    assert agreement["feature_ordering"] >= 0.6
    with pytest.raises(InvalidInputError, match="clip_target of shape"):
        proxy_scores(aligned, target[:, :7], features)


def test_ordering_agreement_of_tables():
    table = _table()
    same = ordering_agreement(table, table)
    assert same["component_ordering"] == pytest.approx(1.0)
    assert same["feature_ordering"] == pytest.approx(1.0)
    flipped = ComponentScores(-table.scores, table.components, table.features)
    assert ordering_agreement(table, flipped)["component_ordering"] == pytest.approx(-1.0)
    # the proxy's rows and columns may come in another order
    order = [3, 1, 0, 2]
    shuffled = ComponentScores(table.scores[order][:, [2, 0, 1]],
                               [table.components[i] for i in order],
                               ["texture", "color", "shape"])
    assert ordering_agreement(table, shuffled)["component_ordering"] == pytest.approx(1.0)
    # a constant column has no ordering: left out of the average, reported as NaN
    flat = table.scores.copy()
    flat[:, 1] = 0.3
    result = ordering_agreement(table, ComponentScores(flat, table.components, table.features))
    assert np.isnan(result["per_feature"]["shape"])
    assert result["component_ordering"] == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="different components or features"):
        ordering_agreement(table, ComponentScores(table.scores[:, :2], table.components,
                                                  ["color", "shape"]))


# --------------------------------------------------------------------------- CLIP text


def test_feature_vectors_embed_with_a_local_clip(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "clip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_tiny_clip(folder, "a photo of striped spotted red blue".split(), width=16,
                       projection_dim=12)
    model = transformers.CLIPModel.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    features = {"pattern": ["a photo of striped", "a photo of spotted"],
                "color": ["red", "blue", "a photo of striped"]}
    vectors = feature_vectors(features, folder, batch_size=2)
    assert list(vectors) == ["pattern", "color"]
    assert vectors["pattern"].shape == (2, 12) and vectors["color"].shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(vectors["color"], axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(vectors["color"][2], vectors["pattern"][0], atol=1e-6)
    assert not np.allclose(vectors["pattern"][0], vectors["pattern"][1])
    with torch.inference_mode():
        out = model.eval().get_text_features(**tokenizer(["red"], return_tensors="pt"))
    expected = getattr(out, "pooler_output", out)[0].numpy()
    np.testing.assert_allclose(vectors["color"][0], expected / np.linalg.norm(expected),
                               atol=1e-5)


def test_feature_vectors_refuse_bad_features_and_non_clip_models(tmp_path):
    pytest.importorskip("transformers")
    for bad in ({}, {"pattern": "striped"}, {"pattern": []}, {"pattern": ["ok", ""]}):
        with pytest.raises(InvalidInputError, match=r"features|feature 'pattern'"):
            feature_vectors(bad, tmp_path / "absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bert = save_tiny_bert(tmp_path / "bert", 1, 16)
    with pytest.raises(InvalidInputError, match="bert model"):
        feature_vectors({"pattern": ["striped"]}, bert)
    with pytest.raises(InvalidInputError, match="No model folder"):
        feature_vectors({"pattern": ["striped"]}, tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="Cannot load the model"):
        feature_vectors({"pattern": ["striped"]}, empty)


def test_tables_refuse_bad_contents(tmp_path):
    with pytest.raises(InvalidInputError, match="NaN"):
        ComponentScores([[np.nan]], ["a"], ["f"])
    with pytest.raises(InvalidInputError, match="shape"):
        ComponentScores([[1.0, 2.0]], ["a"], ["f"])
    with pytest.raises(InvalidInputError, match="component names repeat"):
        ComponentScores([[1.0], [2.0]], ["a", "a"], ["f"])
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"daskdict": {"format": 1, "kind": "component scores"},
                                "components": ["a"]}))
    with pytest.raises(InvalidInputError, match="lack features, scores"):
        daskdict.load(path)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"daskdict": {"format": 99, "kind": "component scores"}}))
    with pytest.raises(InvalidInputError, match="newer"):
        ComponentScores.load(newer)
