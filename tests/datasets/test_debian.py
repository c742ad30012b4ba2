import gzip
import json

import numpy as np
import pytest

from daskdict.datasets.debian import (
    corpus_from_records,
    load_debian_packages,
    parse_dumpavail,
)
from daskdict.errors import InvalidInputError, StoreNotFoundError


def test_the_shipped_sample_is_tagged_and_distinct():
    corpus = load_debian_packages()
    assert 2000 <= len(corpus) <= 6000
    assert all(corpus.tags)
    assert len(np.unique(corpus.description)) == len(corpus)
    assert len(np.unique(corpus.section)) > 20


def test_split_keeps_each_source_on_one_side():
    corpus = load_debian_packages()
    train, test = corpus.split_by_source(0.2, random_state=0)
    assert not set(corpus.source[train]) & set(corpus.source[test])
    assert len(train) + len(test) == len(corpus)
    assert 0.1 < len(test) / len(corpus) < 0.3
    again, _ = corpus.split_by_source(0.2, random_state=0)
    np.testing.assert_array_equal(train, again)


def test_jsonl_round_trip(tmp_path):
    corpus = load_debian_packages().subset(np.arange(50))
    path = corpus.to_jsonl(tmp_path / "sample.jsonl.gz")
    back = load_debian_packages(path)
    assert back.records() == corpus.records()
    with gzip.open(path, "rt") as handle:
        assert set(json.loads(handle.readline())) == {"package", "source", "section",
                                                      "description", "tags"}


def test_tagged_keeps_the_first_of_each_synopsis():
    corpus = corpus_from_records([
        {"package": "a", "description": "x", "tags": ["t::1"]},
        {"package": "b", "description": "x", "tags": ["t::2"]},
        {"package": "c", "description": "y"},
    ])
    assert corpus.tagged().package.tolist() == ["a"]
    assert corpus.source.tolist() == ["a", "b", "c"]


def test_dumpavail_stanzas():
    text = ("Package: 0ad\nSource: 0ad (0.0.26)\nSection: games\n"
            "Description: Real-time strategy game\nTag: game::strategy, role::program,\n"
            " use::gameplaying\n\nPackage: zlib1g\nSection: libs\n"
            "Description: compression library\n")
    records = parse_dumpavail(text)
    assert records[0] == {"package": "0ad", "source": "0ad", "section": "games",
                          "description": "Real-time strategy game",
                          "tags": ["game::strategy", "role::program", "use::gameplaying"]}
    assert records[1]["tags"] == [] and records[1]["source"] == "zlib1g"


def test_bad_corpus_input(tmp_path):
    with pytest.raises(StoreNotFoundError):
        load_debian_packages(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"package": "a", "description": "x"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        load_debian_packages(bad)
    with pytest.raises(InvalidInputError, match="no 'package'"):
        corpus_from_records([{"description": "x"}])
