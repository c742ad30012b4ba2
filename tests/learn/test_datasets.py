import numpy as np

from daskdict.datasets.planted import planted_captions


def test_planted_captions_name_the_strongest_concept_and_allow_empty_rows():
    names = ["cat", "dog", "boat", "tree"]
    indices = np.array([[2, 0, -1], [1, -1, -1], [-1, -1, -1], [3, 1, 0]])
    values = np.array([[0.5, -2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1, 0.2, 3.0]])
    captions = planted_captions(indices, values, names, mention_prob=0.0, random_state=0)
    assert len(captions) == 4
    # with mention_prob=0 only each row's strongest concept is named
    for caption, strongest in zip(captions, ["cat", "dog", None, "cat"], strict=True):
        named = {name for name in names if f" {name}" in caption}
        assert named == ({strongest} if strongest else set()), caption
    assert captions == planted_captions(indices, values, names, mention_prob=0.0,
                                        random_state=0)
    every = planted_captions(indices, values, names, mention_prob=1.0, random_state=0)
    assert all(f" {name}" in every[3] for name in ["tree", "dog", "cat"])
