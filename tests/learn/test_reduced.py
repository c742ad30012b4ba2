"""Correlations from bfloat16 inputs (correlation_dtype): the same codes as float32, chosen and
fitted at float32 precision; "auto" resolved once and recorded; refused without torch."""

import sys

import numpy as np
import pytest
import zarr

import daskdict
from daskdict.errors import InvalidInputError
from daskdict.io.formats import HEADER_KEY
from daskdict.learn import coding, reduced
from daskdict.learn import params as fit_params
from daskdict.learn.estimator import KSVD
from daskdict.learn.params import coder_key, validate_params

has_torch = fit_params.torch_version() is not None
needs_torch = pytest.mark.skipif(not has_torch, reason="torch is not installed")
# where oneDNN has no bfloat16 kernel for the CPU (AVX512-BF16 without AMX) torch computes the
# products in float32: the tests of bfloat16 inputs have nothing to measure there
needs_bf16_products = pytest.mark.skipif(
    not has_torch or not reduced.rounds_inputs(),
    reason="torch computes float32 products in float32 on this CPU")


@pytest.fixture
def bf16_units(monkeypatch):
    """A CPU with bfloat16 units whose torch products take bfloat16 inputs."""
    monkeypatch.setattr(fit_params, "cpu_flags", lambda: {"sse2", "amx_bf16", "avx512_bf16"})
    monkeypatch.setattr(reduced, "rounds_inputs", lambda: True)


