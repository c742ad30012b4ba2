"""CompAlign (``daskdict.decomposition.align``) and its planted data
(``daskdict.datasets.components``).

The planted bar: on 20,000 rows of 12 components (d = D = 64, 20 dB), the learned maps point
along the planted orthogonal ones, row by row (mean |cos| >= 0.95); the paper's loss does not
see the scale of the aligned sum, so directions are compared.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.exceptions import NotFittedError

import daskdict
from daskdict.datasets.components import make_aligned_components, planted_orthogonal_maps
from daskdict.decomposition import align as align_module
from daskdict.decomposition.align import CompAlign, alignment_objective, describe_alignment
from daskdict.errors import InvalidInputError, OutputNotWritableError

BAR = 0.95


def recovery(maps: np.ndarray, true: np.ndarray) -> float:
    """Mean over maps and rows of |cos| between matching rows of ``maps`` and ``true``."""
    a = maps / np.linalg.norm(maps, axis=2, keepdims=True)
    b = true / np.linalg.norm(true, axis=2, keepdims=True)
    return float(np.abs(np.sum(a * b, axis=2)).mean())


@pytest.fixture(scope="module")
def planted():
    return make_aligned_components()


@pytest.fixture(scope="module")
def fits(planted):
    """The three variants on the planted data (fit seed other than the data's)."""
    components, target, _ = planted
    variants = {"compalign": {}, "shared": {"shared": True}, "no penalty": {"penalty": 0.0}}
    return {name: CompAlign(random_state=1, verbose=False, **kw).fit(components, target)
            for name, kw in variants.items()}


@pytest.fixture(scope="module")
def small():
    """6,000 rows of 4 components (d = 8) aligned to a target of width 6."""
    return make_aligned_components(6000, 4, 8, 6, snr_db=20.0, random_state=3)


def _fast(**kw) -> CompAlign:
    return CompAlign(**{"n_epochs": 2, "random_state": 0, "verbose": False, **kw})


# --------------------------------------------------------------------------- planted data


def test_planted_data_shapes_orthogonality_and_snr():
    components, target, maps = make_aligned_components(5000, 3, 8, 6, snr_db=20.0,
                                                       random_state=1)
    assert list(components) == ["component.00", "component.01", "component.02"]
    assert all(c.shape == (5000, 8) and c.dtype == np.float32 for c in components.values())
    assert target.shape == (5000, 6) and target.dtype == np.float32
    assert maps.shape == (3, 6, 8)
    np.testing.assert_allclose(maps @ maps.transpose(0, 2, 1), np.broadcast_to(np.eye(6),
                               (3, 6, 6)), atol=1e-12)  # D < d: orthonormal rows
    clean = sum(c.astype(np.float64) @ m.T for c, m in zip(components.values(), maps,
                                                          strict=True))
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((target - clean) ** 2))
    assert abs(snr - 20.0) < 0.3
    scales = [np.linalg.norm(c) for c in components.values()]
    assert max(scales) / min(scales) > 1.2  # components differ in size
    again = make_aligned_components(5000, 3, 8, 6, snr_db=20.0, random_state=1)
    np.testing.assert_array_equal(again[1], target)
    tall = planted_orthogonal_maps(2, 9, 4, 0)
    np.testing.assert_allclose(tall.transpose(0, 2, 1) @ tall,
                               np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-12)
    with pytest.raises(InvalidInputError, match="n_components"):
        make_aligned_components(10, 0)
    with pytest.raises(InvalidInputError, match="snr_db"):
        make_aligned_components(10, 2, snr_db=float("nan"))


# --------------------------------------------------------------------------- the bar


def test_recovers_the_planted_maps(planted, fits):
    _, _, true = planted
    model = fits["compalign"]
    assert model.maps_.shape == (12, 64, 64) and model.maps_.dtype == np.float32
    assert model.component_names_ == [f"component.{i:02d}" for i in range(12)]
    assert recovery(model.maps_, true) >= BAR
    assert len(model.history_) == model.n_epochs
    assert model.history_[-1]["orthogonality"] < 0.05  # the penalty made them orthogonal
    assert model.alignment_ == pytest.approx(1 - model.history_[-1]["alignment_loss"])
    assert model.alignment_ > 0.98


