"""Applications of the component scores on planted features, where the answer is known.

Text retrieval must find rows carrying an instantiation; example retrieval rows sharing the
reference's value of one feature only; ablating the components that carry a planted spurious
background must raise a classifier's worst-group accuracy (a Waterbirds-like set).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from daskdict.datasets.features import planted_feature_components, spurious_values
from daskdict.decomposition.applications import (
    ablate,
    plot_heatmap,
    retrieve_by_example,
    retrieve_by_text,
    token_heatmap,
)
from daskdict.decomposition.scores import ComponentScores, component_scores
from daskdict.errors import InvalidInputError


@pytest.fixture(scope="module")
def planted():
    return planted_feature_components(n_rows=2000, n_components=12, n_features=4,
                                      random_state=0)


@pytest.fixture(scope="module")
def scores(planted):
    return component_scores(planted.aligned, planted.feature_vectors)


def _lazy(arrays: dict) -> dict:
    return {k: da.from_array(v, chunks=(300, -1)) for k, v in arrays.items()}


def test_text_retrieval_through_the_features_components(planted, scores):
    feature, column, n_values = "feature_1", 1, 3
    right, wrong = [], []
    for value, text in enumerate(planted.feature_vectors[feature]):
        rows = retrieve_by_text(planted.aligned, scores, feature, text, 3, 50)
        assert rows.shape == (50,) and len(set(rows.tolist())) == 50
        right.append(np.mean(planted.values[rows, column] == value))
        # another feature's components do not know this feature's instantiations
        rows = retrieve_by_text(planted.aligned, scores, "feature_2", text, 3, 50)
        wrong.append(np.mean(planted.values[rows, column] == value))
    print(f"text retrieval precision@50: {np.mean(right):.3f} through {feature}'s top-3 "
          f"components, {np.mean(wrong):.3f} through feature_2's (chance {1 / n_values:.3f})")
    assert min(right) >= 0.95
    assert np.mean(right) >= np.mean(wrong) + 0.3
    lazy = retrieve_by_text(_lazy(planted.aligned), scores, feature,
                            planted.feature_vectors[feature][0], 3, 50)
    np.testing.assert_array_equal(lazy, retrieve_by_text(
        planted.aligned, scores, feature, planted.feature_vectors[feature][0], 3, 50))


def test_text_retrieval_ranks_by_cosine(rng):
    aligned = {"a": rng.standard_normal((40, 4)), "b": rng.standard_normal((40, 4))}
    table = ComponentScores([[0.9], [0.1]], ["a", "b"], ["f"])
    text = np.array([1.0, 0.0, 0.0, 0.0])
    rows = retrieve_by_text(aligned, table, "f", text, 1, 5)
    cosine = aligned["a"][:, 0] / np.linalg.norm(aligned["a"], axis=1)
    np.testing.assert_array_equal(rows, np.argsort(-cosine)[:5])


def test_example_retrieval_shares_one_feature_only(planted, scores):
    feature, column = "feature_1", 1
    same, others, whole = [], [], []
    for reference in range(20):
        rows = retrieve_by_example(planted.contributions, scores, feature, reference, 2, 20)
        assert reference not in rows and len(set(rows.tolist())) == 20
        same.append(np.mean(planted.values[rows, column] == planted.values[reference, column]))
        others.append(np.mean(np.delete(planted.values[rows] == planted.values[reference], column,
                                        axis=1)))
        # every component: the nearest rows share every feature
        everything = ComponentScores(np.ones((12, 1)), planted.components, ["all"])
        rows = retrieve_by_example(planted.contributions, everything, "all", reference, 12, 20)
        whole.append(np.mean(np.delete(planted.values[rows] == planted.values[reference],
                                       column, axis=1)))
    print(f"example retrieval (top-2 gap components of {feature}, 20 items): the feature "
          f"shared {np.mean(same):.3f}, other features {np.mean(others):.3f} (chance 0.333); "
          f"all components: other features {np.mean(whole):.3f}")
    assert np.mean(same) >= 0.8
    assert np.mean(others) <= 0.5
    assert np.mean(whole) >= np.mean(others) + 0.1
    lazy = retrieve_by_example(_lazy(planted.contributions), scores, feature, 3, 2, 20)
    np.testing.assert_array_equal(lazy, retrieve_by_example(planted.contributions, scores,
                                                            feature, 3, 2, 20))


def test_ablate_replaces_components_by_their_means(rng):
    contributions = {k: rng.standard_normal((30, 5)) for k in "abc"}
    out = ablate(contributions, ["b"])
    expected = contributions["a"] + contributions["c"] + contributions["b"].mean(axis=0)
    np.testing.assert_allclose(out, expected)
    assert isinstance(out, np.ndarray)
    lazy = ablate(_lazy(contributions), ["b"])
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected)
    mask = np.arange(30) < 10
    expected = contributions["a"] + contributions["c"] + contributions["b"][:10].mean(axis=0)
    np.testing.assert_allclose(ablate(contributions, ["b"], mean_over=mask), expected)
    np.testing.assert_allclose(ablate(contributions, ["b"], mean_over=np.arange(10)), expected)
    np.testing.assert_allclose(ablate(_lazy(contributions), ["b"], mean_over=mask).compute(),
                               expected)
    np.testing.assert_allclose(
        ablate(contributions, ["b"], mean_over={"b": contributions["b"][:10].mean(axis=0)}),
        expected)
    np.testing.assert_allclose(ablate(contributions, []), sum(contributions.values()))
    everything = ablate(contributions, ["a", "b", "c"])
    np.testing.assert_allclose(everything, np.broadcast_to(
        sum(c.mean(axis=0) for c in contributions.values()), (30, 5)))


def _worst_group(weights, representation, values):
    predicted = (np.c_[representation, np.ones(len(representation))] @ weights > 0)
    accuracies = [np.mean(predicted[(values[:, 0] == label) & (values[:, 1] == background)]
                          == label) for label in (0, 1) for background in (0, 1)]
    return min(accuracies), float(np.mean(accuracies))


def test_ablating_the_background_components_raises_worst_group_accuracy():
    # 10 components: two carry the label (feature_0), three the background (feature_1), the
    # rest an unrelated feature; the background is the stronger, easier cue
    importances = np.array([[0.9, 0, 0.1], [0.9, 0.1, 0], [0, 1, 0], [0, 1, 0.1], [0.1, 1, 0],
                            [0, 0, 1], [0, 0.1, 1], [0.1, 0, 1], [0, 0, 0.5], [0, 0.2, 0.5]])

    def sample(agreement, seed):
        values = spurious_values(2000, 3, 2, agreement=agreement, random_state=seed)
        return planted_feature_components(2000, 10, 3, 2, 32, 48, importances=importances,
                                          values=values, random_state=0,
                                          rows_random_state=seed)

    train, test = sample(0.95, 1), sample(0.0, 2)
    assert np.mean(train.values[:, 0] == train.values[:, 1]) > 0.95
    # a linear classifier (least squares on +-1) trained on the whole representation
    features = sum(train.contributions.values())
    design = np.c_[features, np.ones(len(features))]
    target = np.where(train.values[:, 0] == 1, 1.0, -1.0)
    weights = np.linalg.solve(design.T @ design + 1e-3 * np.eye(design.shape[1]),
                              design.T @ target)
    table = component_scores(test.aligned, test.feature_vectors)
    drop = table.gap_components("feature_1", 3)
    assert sorted(drop) == ["component_02", "component_03", "component_04"]
    before = _worst_group(weights, sum(test.contributions.values()), test.values)
    after = _worst_group(weights, ablate(_lazy(test.contributions), drop).compute(),
                         test.values)
    print(f"worst-group accuracy {before[0]:.3f} -> {after[0]:.3f}, average group accuracy "
          f"{before[1]:.3f} -> {after[1]:.3f}")
    assert before[0] <= 0.5
    assert after[0] >= 0.75 and after[0] - before[0] >= 0.3
    assert after[1] > before[1]


def test_token_heatmap_finds_the_planted_tokens(rng, planted):
    maps = {name: planted.maps[name] for name in ("component_00", "component_01")}
    text = planted.feature_vectors["feature_0"][1]
    tokens = {name: rng.standard_normal((16, 96)) * 0.05 for name in maps}
    # tokens 3 and 9 of component_00 carry the text's direction, mapped to the model's space
    tokens["component_00"][[3, 9]] += text @ maps["component_00"]
    heat = token_heatmap(tokens, ["component_00", "component_01"], text, maps)
    assert set(np.argsort(-heat)[:2]) == {3, 9}
    expected = sum(tokens[n] @ maps[n].T @ text for n in maps)
    np.testing.assert_allclose(heat, expected)
    # identity maps: the tokens are already in the text's space
    aligned_tokens = {n: tokens[n] @ maps[n].T for n in maps}
    np.testing.assert_allclose(token_heatmap(aligned_tokens, list(maps), text), expected)
    np.testing.assert_allclose(token_heatmap(tokens, ["component_01"], text, maps),
                               tokens["component_01"] @ maps["component_01"].T @ text)


def test_plot_heatmap_draws_over_an_image(rng):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_heatmap(rng.standard_normal(12), (3, 4), image=rng.random((30, 40, 3)))
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.images) == 2
    assert ax.images[1].get_array().shape == (3, 4)
    plt.close(ax.figure)
    _, own = plt.subplots()
    assert plot_heatmap(np.arange(4.0), (2, 2), ax=own) is own and len(own.images) == 1
    plt.close(own.figure)
    with pytest.raises(InvalidInputError, match="12 token scores"):
        plot_heatmap(rng.standard_normal(13), (3, 4))
    with pytest.raises(InvalidInputError, match="grid_shape"):
        plot_heatmap(rng.standard_normal(12), 12)


@pytest.mark.parametrize("call, message", [
    (lambda d, s: retrieve_by_text(d.aligned, s, "size", d.feature_vectors["feature_0"][0],
                                   2, 5), "Unknown feature 'size'"),
    (lambda d, s: retrieve_by_text(d.aligned, s, "feature_0", d.feature_vectors["feature_0"][0],
                                   13, 5), "exceeds the number of components"),
    (lambda d, s: retrieve_by_text(d.aligned, s, "feature_0", np.ones(5), 2, 5),
     r"text_vector of shape \(64,\)"),
    (lambda d, s: retrieve_by_text(d.aligned, s, "feature_0", np.zeros(64), 2, 5),
     "non-zero"),
    (lambda d, s: retrieve_by_text(d.aligned, s, "feature_0", np.ones(64), 2, 2001),
     "n_items=2001 exceeds"),
    (lambda d, s: retrieve_by_text({"x": d.aligned["component_00"]}, s, "feature_0",
                                   np.ones(64), 2, 5), "lacks the component"),
    (lambda d, s: retrieve_by_text(d.aligned, "scores", "feature_0", np.ones(64), 2, 5),
     "ComponentScores"),
    (lambda d, s: retrieve_by_example(d.contributions, s, "feature_0", 2000, 2, 5),
     "reference_row=2000 is out of range"),
    (lambda d, s: retrieve_by_example(d.contributions, s, "feature_0", 0, 2, 2000),
     "n_items=2000 exceeds the 1999 rows"),
    (lambda d, s: ablate(d.contributions, ["component_99"]), "lacks the component"),
    (lambda d, s: ablate(d.contributions, "component_00"), "sequence of component names"),
    (lambda d, s: ablate(d.contributions, ["component_00"], mean_over=np.ones(3, bool)),
     "boolean mean_over"),
    (lambda d, s: ablate(d.contributions, ["component_00"], mean_over=[5000]),
     "outside"),
    (lambda d, s: ablate({**d.contributions, "x": np.full((2000, 96), np.nan)}, []),
     r"contributions\['x'\] holds NaN"),
    (lambda d, s: token_heatmap({"component_00": np.ones((4, 96))}, ["component_00"],
                                np.ones(64)), r"direction of shape \(96,\)"),
    (lambda d, s: token_heatmap({"component_00": np.ones((4, 96))}, ["component_00"],
                                np.ones(64), {"component_00": np.ones((96, 64))}),
     r"maps\['component_00'\]"),
    (lambda d, s: token_heatmap({"component_00": np.ones((4, 96))}, [], np.ones(64)),
     "non-empty sequence"),
])
def test_bad_inputs_are_named(planted, scores, call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(planted, scores)


def test_nan_in_dask_contributions_is_refused(planted, scores):
    values = planted.contributions["component_05"].copy()
    values[7, 0] = np.nan
    lazy = {**_lazy(planted.contributions), "component_05": da.from_array(values, chunks=300)}
    with pytest.raises(InvalidInputError, match="NaN"):
        ablate(lazy, ["component_00"]).compute()
    with pytest.raises(InvalidInputError, match="NaN"):
        retrieve_by_example(lazy, ComponentScores(np.ones((12, 1)), planted.components, ["f"]),
                            "f", 0, 12, 5)