def planted(n=1200, d=64, k=128, nnz=4, noise=0.01, seed=0, positive=False):
    """Rows of ``nnz`` well-separated planted atoms each (coefficients of size 1 to 2)."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((k, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, k))
    for row in codes:
        size = rng.uniform(1.0, 2.0, nnz)
        row[rng.choice(k, nnz, replace=False)] = size if positive else size * rng.choice(
            [-1, 1], nnz)
    y = codes @ atoms + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return y.astype(np.float32), atoms.astype(np.float32)


def same_support(a, b):
    return np.mean([set(r[r >= 0]) == set(s[s >= 0]) for r, s in zip(a, b, strict=True)])


def validate(correlation_dtype, coder="omp", dtype="float32"):
    return validate_params(8, 2, 1, coder, 0.0, "approx", None, True, True, "data", dtype,
                           n_samples=100, n_features=10, correlation_dtype=correlation_dtype)


def test_float32_is_the_default_and_keeps_its_keys():
    params = validate("float32")
    assert (params.correlation_dtype, params.correlations) == ("float32", "float32")
    assert params.coder_key == "omp"
    assert coder_key("omp", True, "bfloat16") == "omp-positive-bf16"
    assert set(reduced.CODERS) <= set(coding.CODERS)


def test_unknown_correlation_dtype_is_refused():
    with pytest.raises(InvalidInputError, match="correlation_dtype"):
        validate("float16")


def test_bfloat16_without_torch_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" fails
    monkeypatch.setattr(fit_params, "cpu_flags", lambda: {"amx_bf16"})
    assert fit_params.torch_version() is None
    with pytest.raises(InvalidInputError, match="pip install torch"):
        reduced.require_torch()
    with pytest.raises(InvalidInputError, match="pip install torch"):
        validate("bfloat16")
    params = validate("auto")
    assert params.correlation_dtype == "float32"
    assert params.correlations == "float32 (auto: torch is not installed)"
    y, _ = planted(n=60, d=8, k=12)
    with pytest.raises(InvalidInputError, match="pip install torch"):
        daskdict.fit(y, 12, 2, 1, correlation_dtype="bfloat16", verbose=False)


def test_bfloat16_is_refused_where_it_cannot_serve():
    with pytest.raises(InvalidInputError, match="coder='mp'"):
        validate("bfloat16", coder="mp")
    with pytest.raises(InvalidInputError, match="dtype='float64'"):
        validate("bfloat16", dtype="float64")
    assert validate("auto", coder="mp").correlation_dtype == "float32"


@needs_torch
def test_auto_resolves_once_from_the_cpu_flags(bf16_units, monkeypatch):
    params = validate("auto")
    assert params.correlation_dtype == "bfloat16" and params.coder_key == "omp-bf16"
    assert params.correlations == (f"bfloat16 (auto: amx_bf16, avx512_bf16, torch "
                                   f"{fit_params.torch_version()})")
    monkeypatch.setattr(fit_params, "cpu_flags", lambda: {"sse2", "avx2"})
    params = validate("auto")
    assert params.correlation_dtype == "float32"
    assert "no bfloat16 units" in params.correlations


@needs_torch
def test_auto_keeps_float32_where_torch_does_not_round_the_inputs(bf16_units, monkeypatch):
    monkeypatch.setattr(reduced, "rounds_inputs", lambda: False)
    params = validate("auto")
    assert params.correlation_dtype == "float32"
    assert "computes float32 products in float32" in params.correlations
    forced = validate("bfloat16")
    assert forced.correlation_dtype == "bfloat16"
    assert forced.correlations.endswith("torch computes them in float32 here)")


@needs_torch
def test_the_probe_tells_what_torch_computes():
    """Whatever the CPU, the probe's answer matches what the correlations are: from bfloat16
    inputs (closer to their product than to the float32 one) or plain float32."""
    y, atoms = planted(n=200, d=96, k=160)
    out = np.empty((200, 160), dtype=np.float32)
    reduced.correlations(y, atoms, out)
    rounded = (reduced.to_bfloat16(y).astype(np.float64)
               @ reduced.to_bfloat16(atoms).astype(np.float64).T)
    plain = y.astype(np.float64) @ atoms.astype(np.float64).T
    closer_to_rounded = np.abs(out - rounded).max() < np.abs(out - plain).max()
    assert closer_to_rounded == reduced.rounds_inputs()


def test_rounding_to_bfloat16_is_to_nearest_even():
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5],
                      dtype=np.float32)
    expected = [1.0, 1.0, 1.0 + 4 * 2**-8, 1.0 + 2**-7, -2.5]
    assert reduced.to_bfloat16(values).tolist() == expected


@needs_bf16_products
def test_correlations_are_bfloat16_inputs_with_float32_sums_within_the_margins():
    y, atoms = planted(n=300, d=96, k=160)
    out = np.empty((300, 160), dtype=np.float32)
    reduced.correlations(y, atoms, out)
    rounded = (reduced.to_bfloat16(y).astype(np.float64)
               @ reduced.to_bfloat16(atoms).astype(np.float64).T)
    assert np.abs(out - rounded).max() < 96 * 2**-24 * 8
    exact = y.astype(np.float64) @ atoms.astype(np.float64).T
    error = np.abs(out - exact).max(axis=1)
    half_margins = reduced.margins(y, reduced.rounding(atoms)) / 2
    assert (error <= half_margins).all() and (error > 0).any()


@needs_torch
def test_the_torch_setting_is_restored_and_older_torch_rounds_within_its_margins(monkeypatch):
    import torch

    before = torch.backends.mkldnn.matmul.fp32_precision
    y, atoms = planted(n=100, d=64, k=80)
    out = np.empty((100, 80), dtype=np.float32)
    reduced.correlations(y, atoms, out)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    monkeypatch.setattr(reduced, "has_fp32_precision", lambda torch: False)
    reduced.correlations(y, atoms, out)  # a bfloat16 product, its result rounded
    bounds = reduced.rounding(atoms)
    assert bounds[2] > 2.0**-9
    error = np.abs(out - y.astype(np.float64) @ atoms.astype(np.float64).T).max(axis=1)
    assert (error <= reduced.margins(y, bounds) / 2).all()


@needs_torch
@pytest.mark.parametrize("positive", [False, True])
def test_bfloat16_codes_have_the_float32_support_and_exact_coefficients(positive):
    y, atoms = planted(positive=positive)
    gram = coding.gram_matrix(atoms)
    key = coder_key("omp", positive)
    indices = coding.code_block(y, atoms, gram, 4, 0.0, key)[0]
    bf_indices, bf_values = coding.code_block(y, atoms, gram, 4, 0.0, key + "-bf16")
    assert same_support(indices, bf_indices) >= 0.99
    if positive:
        used = bf_indices >= 0
        assert (bf_values[used] > 0).all()
    # on its support, each code is the float32 least-squares solution (exact correlations)
    for row, idx, val in zip(y[:200], bf_indices[:200], bf_values[:200], strict=True):
        support = idx[idx >= 0]
        solution, *_ = np.linalg.lstsq(atoms[support].T.astype(np.float64), row, rcond=None)
        np.testing.assert_allclose(val[idx >= 0], solution, rtol=2e-4, atol=2e-5)


@needs_bf16_products
def test_near_ties_are_settled_at_full_precision():
    """Two atoms whose correlations with a row differ far below bfloat16's resolution: the
    exact larger one is chosen, as float32 chooses it."""
    rng = np.random.default_rng(3)
    atoms = rng.standard_normal((64, 48)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    rows = []
    for _ in range(64):
        a, b = rng.choice(64, 2, replace=False)
        rows.append(atoms[a] * (1 + 1e-4) + atoms[b])  # a leads b by 1e-4
    y = np.array(rows, dtype=np.float32)
    gram = coding.gram_matrix(atoms)
    first = coding.code_block(y, atoms, gram, 1, 0.0, "omp")[0]
    approximate = np.empty((64, 64), dtype=np.float32)
    reduced.correlations(y, atoms, approximate)
    assert (np.abs(approximate).argmax(axis=1) != first[:, 0]).any()  # bfloat16 alone errs
    assert (coding.code_block(y, atoms, gram, 1, 0.0, "omp-bf16")[0] == first).all()


@needs_torch
def test_levels_code_with_bfloat16_correlations():
    y, atoms = planted(n=400, k=96)
    sizes, nnz = [32, 64], [2, 2]
    grams = coding.level_grams(atoms, sizes)
    indices, _, residual = coding.code_levels(y, atoms, grams, sizes, nnz, 0.0, "omp")
    bf_indices, _, bf_residual = coding.code_levels(y, atoms, grams, sizes, nnz, 0.0,
                                                            "omp-bf16")
    assert same_support(indices, bf_indices) >= 0.99
    assert np.abs(bf_residual - residual).max() < 1e-3


@pytest.fixture(scope="module")
def small():
    return planted(n=600, d=24, k=48, nnz=3)


@needs_torch
def test_fit_records_the_choice_and_encode_keeps_it(small, monkeypatch):
    y, _ = small
    model = daskdict.fit(y, 48, 3, 3, correlation_dtype="bfloat16", random_state=0,
                         verbose=False)
    reference = daskdict.fit(y, 48, 3, 3, random_state=0, verbose=False)
    assert model.params["correlation_dtype"] == "bfloat16"
    assert model.params["correlations"].startswith("bfloat16 (forced, torch ")
    assert reference.params["correlations"] == "float32"
    assert abs(model.history[-1]["relative_error"]
               - reference.history[-1]["relative_error"]) < 0.01
    calls = []
    real = reduced.correlations
    monkeypatch.setattr(reduced, "correlations",
                        lambda *args: calls.append(1) or real(*args))
    codes = model.encode(y, client="sync")
    assert calls  # the fit's path by default
    calls.clear()
    reference.encode(y, client="sync")
    assert not calls
    float32 = daskdict.Dictionary(model.atoms, {**model.params, "correlation_dtype": "float32"})
    assert same_support(codes.indices, float32.encode(y, client="sync").indices) >= 0.99


def test_encode_of_a_bfloat16_dictionary_without_torch_names_the_fix(small, monkeypatch):
    y, atoms = small
    model = daskdict.Dictionary(atoms, {"n_nonzero": 3, "correlation_dtype": "bfloat16"})
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InvalidInputError, match="pip install torch"):
        model.encode(y)
    model.params["correlation_dtype"] = "float32"
    assert model.encode(y).indices.shape == (len(y), 3)


@needs_torch
def test_positive_fit_with_bfloat16(small):
    y = np.abs(small[0])
    model = daskdict.fit(y, 48, 3, 2, positive=True, correlation_dtype="bfloat16",
                         random_state=0, verbose=False)
    codes = model.encode(y)
    assert (codes.values[codes.indices >= 0] > 0).all()


def test_checkpoint_from_before_the_option_resumes(small, tmp_path):
    y, _ = small
    path = tmp_path / "run.zarr"
    daskdict.fit(y, 48, 3, 2, random_state=0, checkpoint=path, verbose=False)
    group = zarr.open_group(path, mode="r+")
    meta = dict(group.attrs[HEADER_KEY])
    meta["params"] = {k: v for k, v in meta["params"].items()
                      if k not in ("correlation_dtype", "correlations")}
    group.attrs[HEADER_KEY] = meta
    model = daskdict.fit(y, 48, 3, 3, random_state=0, checkpoint=path, verbose=False)
    assert len(model.history) == 3 and model.params["correlation_dtype"] == "float32"


def test_estimator_takes_correlation_dtype():
    estimator = KSVD(8, 2, correlation_dtype="auto")
    assert estimator.get_params()["correlation_dtype"] == "auto"
    with pytest.raises(InvalidInputError, match="correlation_dtype"):
        KSVD(8, 2, 1, correlation_dtype="int8").fit(planted(n=40, d=8, k=12)[0])


@needs_torch
def test_auto_fit_records_what_it_chose_and_why(small, bf16_units, monkeypatch):
    y, _ = small
    monkeypatch.setattr(fit_params, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    model = daskdict.fit(y, 48, 3, 1, correlation_dtype="auto", random_state=0, verbose=False)
    assert model.params["correlation_dtype"] == "bfloat16"
    assert model.params["correlations"].startswith("bfloat16 (auto: amx_bf16, torch ")
    monkeypatch.setattr(fit_params, "cpu_flags", set)
    model = daskdict.fit(y, 48, 3, 1, correlation_dtype="auto", random_state=0, verbose=False)
    assert model.params["correlation_dtype"] == "float32"
    assert "no bfloat16 units" in model.params["correlations"]


def test_an_auto_fit_resumes_on_a_node_without_bfloat16_units(small, bf16_units, monkeypatch,
                                                              tmp_path):
    y, _ = small
    checkpoint = tmp_path / "state.zarr"
    monkeypatch.setattr(fit_params, "cpu_flags", lambda: {"amx_bf16"})
    first = daskdict.fit(y, 48, 3, 2, correlation_dtype="auto", random_state=0,
                         checkpoint=checkpoint, verbose=False)
    assert first.params["correlation_dtype"] == "bfloat16"
    monkeypatch.setattr(fit_params, "cpu_flags", set)  # the batch job lands on another node
    resumed = daskdict.fit(y, 48, 3, 3, correlation_dtype="auto", random_state=0,
                           checkpoint=checkpoint, verbose=False)
    assert resumed.history[:2] == first.history and len(resumed.history) == 3
    assert resumed.params["correlation_dtype"] == "float32"
    with pytest.raises(daskdict.CheckpointMismatchError, match="correlation_dtype"):
        daskdict.fit(y, 48, 3, 4, correlation_dtype="bfloat16", random_state=0,
                     checkpoint=checkpoint, verbose=False)
