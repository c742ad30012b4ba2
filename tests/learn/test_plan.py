
"""``daskdict.plan``: a calibrated scaling model (its accuracy is measured by bench_plan.py)."""

import json
import math
import time

import numpy as np
import pytest
from conftest import unit_rows

import daskdict
from daskdict import cli
from daskdict.datasets.planted import make_planted, write_planted_store
from daskdict.errors import InvalidInputError, OutputNotWritableError
from daskdict.io import formats
from daskdict.learn import coding, params, planning, shares
from daskdict.learn.planning import model_seconds

SMALL = dict(n_features=32, n_samples=100_000, n_atoms=96, n_nonzero=4, n_workers=2,
             calibration_rows=2000, client="threads")


@pytest.fixture(scope="module")
def small_plan():
    return daskdict.plan(**SMALL)  # update "auto": "mod" at 96 atoms


def test_plan_is_calibrated_and_scales(small_plan):
    cal = small_plan.calibration
    assert cal["rows"] == 2000 and cal["threads"] >= 1
    assert cal["t_row"] > 0 and cal["t_gram"] >= 0 and cal["t_driver"] >= 0 and cal["t_merge"] >= 0
    t = small_plan.seconds_per_iteration
    # the model, written out for 2 workers of one thread: one merge of both shares (one
    # received from the other worker), the root sent to the driver
    expected = (cal["t_gram"] + math.ceil(100_000 / 2) * cal["t_row"] + cal["t_gather"]
                + 2 * cal["t_merge"] + cal["t_gather"] + cal["t_driver"])
    assert t == pytest.approx(expected, rel=1e-9)
    # t_row is what coding and summarising a row costs: timed here directly, on the same
    # kind of rows, it agrees within the noise of a shared machine
    planted = make_planted(2000, 32, 96, 4, 20.0, random_state=0, dtype=np.float32)
    atoms = unit_rows(np.random.default_rng(0).standard_normal((96, 32))).astype(np.float32)
    gram = coding.gram_matrix(atoms)
    rows = np.ascontiguousarray(planted.data)

    def summarise():  # with the codes folded into the code Gram matrix, as for "mod"
        shares.accumulate(None, coding.block_statistics(rows, atoms, gram, 4, 0.0, "omp", 96,
                                                        keep_codes=True), 96)

    assert small_plan.update == "mod"
    summarise()  # compiled, warm caches
    timings = []
    for _ in range(3):
        begin = time.perf_counter()
        summarise()
        timings.append((time.perf_counter() - begin) / 2000)
    assert min(timings) / 10 < cal["t_row"] < 10 * max(timings)
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
    bigger = daskdict.plan(**{**SMALL, "n_samples": 10_000_000})
    assert bigger.arrays_per_worker_bytes == arrays


@pytest.mark.parametrize("update", ["mod", "approx"])
def test_plan_calibrates_the_update_the_fit_uses(update, small_plan, monkeypatch):
    """"mod": the calibration folds its codes into a code Gram matrix, the driver's time is
    that of mod_update on the merged one, and a worker holds it; "approx" none of these."""
    folded, solved = [], []
    share_statistics, updates = planning.share_statistics, {}

    def recording_shares(*args, code_gram=False, **kwargs):
        stats = share_statistics(*args, code_gram=code_gram, **kwargs)
        folded.append((code_gram, stats))
        return stats

    def recorder(name, function):
        def recording(atoms, stats, *args):
            solved.append((name, stats))
            return function(atoms, stats, *args)
        return recording

    for name in ("mod_update", "approx_update"):
        updates[name] = getattr(planning, name)
        monkeypatch.setattr(planning, name, recorder(name, updates[name]))
    monkeypatch.setattr(planning, "share_statistics", recording_shares)
    result = daskdict.plan(**SMALL, update=update)
    assert result.update == update and f"{update} update" in result.summary()
    assert folded and all(flag == (update == "mod") for flag, _ in folded)
    assert {name for name, _ in solved} == {f"{update}_update"}
    if update == "mod":
        for _, stats in folded + solved:
            # X^T X's diagonal is every atom's sum of squared coefficients
            assert stats["code_gram"].shape == (96, 96)
            np.testing.assert_allclose(np.diag(stats["code_gram"]), stats["coef_sq"],
                                       rtol=1e-9)
        assert result.arrays_per_worker_bytes["code_gram"] == 96 * 96 * 8 * 2
    else:
        assert all("code_gram" not in stats for _, stats in folded + solved)
        assert "code_gram" not in result.arrays_per_worker_bytes
    others = {key: value for key, value in result.arrays_per_worker_bytes.items()
              if key != "code_gram"}
    assert others == {key: value for key, value in small_plan.arrays_per_worker_bytes.items()
                      if key != "code_gram"}
    # the same model of an iteration, from this update's calibration
    cal = result.calibration
    assert set(cal) == set(small_plan.calibration)
    assert result.seconds_per_iteration == pytest.approx(
        model_seconds(cal, 100_000, 2, 1), rel=1e-9)
    assert result.predict(n_workers=8) == pytest.approx(model_seconds(cal, 100_000, 8, 1))


