"""``daskdict fit --validation --patience``: held-out error per iteration, early stop."""

import json

import numpy as np

import daskdict
from daskdict import cli


def test_fit_records_the_held_out_error_and_stops_early(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1200, 16)).astype(np.float32)
    daskdict.create_store(tmp_path / "train.zarr", {"final": rows[:1000]}, chunk_rows=250)
    daskdict.create_store(tmp_path / "held.zarr", {"final": rows[1000:]}, chunk_rows=100)
    out = tmp_path / "d.zarr"
    # noise: nothing learned on the training rows carries over, so the held-out error stalls
    assert cli.main(["fit", str(tmp_path / "train.zarr"), "--atoms", "32", "--nonzero", "3",
                     "--iters", "40", "--validation", str(tmp_path / "held.zarr"),
                     "--patience", "2", "--seed", "0", "--out", str(out), "--in-process",
                     "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stopped_early"] is True and result["validation_error"] > 0
    model = daskdict.load(out)
    assert len(model.history) < 40
    assert model.params["best_iteration"] == result["best_iteration"]
    assert cli.main(["fit", str(tmp_path / "train.zarr"), "--atoms", "32", "--iters", "2",
                     "--validation", str(tmp_path / "held.zarr"), "--out",
                     str(tmp_path / "held.zarr"), "--force", "--in-process", "--quiet"]) == 2
    assert "input" in capsys.readouterr().err
