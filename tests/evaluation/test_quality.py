import numpy as np
import pytest

from daskdict.errors import InvalidInputError
from daskdict.evaluation.quality import (
    TagSets,
    agreement,
    concept_quality,
    geometry_alignment,
    hierarchy_similarity,
    purity,
    random_groups,
    stability,
    tag_similarity,
)

TAGS = [
    ["game::strategy", "role::program", "use::gameplaying"],
    ["game::strategy", "role::program"],
    ["game::arcade", "role::program", "use::gameplaying"],
    ["devel::lang:python", "role::devel-lib"],
    [],
    ["devel::ide", "role::program"],
    ["devel::editor", "role::program"],
    ["use::editing"],
]


def test_purity_is_the_majority_share():
    labels = ["games", "games", "games", "python", "python"]
    np.testing.assert_allclose(purity(labels, [[0, 1, 3], [3, 4], [0, 3, -1, -1]]),
                               [2 / 3, 1.0, 0.5])


def test_common_facets_are_left_out():
    sets = TagSets.from_lists(TAGS)
    assert sets.dropped_facets == ("role",)  # 6 of 8 items carry role::
    assert "role::program" not in sets.tag_names


def test_agreement_is_mean_pairwise_jaccard():
    sets = TagSets.from_lists(TAGS)
    # without role::, items 0 and 1 share game::strategy of {strategy, gameplaying}: 1/2;
    # 0 and 2 share use::gameplaying of 3 tags: 1/3; 1 and 2 share nothing
    np.testing.assert_allclose(agreement(sets, [[0, 1, 2]]), [(1 / 2 + 1 / 3 + 0) / 3])
    # an item without tags is left out of the pairs, not counted as agreeing
    np.testing.assert_allclose(agreement(sets, [[0, 4]]), [np.nan])


def test_hierarchy_counts_a_shared_facet_as_half():
    sets = TagSets.from_lists([["game::strategy"], ["game::arcade"], ["game::strategy"],
                               ["devel::ide"]], common_share=1.0)
    sim = tag_similarity(sets, np.arange(4))
    assert sim[0, 2] == 1.0 and sim[0, 1] == 0.5 and sim[0, 3] == 0.0
    np.testing.assert_allclose(hierarchy_similarity(sets, [[0, 1, 2]]), [(0.5 + 1 + 0.5) / 3])


def test_stability_matches_atoms_one_to_one():
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((64, 32))
    other = -atoms[rng.permutation(64)] * 3.0
    assert stability(atoms, other) == 1.0
    assert stability(atoms, rng.standard_normal((64, 32))) < 0.05
    half = other.copy()
    half[:32] = rng.standard_normal((32, 32))
    assert stability(atoms, half) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(InvalidInputError, match="same width"):
        stability(atoms, atoms[:, :5])


def test_geometry_alignment_tells_tag_geometry_from_noise():
    rng = np.random.default_rng(1)
    facets, values = 6, 5
    tags = [[f"f{f}::v{rng.integers(values)}" for f in rng.choice(facets, 2, replace=False)]
            for _ in range(600)]
    sets = TagSets.from_lists(tags, common_share=1.0)
    # one direction per tag and one per facet: a shared facet alone gives a partial cosine
    follows = np.hstack([sets.tags.toarray(), 0.7 * sets.facets.toarray()])
    assert geometry_alignment(follows, sets, n_pairs=4000, random_state=0) > 0.5
    noise = rng.standard_normal((600, 16))
    assert abs(geometry_alignment(noise, sets, n_pairs=4000, random_state=0)) < 0.1


def test_permuted_labels_score_like_random_sets():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(20), 50)
    groups = [np.flatnonzero(labels == k)[:10] for k in range(20)]
    assert np.mean(purity(labels, groups)) == 1.0
    shuffled = rng.permutation(labels)
    floor = np.mean(purity(labels, random_groups(len(labels), 200, 10, random_state=0)))
    assert abs(np.mean(purity(shuffled, groups)) - floor) < 0.05
    quality = concept_quality(groups, labels=labels)
    assert quality == {"n_concepts": 20, "purity": 1.0}


def test_groups_naming_missing_items_are_refused():
    with pytest.raises(InvalidInputError, match="names item 9"):
        purity(["a", "b"], [[0, 9]])