def test_ablations_are_not_better(planted, fits):
    _, _, true = planted
    scores = {name: recovery(model.maps_, true) for name, model in fits.items()}
    print("recovery:", {k: round(v, 4) for k, v in scores.items()})
    # one map cannot be twelve different ones
    assert scores["shared"] < scores["compalign"] - 0.5
    np.testing.assert_array_equal(fits["shared"].maps_[0], fits["shared"].maps_[5])
    # without the penalty the directions come out a little worse, and the scale drifts
    assert scores["no penalty"] <= scores["compalign"] + 0.001
    assert fits["no penalty"].history_[-1]["orthogonality"] > 1.0
    assert fits["shared"].alignment_ < fits["compalign"].alignment_ - 0.3


# --------------------------------------------------------------------------- the gradient


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("widths", [(5, 4), (3, 4)])  # a narrower target: D < d
def test_gradient_matches_finite_differences(shared, widths):
    rng = np.random.default_rng(0)
    target_width, width = widths
    maps = rng.standard_normal((1 if shared else 3, target_width, width)) * 0.6
    components = rng.standard_normal((7, 3, width))
    target = rng.standard_normal((7, target_width))
    target[2] = 0.0  # a row that could not be embedded: left out of loss and gradient
    penalty = 0.7

    def loss(m):
        alignment, ortho, _ = alignment_objective(m, components, target, penalty, shared)
        return alignment + ortho

    _, ortho, grad = alignment_objective(maps, components, target, penalty, shared)
    assert (ortho == 0.0) == shared
    numeric = np.zeros_like(maps)
    step = 1e-6
    for index in np.ndindex(maps.shape):
        up, down = maps.copy(), maps.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (loss(up) - loss(down)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_penalty_is_phased_in():
    weights = [align_module.penalty_schedule(p) for p in np.linspace(0, 1, 101)]
    assert weights[0] == 0 and weights[49] == 0 and weights[-1] == pytest.approx(1.0)
    assert 0 < weights[51] < 1e-3 and np.all(np.diff(weights) >= 0)


def test_zero_target_rows_are_left_out():
    rng = np.random.default_rng(1)
    maps, components = rng.standard_normal((2, 3, 3)), rng.standard_normal((4, 2, 3))
    target = rng.standard_normal((4, 3))
    padded = np.concatenate([target, np.zeros((3, 3))])
    with_zeros = alignment_objective(maps, np.concatenate([components, components[:3]]),
                                     padded, 0.0)
    plain = alignment_objective(maps, components, target, 0.0)
    assert with_zeros[0] == pytest.approx(plain[0])
    np.testing.assert_allclose(with_zeros[2], plain[2])


# --------------------------------------------------------------------------- inputs


def _stores(tmp_path, components, target, chunk_rows):
    parts = daskdict.create_store(
        tmp_path / "parts.zarr", {"final": sum(components.values()), **components},
        chunk_rows=chunk_rows, attrs={"decomposition": {"components": list(components)}})
    clip = daskdict.create_store(tmp_path / "clip.zarr", {"final": target},
                                 chunk_rows=chunk_rows)
    return parts, clip


def test_fit_from_stores_equals_fit_from_arrays(tmp_path, small):
    components, target, _ = small
    parts, clip = _stores(tmp_path, components, target, chunk_rows=1500)
    from_stores = _fast(chunk_rows=1500).fit(parts, clip)
    from_arrays = _fast(chunk_rows=1500).fit(components, target)
    np.testing.assert_array_equal(from_stores.maps_, from_arrays.maps_)
    assert from_stores.component_names_ == list(components)
    # by path, and the store's chunks as the default reads
    by_path = _fast().fit(str(parts.path), str(clip.path))
    np.testing.assert_array_equal(by_path.maps_, from_arrays.maps_)


def test_dask_and_zarr_inputs_read_in_chunks_give_the_numpy_maps(tmp_path, small):
    components, target, _ = small
    reference = _fast(chunk_rows=1000).fit(components, target)
    # rows in chunks of other sizes: the reads follow chunk_rows, not the inputs' chunks
    lazy = {name: da.from_array(c, chunks=(700 + 100 * i, -1))
            for i, (name, c) in enumerate(components.items())}
    on_disk = zarr.create_array(tmp_path / "target.zarr", shape=target.shape,
                                dtype=np.float32, chunks=(1000, target.shape[1]))
    on_disk[...] = target
    out_of_core = _fast(chunk_rows=1000).fit(lazy, on_disk)
    np.testing.assert_array_equal(out_of_core.maps_, reference.maps_)
    # every read is one chunk of rows, whatever the number of rows
    recorder = _RowsRead(target)
    _fast(chunk_rows=1000).fit(components, da.from_array(recorder, chunks=(250, -1)))
    assert recorder.calls and max(recorder.rows) <= 250 and sum(recorder.rows) == 3 * 6000
    # without chunk_rows a dask input's row chunks are the reads (a NumPy one's 4096 rows)
    chunked = {name: da.from_array(c, chunks=(4096, -1)) for name, c in components.items()}
    np.testing.assert_array_equal(_fast().fit(chunked, target).maps_,
                                  _fast().fit(components, target).maps_)


class _RowsRead:
    """An array-like that records how many rows each read asks for."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, 2
        self.rows: list[int] = []

    @property
    def calls(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        out = self.array[key]
        self.rows.append(out.shape[0])
        return out


def test_target_width_may_differ_from_components(small):
    components, target, _ = small
    assert target.shape[1] != next(iter(components.values())).shape[1]
    model = _fast().fit(components, target)
    assert model.maps_.shape == (4, 6, 8)
    by_number = _fast().fit(dict(enumerate(components.values())), target)  # keys as names
    assert by_number.component_names_ == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(by_number.maps_, model.maps_)


# --------------------------------------------------------------------------- transform, score


def test_transform_numpy_dask_and_stores(tmp_path, small):
    components, target, _ = small
    model = _fast().fit(components, target)
    out = model.transform(components)
    assert list(out) == list(components)
    first = out["component.00"]
    assert isinstance(first, np.ndarray) and first.shape == (6000, 6)
    assert first.dtype == np.float32
    np.testing.assert_allclose(first, components["component.00"] @ model.maps_[0].T,
                               rtol=1e-5, atol=1e-5)
    lazy = model.transform({"component.02": da.from_array(components["component.02"],
                                                          chunks=(1000, -1))})
    assert list(lazy) == ["component.02"] and isinstance(lazy["component.02"], da.Array)
    np.testing.assert_allclose(lazy["component.02"].compute(), out["component.02"],
                               rtol=1e-6)
    parts, clip = _stores(tmp_path, components, target, chunk_rows=2000)
    from_store = model.transform(parts)
    assert all(isinstance(v, da.Array) for v in from_store.values())
    np.testing.assert_allclose(from_store["component.03"].compute(), out["component.03"],
                               rtol=1e-6)
    aligned = sum(out.values())
    cos = np.sum(aligned * target, axis=1) / (np.linalg.norm(aligned, axis=1)
                                               * np.linalg.norm(target, axis=1))
    assert model.score(components, target) == pytest.approx(float(cos.mean()), abs=1e-5)
    assert model.score(parts, clip) == pytest.approx(float(cos.mean()), abs=1e-5)
    with pytest.raises(InvalidInputError, match="were not fit"):
        model.transform({"component.09": components["component.00"]})
    with pytest.raises(InvalidInputError, match="Missing"):
        model.score({"component.00": components["component.00"]}, target)
    with pytest.raises(NotFittedError):
        CompAlign().transform(components)


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path, small):
    components, target, _ = small
    model = _fast(penalty=0.5).fit(components, target)
    path = model.save(tmp_path / "align.zarr")
    assert daskdict.describe(path)["kind"] == "alignment"
    for loaded in (CompAlign.load(path), daskdict.load(path)):
        assert isinstance(loaded, CompAlign)
        np.testing.assert_array_equal(loaded.maps_, model.maps_)
        assert loaded.component_names_ == model.component_names_
        assert loaded.history_ == model.history_
        assert loaded.alignment_ == model.alignment_
        assert loaded.get_params() == model.get_params()
        np.testing.assert_array_equal(loaded.transform(components)["component.01"],
                                      model.transform(components)["component.01"])
    summary = describe_alignment(path)
    assert summary["n_components"] == 4 and summary["target_width"] == 6
    assert summary["width"] == 8 and summary["n_epochs_run"] == 2


def test_writer_rule_and_atomic_save(tmp_path, small, monkeypatch):
    components, target, _ = small
    parts, clip = _stores(tmp_path, components, target, chunk_rows=2000)
    model = _fast().fit(parts, clip)
    path = model.save(tmp_path / "align.zarr")
    with pytest.raises(OutputNotWritableError, match="overwrite=True"):
        model.save(path)
    model.save(path, overwrite=True)
    for other in (parts.path, clip.path):  # the inputs
        with pytest.raises(OutputNotWritableError, match="input"):
            model.save(other, overwrite=True)
    unrelated = daskdict.create_store(tmp_path / "other.zarr", {"final": target})
    with pytest.raises(OutputNotWritableError, match="embedding store, not alignment"):
        model.save(unrelated.path, overwrite=True)
    with pytest.raises(OutputNotWritableError, match="input"):
        model.save(parts.path / "inside.zarr")
    with pytest.raises(OutputNotWritableError, match="input"):
        daskdict.load(path).save(clip.path / "inside.zarr")  # the inputs are saved too
    assert daskdict.open_store(parts.path).layer_names  # untouched

    # a crash while writing leaves the old alignment
    before = CompAlign.load(path).maps_
    changed = _fast(random_state=5).fit(components, target)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(daskdict.io.formats, "write_header", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        changed.save(path, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(CompAlign.load(path).maps_, before)
    assert not list(tmp_path.glob(".align.zarr.tmp-*"))


# --------------------------------------------------------------------------- errors


def test_bad_inputs_are_named_before_any_training(small, monkeypatch):
    components, target, _ = small

    def never(*args, **kwargs):
        raise AssertionError("trained on bad input")

    monkeypatch.setattr(align_module, "alignment_objective", never)
    short = dict(components, **{"component.01": components["component.01"][:-1]})
    with pytest.raises(InvalidInputError, match=r"'component\.01'"):
        _fast().fit(short, target)
    with pytest.raises(InvalidInputError, match="target to have as many rows"):
        _fast().fit(components, target[:-5])
    bad = components["component.02"].copy()
    bad[4321, 3] = np.nan
    with pytest.raises(InvalidInputError,
                       match=r"Component 'component.02' holds NaN or inf in chunk 4 "
                             r"\(rows 4000-4999\), first at row 4321"):
        _fast(chunk_rows=1000).fit(dict(components, **{"component.02": bad}), target)
    bad_target = target.copy()
    bad_target[10, 0] = np.inf
    with pytest.raises(InvalidInputError, match="The target holds NaN or inf in chunk 0"):
        _fast().fit(components, da.from_array(bad_target, chunks=(1000, -1)))
    with pytest.raises(InvalidInputError, match="at least one component"):
        _fast().fit({}, target)
    wide = dict(components, **{"component.03": np.zeros((6000, 9), np.float32)})
    with pytest.raises(InvalidInputError, match=r"'component\.03'"):
        _fast().fit(wide, target)
    with pytest.raises(InvalidInputError, match="floating-point"):
        _fast().fit(dict(components, **{"component.00": np.ones((6000, 8), int)}), target)
    with pytest.raises(InvalidInputError, match="mapping of names"):
        _fast().fit(list(components.values()), target)
    for option, value in (("penalty", -1.0), ("penalty", float("nan")), ("n_epochs", 0),
                          ("batch_rows", 2.5), ("learning_rate", 0.0), ("shared", "yes"),
                          ("chunk_rows", -3), ("random_state", "seed"), ("verbose", None)):
        with pytest.raises(InvalidInputError, match=option):
            _fast(**{option: value}).fit(components, target)


def test_interrupted_fit_leaves_no_model(small, monkeypatch):
    components, target, _ = small
    model = _fast().fit(components, target)
    calls = []
    real = align_module.alignment_objective

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(align_module, "alignment_objective", interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(components, target)
    with pytest.raises(NotFittedError):
        model.transform(components)


def test_progress_bar(small, capsys):
    components, target, _ = small
    CompAlign(n_epochs=1, random_state=0).fit(components, target)
    assert "CompAlign" in capsys.readouterr().err


def test_stores_of_other_items_are_refused(tmp_path, small):
    components, target, _ = small
    parts, _ = _stores(tmp_path, components, target, chunk_rows=1500)
    shuffled = daskdict.create_store(tmp_path / "other.zarr", {"final": target},
                                     ids=[f"item-{i}" for i in range(len(target))][::-1])
    with pytest.raises(InvalidInputError, match="other items"):
        _fast().fit(parts, shuffled)
