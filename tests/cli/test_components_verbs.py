"""``daskdict align`` and ``daskdict scores``: a store of components to maps into a CLIP space,
then to the components that carry each feature of a features file."""

import json

import numpy as np
import pytest
from helpers_clip import save_tiny_clip

import daskdict
from daskdict import cli
from daskdict.datasets import make_aligned_components


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("components")
    parts, target, _ = make_aligned_components(n_rows=6000, n_components=4, width=8,
                                               target_width=16, random_state=0)
    daskdict.create_store(folder / "parts.zarr", {"final": sum(parts.values()), **parts},
                          chunk_rows=1500, attrs={"decomposition": {"components": list(parts)}})
    daskdict.create_store(folder / "clip.zarr", {"final": target}, chunk_rows=1500)
    return folder


def _run(capsys, argv) -> tuple[int, dict | str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_align_then_score_from_the_shell(stores, tmp_path, capsys):
    pytest.importorskip("transformers")
    code, aligned = _run(capsys, ["align", str(stores / "parts.zarr"), "--target",
                                  str(stores / "clip.zarr"), "--out", str(tmp_path / "a.zarr"),
                                  "--seed", "0", "--epochs", "30", "--quiet"])
    assert code == 0 and aligned["n_components"] == 4 and aligned["alignment"] > 0.9
    assert isinstance(daskdict.load(tmp_path / "a.zarr"), daskdict.CompAlign)
    clip = save_tiny_clip(tmp_path / "clip", ["striped", "spotted", "red", "blue"],
                          projection_dim=16)
    features = tmp_path / "features.json"
    features.write_text(json.dumps({"pattern": ["striped", "spotted"], "color": ["red", "blue"]}))
    code, scored = _run(capsys, ["scores", str(stores / "parts.zarr"), "--alignment",
                                 str(tmp_path / "a.zarr"), "--features", str(features),
                                 "--clip", str(clip), "--out", str(tmp_path / "s.json"),
                                 "--report", str(tmp_path / "s.html")])
    assert code == 0 and scored["n_rows"] == 6000
    page = (tmp_path / "s.html").read_text()
    assert "<b>striped</b>" in page and "data:image/png;base64," in page
    table = daskdict.load(tmp_path / "s.json")
    assert table.features == ("pattern", "color") and len(table.components) == 4
    for feature in table.features:
        assert scored["top_components"][feature] == table.top_components(feature, 4)
        assert np.all(np.abs(table.scores) <= 1.0 + 1e-9)


def test_the_verbs_name_wrong_inputs(stores, tmp_path, capsys):
    code, err = _run(capsys, ["align", str(stores / "clip.zarr"), "--target",
                              str(stores / "clip.zarr"), "--out", str(tmp_path / "a.zarr")])
    assert code == 2 and "decompose" in err
    code, err = _run(capsys, ["scores", str(stores / "parts.zarr"), "--alignment",
                              str(stores / "clip.zarr"), "--features", str(tmp_path / "f.json"),
                              "--clip", "x", "--out", str(tmp_path / "s.json")])
    assert code == 2 and "not an alignment" in err
    code, err = _run(capsys, ["align", str(stores / "parts.zarr"), "--target",
                              str(stores / "clip.zarr"), "--out", str(stores / "parts.zarr"),
                              "--force"])
    assert code == 2 and "input" in err
    assert daskdict.open_store(stores / "parts.zarr").layer_names  # untouched
