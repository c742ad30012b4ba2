
"""``daskdict.plan``: a calibrated scaling model (its accuracy is measured by bench_plan.py)."""

import json
import math

import numpy as np
import pytest

import daskdict
from daskdict import cli
from daskdict.datasets.planted import write_planted_store
from daskdict.errors import InvalidInputError


@pytest.fixture(scope="module")
def small_plan():
    return daskdict.plan(n_features=32, n_samples=100_000, n_atoms=96, n_nonzero=4,
                         n_workers=2, calibration_rows=2000, client="threads")


def test_plan_is_calibrated_and_scales(small_plan):
    cal = small_plan.calibration
    assert cal["rows"] == 2000 and cal["threads"] >= 1
    assert cal["t_row"] > 0 and cal["t_gram"] >= 0 and cal["t_driver"] >= 0 and cal["t_merge"] >= 0
    t = small_plan.seconds_per_iteration
    assert t == pytest.approx(small_plan.predict())
    # the per-row part is what grows with N and shrinks with workers
    per_row = cal["t_row"] * 100_000 / 2
    assert t >= per_row
    assert small_plan.predict(n_samples=1_000_000) == pytest.approx(
        t + cal["t_row"] * 900_000 / 2, rel=1e-9)
    assert small_plan.predict(n_workers=1) > t
    assert small_plan.predict(n_samples=1_000_000, n_workers=8) < small_plan.predict(
        n_samples=1_000_000, n_workers=2)


def test_memory_does_not_depend_on_n_and_covers_the_arrays(small_plan):
    arrays = small_plan.arrays_per_worker_bytes
    assert arrays["gram"] == 96 * 96 * 4 and arrays["dictionary"] == 2 * 96 * 32 * 4
    assert small_plan.memory_per_worker_bytes > sum(arrays.values())
    bigger = daskdict.plan(n_features=32, n_samples=10_000_000, n_atoms=96, n_nonzero=4,
                           n_workers=2, calibration_rows=2000, client="threads")
    assert bigger.arrays_per_worker_bytes == arrays


def test_plan_from_a_store_and_round_trip(tmp_path):
    path = tmp_path / "planted.zarr"
    write_planted_store(path, 3000, 24, 48, 3, random_state=0, chunk_rows=700)
    result = daskdict.plan(path, n_samples=50_000, n_atoms=48, n_nonzero=3, n_workers=1,
                           calibration_rows=1500, client="threads")
    assert result.n_features == 24 and result.chunk_rows == 700
    assert result.calibration["rows"] == 2100  # rounded up to whole chunks of 700 rows
    saved = json.loads(result.save(tmp_path / "plan.json").read_text())
    assert saved["seconds_per_iteration"] == pytest.approx(result.seconds_per_iteration)
    assert saved["calibration"]["t_row"] == pytest.approx(result.calibration["t_row"])


def test_cli_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--features", "16", "--samples", "20000", "--atoms", "48",
                     "--nonzero", "3", "--workers", "2", "--calibration-rows", "1000",
                     "--out", str(out), "--in-process", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert printed["n_workers"] == 2 and np.isfinite(printed["seconds_per_iteration"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_samples=0), "n_samples"),
    (dict(n_workers=0), "n_workers"),
    (dict(n_nonzero=40), "n_nonzero"),
])
def test_plan_bad_input(kwargs, message):
    params = dict(n_features=16, n_samples=1000, n_atoms=48, n_nonzero=3, n_workers=1,
                  calibration_rows=500, client="threads")
    params.update(kwargs)
    with pytest.raises(InvalidInputError, match=message):
        daskdict.plan(**params)


def test_plan_needs_data_or_width():
    with pytest.raises(InvalidInputError, match="n_features"):
        daskdict.plan(n_samples=1000, n_workers=1, client="threads")


def test_model_merges_the_shares_by_a_tree():
    """Up to 8 workers, one merge receives every other share (W t_gather, W merges); beyond,
    each level of the tree costs one merge of up to 8, so 64 workers pay two levels, not 64."""
    from daskdict.learn.planning import _model

    cal = {"t_gram": 0.1, "t_row": 1e-5, "t_gather": 0.05, "t_driver": 0.2,
           "t_merge": 0.01}
    n_samples, threads = 10_000_000, 4
    for n_workers in (1, 2, 8):
        flat = (0.1 + math.ceil(n_samples / (n_workers * threads)) * 1e-5 + n_workers * 0.05
                + 0.2 + 0.01 * n_workers)
        assert _model(cal, n_samples, n_workers, threads) == pytest.approx(flat)
    coding = math.ceil(n_samples / (64 * threads)) * 1e-5
    two_levels = 2 * (7 * 0.05 + 8 * 0.01)
    assert _model(cal, n_samples, 64, threads) == pytest.approx(
        0.1 + coding + two_levels + 0.05 + 0.2)