def test_auto_update_is_resolved_as_the_fit_resolves_it(small_plan, monkeypatch):
    assert small_plan.update == "mod"  # 96 atoms, within params.MOD_MAX_ATOMS
    monkeypatch.setattr(params, "MOD_MAX_ATOMS", 64)
    beyond = daskdict.plan(**{**SMALL, "calibration_rows": 500}, update="auto")
    assert beyond.update == "approx" and "code_gram" not in beyond.arrays_per_worker_bytes


def test_plan_from_a_store_and_round_trip(tmp_path):
    path = tmp_path / "planted.zarr"
    write_planted_store(path, 3000, 24, 48, 3, random_state=0, chunk_rows=700)
    result = daskdict.plan(path, n_samples=50_000, n_atoms=48, n_nonzero=3, n_workers=1,
                           calibration_rows=1500, client="threads")
    assert result.n_features == 24 and result.chunk_rows == 700
    assert result.calibration["rows"] == 2100  # rounded up to whole chunks of 700 rows
    path = result.save(tmp_path / "plan.json")
    saved = json.loads(path.read_text())
    assert saved["daskdict"]["kind"] == "plan" and formats.kind_of(path) == "plan"
    assert saved["seconds_per_iteration"] == pytest.approx(result.seconds_per_iteration)
    assert saved["calibration"]["t_row"] == pytest.approx(result.calibration["t_row"])
    loaded = daskdict.Plan.load(path)
    assert loaded == result and daskdict.load(path) == result
    assert daskdict.io.formats.describe(path)["summary"] == result.summary()
    with pytest.raises(OutputNotWritableError, match="overwrite"):
        result.save(path)
    assert result.save(path, overwrite=True) == path
    # a plan is never written over another kind of object, nor loaded from one
    with pytest.raises(OutputNotWritableError, match="store"):
        result.save(tmp_path / "planted.zarr", overwrite=True)
    with pytest.raises(InvalidInputError, match="plan"):
        daskdict.Plan.load(tmp_path / "planted.zarr")


def test_a_plan_saved_before_plans_recorded_their_update_loads(small_plan, tmp_path):
    path = small_plan.save(tmp_path / "plan.json")
    payload = json.loads(path.read_text())
    assert payload["update"] == "mod"
    del payload["update"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(payload))
    loaded = daskdict.Plan.load(old)
    # such a plan modelled the one update there was then
    assert loaded.update == "approx" and "approx update" in loaded.summary()
    assert loaded.calibration == small_plan.calibration
    assert loaded.seconds_per_iteration == small_plan.seconds_per_iteration
    for bad, message in ((dict(payload, update="ksvd"), "ksvd"),
                         ({k: v for k, v in payload.items() if k != "calibration"}, "lacks")):
        old.write_text(json.dumps(bad))
        with pytest.raises(InvalidInputError, match=message):
            daskdict.Plan.load(old)


def test_cli_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--features", "16", "--samples", "20000", "--atoms", "48",
                     "--nonzero", "3", "--workers", "2", "--calibration-rows", "1000",
                     "--update", "approx", "--out", str(out), "--in-process", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads(out.read_text())
    assert saved.pop("daskdict")["kind"] == "plan" and printed == saved
    assert printed["n_workers"] == 2 and np.isfinite(printed["seconds_per_iteration"])
    assert printed["update"] == "approx" and "code_gram" not in printed["arrays_per_worker_bytes"]
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        cli.main(["plan", "--features", "16", "--samples", "20000", "--workers", "1",
                  "--update", "ksvd", "--in-process", "--quiet"])
    assert "ksvd" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_samples=0), "n_samples"),
    (dict(n_workers=0), "n_workers"),
    (dict(n_nonzero=40), "n_nonzero"),
    (dict(update="ksvd"), "one-pass"),
    (dict(update="exact"), "update"),
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
    _model = model_seconds
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
