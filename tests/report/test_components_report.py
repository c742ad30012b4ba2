"""write_components_report: the scores as a picture, each feature's top components, what its
values retrieve through them (captions or thumbnails), heat maps; offline and under the writer
rule."""

import re

import numpy as np
import pytest

import daskdict
from daskdict.datasets import planted_feature_components
from daskdict.errors import InvalidInputError, OutputNotWritableError
from daskdict.report import write_components_report

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def planted():
    data = planted_feature_components(n_rows=600, random_state=0)
    scores = daskdict.component_scores(data.aligned, data.feature_vectors)
    texts = {feature: [f"{feature} {v}" for v in range(len(vectors))]
             for feature, vectors in data.feature_vectors.items()}
    lookup = {text: data.feature_vectors[feature][v] for feature, values in texts.items()
              for v, text in enumerate(values)}

    def encode(batch):
        return np.stack([lookup[t] for t in batch])

    return data, scores, texts, encode


def test_the_report_shows_scores_top_components_and_retrieved_items(tmp_path, planted):
    data, scores, texts, encode = planted
    captions = [f"item {i} carries value {data.values[i, 0]}" for i in range(600)]
    store = daskdict.create_store(tmp_path / "s.zarr",
                                  {"final": sum(data.contributions.values())},
                                  captions=captions)
    rng = np.random.default_rng(0)
    heatmap = ("pattern", rng.uniform(size=(32, 32, 3)), rng.standard_normal(16), (4, 4))
    path = write_components_report(tmp_path / "c.html", scores, aligned=data.aligned,
                                   feature_texts=texts, text_encoder=encode, store=store,
                                   heatmaps=[heatmap], k_components=2, n_items=4)
    page = path.read_text()
    assert "http://" not in page.replace("http-equiv", "") and "https://" not in page
    assert page.count("data:image/png;base64,") == 2  # the scores and the heat map
    first = scores.features[0]
    for name in scores.top_components(first, 2):
        assert name in page
    # the items retrieved by the first feature's first value carry that value
    listed = re.findall(r"item (\d+) carries value (\d+)", page.split(f"<b>{first} 0</b>")[1]
                        .split("</ul>")[0])
    assert len(listed) == 4 and all(value == "0" for _, value in listed)
    with pytest.raises(OutputNotWritableError):
        write_components_report(tmp_path / "c.html", scores)
    write_components_report(tmp_path / "c.html", scores, overwrite=True)


def test_thumbnails_and_refusals(tmp_path, planted):
    data, scores, texts, encode = planted
    images = [np.full((8, 8, 3), i % 256, dtype=np.uint8) for i in range(600)]
    page = write_components_report(tmp_path / "t.html", scores, aligned=data.aligned,
                                   feature_texts=texts, text_encoder=encode, images=images,
                                   n_items=3, n_values=1).read_text()
    assert page.count('alt="item') == 3 * len(scores.features)
    with pytest.raises(InvalidInputError, match="ComponentScores"):
        write_components_report(tmp_path / "x.html", {"a": 1})
    with pytest.raises(InvalidInputError, match="aligned"):
        write_components_report(tmp_path / "x.html", scores, feature_texts=texts)
    with pytest.raises(InvalidInputError, match="text_encoder"):
        write_components_report(tmp_path / "x.html", scores, aligned=data.aligned,
                                feature_texts=texts)
    (tmp_path / "notes.html").write_text("mine")
    with pytest.raises(OutputNotWritableError, match="not a daskdict report"):
        write_components_report(tmp_path / "notes.html", scores, overwrite=True)
    assert not (tmp_path / "x.html").exists()
