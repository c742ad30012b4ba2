import concurrent.futures
import itertools
import threading
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import unit_rows
from sklearn.linear_model import orthogonal_mp_gram

import daskdict
from daskdict.compute.runtime import Runtime
from daskdict.datasets.planted import make_planted
from daskdict.evaluation.metrics import recovered_fraction
from daskdict.learn import checkpoints, coding, kernels, shares, updates


def _textbook_ksvd_iteration(y, atoms, n_nonzero):
    """One K-SVD iteration as in Aharon et al. 2006: OMP codes (scikit-learn), then for each
    atom in order the full SVD of its restricted residual, updating atom and coefficients."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = orthogonal_mp_gram(atoms @ atoms.T, atoms @ y.T, n_nonzero_coefs=n_nonzero).T
    atoms = atoms.copy()
    for j in range(atoms.shape[0]):
        users = np.flatnonzero(x[:, j])
        if users.size == 0:
            continue
        e = y[users] - x[users] @ atoms + np.outer(x[users, j], atoms[j])
        u, s, vt = np.linalg.svd(e, full_matrices=False)
        sign = -1.0 if vt[0] @ atoms[j] < 0 else 1.0
        atoms[j] = sign * vt[0]
        x[users, j] = sign * s[0] * u[:, 0]
    return atoms


@pytest.mark.parametrize("n_nonzero", [2, 4])
def test_one_iteration_equals_textbook_ksvd(rng, n_nonzero):
    planted = make_planted(600, 16, 40, n_nonzero, 25.0, random_state=1)
    init = unit_rows(rng.standard_normal((40, 16)))
    model = daskdict.fit(planted.data, 40, n_nonzero, 1, update="ksvd", atom_batch_size=1,
                         shuffle_atoms=False, replace_atoms=False, init=init, dtype="float64",
                         verbose=False)
    expected = _textbook_ksvd_iteration(planted.data, init, n_nonzero)
    np.testing.assert_allclose(model.atoms, expected, atol=1e-10)


def test_approx_update_is_one_power_step(rng):
    """Every atom moves to E_w^T x_w (normalised), from the iteration's start state."""
    planted = make_planted(500, 12, 30, 3, 20.0, random_state=2)
    y = planted.data
    init = unit_rows(rng.standard_normal((30, 12)))
    model = daskdict.fit(y, 30, 3, 1, update="approx", replace_atoms=False, init=init,
                         dtype="float64", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = orthogonal_mp_gram(init @ init.T, init @ y.T, n_nonzero_coefs=3).T
    expected = init.copy()
    for j in range(30):
        users = np.flatnonzero(x[:, j])
        if users.size:
            e = y[users] - x[users] @ init + np.outer(x[users, j], init[j])
            g = e.T @ x[users, j]
            expected[j] = g / np.linalg.norm(g)
    np.testing.assert_allclose(model.atoms, expected, atol=1e-10)


@pytest.mark.parametrize("chunks", [500, 130])
def test_mod_update_is_the_least_squares_dictionary(rng, chunks):
    """One iteration of the default update is D = (X^T X)^{-1} X^T Y for the iteration's
    codes, rows normalised (however the rows are chunked: the code Gram matrix is summed)."""
    planted = make_planted(500, 12, 30, 3, 20.0, random_state=2)
    y = planted.data
    init = unit_rows(rng.standard_normal((30, 12)))
    model = daskdict.fit(da.from_array(y, chunks=(chunks, 12)), 30, 3, 1, replace_atoms=False,
                         init=init, dtype="float64", verbose=False, client="sync")
    assert model.params["update"] == "mod"
    assert model.params["update_choice"] == "mod (auto: 30 atoms <= 4096)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = orthogonal_mp_gram(init @ init.T, init @ y.T, n_nonzero_coefs=3).T
    used = np.abs(x).sum(axis=0) > 0
    expected = init.copy()
    expected[used] = np.linalg.lstsq(x[:, used], y, rcond=None)[0]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(model.atoms, expected, atol=1e-7)


def test_code_gram_is_the_upper_triangle_of_xtx(rng):
    # distinct atoms per row (as codes hold them), some slots padded
    indices = np.argsort(rng.random((300, 20)), axis=1)[:, :4].astype(np.int32)
    indices[rng.random((300, 4)) < 0.2] = -1
    values = rng.standard_normal((300, 4))
    values[indices < 0] = 0.0
    dense = np.zeros((300, 20))
    for row, (idx, val) in enumerate(zip(indices, values, strict=True)):
        for j, v in zip(idx, val, strict=True):
            if j >= 0:
                dense[row, j] += v
    code_gram = np.zeros((20, 20))
    kernels.add_code_gram(code_gram, indices, values)
    np.testing.assert_allclose(code_gram, np.triu(dense.T @ dense), atol=1e-12)


def test_mod_update_keeps_unused_atoms_and_survives_a_matrix_that_is_not_definite():
    atoms = unit_rows(np.random.default_rng(0).standard_normal((3, 4)))
    restricted = np.array([[0.1, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    # atoms 0 and 1 "share" more than their own squares (not positive definite); atom 2 unused
    upper = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    for dtype in (np.float32, np.float64):
        new = updates.mod_update(atoms.astype(dtype), {"code_gram": upper,
                                                        "restricted": restricted})
        assert np.isfinite(new).all()
        np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(new[2], atoms[2], rtol=1e-6)


def test_auto_takes_the_approximate_update_for_large_dictionaries(monkeypatch):
    from daskdict.learn import params as fit_params

    monkeypatch.setattr(fit_params, "MOD_MAX_ATOMS", 20)
    planted = make_planted(400, 12, 30, 3, 20.0, random_state=2)
    model = daskdict.fit(planted.data, 30, 3, 2, random_state=0, verbose=False)
    assert model.params["update"] == "approx"
    assert model.params["update_choice"].startswith("approx (auto: 30 atoms > 20")


def test_the_default_update_converges_faster_than_the_approximate_one():
    """Recovered planted atoms after 10 iterations, mean of three seeds: the least-squares
    update ahead (it is the lever that closes the gap to textbook K-SVD early on)."""
    rates = {"auto": [], "approx": []}
    for seed in range(3):
        planted = make_planted(4000, 32, 64, 4, 30.0, random_state=seed, dtype=np.float32)
        for update in rates:
            model = daskdict.fit(planted.data, 64, 4, 10, update=update, random_state=seed,
                                 verbose=False)
            rates[update].append(recovered_fraction(planted.atoms, model.atoms))
    assert np.mean(rates["auto"]) > np.mean(rates["approx"])


def test_result_does_not_depend_on_chunking():
    planted = make_planted(3000, 16, 32, 3, 20.0, random_state=3)
    kwargs = dict(n_atoms=32, n_nonzero=3, n_iter=5, dtype="float64", random_state=7,
                  verbose=False, client="sync")
    one = daskdict.fit(da.from_array(planted.data, chunks=(3000, 16)), **kwargs)
    many = daskdict.fit(da.from_array(planted.data, chunks=(700, 16)), **kwargs)
    np.testing.assert_allclose(one.atoms, many.atoms, atol=1e-8)
    assert [h["dead_atoms"] for h in one.history] == [h["dead_atoms"] for h in many.history]


def test_reproducible_with_random_state_and_different_without():
    planted = make_planted(1500, 20, 50, 3, 20.0, random_state=4)
    a = daskdict.fit(planted.data, 50, 3, 3, random_state=11, verbose=False)
    b = daskdict.fit(planted.data, 50, 3, 3, random_state=11, verbose=False)
    c = daskdict.fit(planted.data, 50, 3, 3, random_state=12, verbose=False)
    np.testing.assert_array_equal(a.atoms, b.atoms)
    assert not np.allclose(a.atoms, c.atoms)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_and_unit_atoms(dtype):
    planted = make_planted(800, 10, 20, 2, 30.0, random_state=5)
    model = daskdict.fit(planted.data, 20, 2, 4, dtype=dtype, random_state=0, verbose=False)
    assert model.atoms.dtype == np.dtype(dtype)
    np.testing.assert_allclose(np.linalg.norm(model.atoms, axis=1), 1.0, atol=1e-5)


def test_history_records_every_iteration():
    planted = make_planted(1500, 20, 50, 3, 20.0, random_state=6)
    model = daskdict.fit(planted.data, 50, 3, 15, random_state=0, verbose=False)
    assert [h["iteration"] for h in model.history] == list(range(1, 16))
    errors = [h["relative_error"] for h in model.history]
    assert errors[-1] < 0.6 * errors[0]
    for record in model.history:
        assert 0 <= record["fvu"] <= 1.5 and record["seconds"] > 0
        assert record["mean_l0"] <= 3 and record["passes"] == 1
        assert 0 <= record["mean_relative_residual"] <= 1


def test_history_error_matches_a_direct_computation():
    planted = make_planted(1000, 12, 24, 3, 20.0, random_state=8)
    model = daskdict.fit(planted.data, 24, 3, 2, replace_atoms=False, dtype="float64",
                         random_state=0, verbose=False)
    # iteration 2's coding step uses the atoms after iteration 1
    first = daskdict.fit(planted.data, 24, 3, 1, replace_atoms=False, dtype="float64",
                         random_state=0, verbose=False)
    codes = first.encode(planted.data)
    y, recon = planted.data, first.reconstruct(codes)
    rel = np.linalg.norm(y - recon) / np.linalg.norm(y)
    fvu = ((y - recon) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert model.history[1]["relative_error"] == pytest.approx(rel, rel=1e-9)
    assert model.history[1]["fvu"] == pytest.approx(fvu, rel=1e-9)


def test_unused_and_duplicate_atoms_are_replaced(rng):
    planted = make_planted(1000, 12, 20, 2, 30.0, random_state=9)
    init = unit_rows(rng.standard_normal((20, 12)))
    init[1] = init[0]  # a duplicate
    init[2] = unit_rows(np.ones((1, 12)))[0] * 1e-3 + init[0]  # nearly the same again
    init = unit_rows(init)
    model = daskdict.fit(planted.data, 20, 2, 1, init=init, random_state=0, verbose=False,
                         update="approx")
    gram = np.abs(model.atoms @ model.atoms.T)
    np.fill_diagonal(gram, 0)
    assert gram.max() <= 0.99
    assert model.history[0]["replaced_atoms"] >= 1


def _replace_atoms_reference(atoms, stats):
    """replace_atoms over the whole coherence matrix, updated after every replacement."""
    atoms = atoms.copy()
    candidates = stats["worst_rows"][stats["worst_err"] > 0]
    coherence = np.abs(atoms @ atoms.T)
    np.fill_diagonal(coherence, 0.0)
    replaced = 0
    for j in range(len(atoms)):
        if (stats["usage"][j] >= updates.MIN_ATOM_USAGE
                and coherence[j].max() <= updates.MAX_COHERENCE):
            continue
        if replaced == len(candidates):
            break
        atoms[j] = candidates[replaced] / np.linalg.norm(candidates[replaced])
        column = np.abs(atoms @ atoms[j])
        column[j] = 0.0
        coherence[j], coherence[:, j] = column, column
        replaced += 1
    return atoms, replaced


@pytest.mark.parametrize("seed", range(6))
def test_replace_atoms_follows_the_replacements_made_before(seed):
    """Atoms are checked in order against the dictionary as it is by then: a duplicate whose
    twin was replaced earlier stays, and a sample that duplicates a later atom makes that one
    go. The same atoms as the reference over the whole coherence matrix."""
    rng = np.random.default_rng(seed)
    atoms = unit_rows(rng.standard_normal((200, 16)))
    for i in rng.choice(200, 40, replace=False):  # near-duplicates, some of them chained
        atoms[i] = atoms[rng.integers(200)] + rng.normal(0, 0.02 * rng.random(), 16)
    atoms = unit_rows(atoms)
    usage = rng.integers(0, 30, 200)
    worst = rng.standard_normal((60, 16))
    worst[:20] = 3 * atoms[rng.choice(200, 20)]  # candidates that duplicate atoms
    stats = {"usage": usage, "worst_rows": worst,
             "worst_err": np.linspace(1.0, -0.2, 60) if seed % 2 else np.ones(60)}
    got, n_got = updates.replace_atoms(atoms, stats)
    expected, n_expected = _replace_atoms_reference(atoms, stats)
    assert n_got == n_expected > 0
    np.testing.assert_array_equal(np.any(got != atoms, axis=1),
                                  np.any(expected != atoms, axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("init", ["data", "kmeans++", "random"])
@pytest.mark.parametrize("coder", ["omp", "mp"])
def test_planted_recovery(init, coder):
    planted = make_planted(1500, 20, 50, 3, 30.0, random_state=10)
    model = daskdict.fit(planted.data, 50, 3, 60, init=init, coder=coder, random_state=1,
                         verbose=False)
    assert recovered_fraction(planted.atoms, model.atoms) >= 0.8


@pytest.mark.cluster
def test_fit_on_store_with_local_cluster(tmp_path):
    planted = make_planted(4000, 16, 32, 3, 25.0, random_state=11)
    path = tmp_path / "emb.zarr"
    daskdict.create_store(path, {"final": planted.data, "hidden_01": planted.data[:, :8]},
                          chunk_rows=1000)
    model = daskdict.fit(path, n_atoms=32, n_nonzero=3, n_iter=25, random_state=0,
                         verbose=False)
    assert model.fingerprint["layer"] == "final"
    assert model.fingerprint["shape"] == [4000, 16]
    assert recovered_fraction(planted.atoms, model.atoms) >= 0.8
    hidden = daskdict.fit(path, layer="hidden_01", n_atoms=16, n_nonzero=2, n_iter=2,
                          client="threads", verbose=False)
    assert hidden.atoms.shape == (16, 8)


def test_default_number_of_atoms_is_four_times_d():
    planted = make_planted(400, 6, 12, 2, 30.0, random_state=12)
    model = daskdict.fit(planted.data, n_nonzero=2, n_iter=1, verbose=False)
    assert model.atoms.shape == (24, 6)


@pytest.mark.cluster
def test_fit_uses_an_existing_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    planted = make_planted(2000, 8, 16, 2, 25.0, random_state=13)
    with distributed.Client(n_workers=1, threads_per_worker=1, processes=False,
                            dashboard_address=None) as client:
        model = daskdict.fit(da.from_array(planted.data, chunks=(500, 8)), 16, 2, 3,
                             client=client, random_state=0, verbose=False)
        assert not client.status == "closed"
    reference = daskdict.fit(da.from_array(planted.data, chunks=(500, 8)), 16, 2, 3,
                             client="sync", random_state=0, verbose=False)
    np.testing.assert_allclose(model.atoms, reference.atoms, atol=1e-6)


@pytest.mark.parametrize("chunks,n_shares", [((100,), 1), ((100,), 3), ((30, 30, 30, 10), 2),
                                             ((7,) * 13 + (2,), 4), ((3,), 8)])
def test_share_ranges_cover_the_rows_in_equal_shares_within_chunks(chunks, n_shares):
    cut = shares.share_ranges(chunks, n_shares)
    bounds = set(np.cumsum((0, *chunks)).tolist())
    flat = [rows for share in cut for rows in share]
    assert flat[0][0] == 0 and flat[-1][1] == sum(chunks)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(flat))  # contiguous, no overlap
    for start, stop in flat:  # no range crosses a chunk boundary
        assert stop > start and not any(start < b < stop for b in bounds)
    sizes = [sum(stop - start for start, stop in share) for share in cut]
    assert len(cut) == min(n_shares, sum(chunks)) and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("ranges", [[(0, 10_922)], [(0, 10_922), (10_922, 21_844)],
                                   [(50_000, 54_610), (54_610, 65_532)], [(0, 700)],
                                   [(0, 3000), (3000, 3100)]])
def test_share_blocks_tile_each_range_and_end_small(ranges):
    blocks = shares.share_blocks(ranges)
    assert blocks[0][1] == ranges[0][0] and blocks[-1][2] == ranges[-1][1]
    assert all(a[2] == b[1] for a, b in itertools.pairwise(blocks))  # contiguous, in order
    for index, start, stop in blocks:  # inside their range
        assert ranges[index][0] <= start < stop <= ranges[index][1]
    # towards the end the blocks shrink: one ending k rows before the share's end has at most
    # max(CODE_ROWS, k) rows, so threads taking them in turn end close together
    end = ranges[-1][1]
    for _, start, stop in blocks:
        if stop > end - 16 * coding.CODE_ROWS:
            assert stop - start <= max(coding.CODE_ROWS, end - stop)
    assert len(blocks) <= len(ranges) + len(shares.TAIL_BLOCKS)


def test_threads_coding_one_share_sum_in_block_order(rng, monkeypatch):
    """Threads take a share's blocks in turn and finish them in any order; the total is the
    same, bit for bit, as one thread coding the share alone."""
    import random
    import threading
    import time
    import uuid

    planted = make_planted(3000, 12, 24, 3, 20.0, random_state=1, dtype=np.float32)
    atoms = np.ascontiguousarray(planted.atoms, dtype=np.float32)
    ranges = [(0, 1100), (1100, 2400), (2400, 3000)]
    monkeypatch.setattr(coding, "CODE_ROWS", 64)  # 8 blocks, the smallest of 64 rows
    args = (planted.data.astype(np.float32), ranges)
    rest = (atoms, 3, 0.0, "omp", 16)
    alone = shares.share_statistics(*args, uuid.uuid4().hex, *rest)

    chunk_statistics = coding.block_statistics
    jitter = random.Random(0)

    def slow(*a, **k):  # finish blocks out of order
        time.sleep(jitter.random() * 0.01)
        return chunk_statistics(*a, **k)

    monkeypatch.setattr(coding, "block_statistics", slow)
    token, results = uuid.uuid4().hex, []
    threads = [threading.Thread(target=lambda: results.append(
        shares.share_statistics(*args, token, *rest))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = [r for r in results if r is not None]
    assert len(results) == 4 and len(totals) == 1
    for key, value in alone.items():
        np.testing.assert_array_equal(totals[0][key], value, err_msg=key)
    # a task of the share that starts late (its thread was busy) codes nothing and returns
    # None; the finished share keeps no sums
    calls = []
    monkeypatch.setattr(coding, "block_statistics", lambda *a, **k: calls.append(1))
    assert shares.share_statistics(*args, token, *rest) is None and calls == []
    assert shares._SHARES[token].total is None and shares._SHARES[token].waiting == {}
    shares.forget_worker_state(Runtime(scheduler="sync"))


def test_share_and_chunk_tasks_give_the_same_fit():
    # NumPy and Zarr data are read by one task per thread of a share; a dask array by one task
    # per chunk
    planted = make_planted(3000, 16, 32, 3, 20.0, random_state=5)
    kwargs = dict(n_atoms=32, n_nonzero=3, n_iter=4, dtype="float64", random_state=2,
                  verbose=False)
    by_share = daskdict.fit(planted.data, client="threads", **kwargs)
    blocks = daskdict.fit(da.from_array(planted.data, chunks=(700, 16)), client="sync",
                          **kwargs)
    np.testing.assert_allclose(by_share.atoms, blocks.atoms, atol=1e-8)
    assert [h["replaced_atoms"] for h in by_share.history] == [
        h["replaced_atoms"] for h in blocks.history]


def test_sub_block_coding_equals_coding_at_once(rng, monkeypatch):
    atoms = unit_rows(rng.standard_normal((40, 12)))
    y = rng.standard_normal((250, 12))
    gram = atoms @ atoms.T
    whole = coding.code_block(y, atoms, gram, 4, 0.0, "omp")
    monkeypatch.setattr(coding, "CODE_ROWS", 64)
    parts = coding.code_block(y, atoms, gram, 4, 0.0, "omp")
    np.testing.assert_array_equal(whole[0], parts[0])
    np.testing.assert_allclose(whole[1], parts[1], atol=1e-12)


def test_replacement_candidates_are_capped():
    from daskdict.learn.updates import MIN_CANDIDATES, n_candidates

    assert n_candidates(50) == 50
    assert n_candidates(3072) == 384
    assert n_candidates(1000) == MIN_CANDIDATES


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_planted_noise_has_the_requested_snr(snr_db):
    noisy = make_planted(500, 20, 50, 3, snr_db, random_state=1, dtype=np.float64)
    clean = make_planted(500, 20, 50, 3, None, random_state=1, dtype=np.float64)
    noise = noisy.data - clean.data
    measured = 20 * np.log10(np.linalg.norm(clean.data) / np.linalg.norm(noise))
    assert measured == pytest.approx(snr_db, abs=1e-6)


def test_shares_are_fixed_for_the_fit_and_its_resumption(tmp_path):
    """A fit resumed on one thread cuts the rows as the first run on every core did (the
    count of shares is in the checkpoint) and sums each share's blocks in the same order:
    identical atoms."""
    from daskdict.datasets.planted import write_planted_store

    path = tmp_path / "planted.zarr"
    write_planted_store(path, 4000, 24, 48, 3, random_state=0, chunk_rows=500)
    kw = dict(n_atoms=48, n_nonzero=3, random_state=0, verbose=False)
    whole = daskdict.fit(path, n_iter=4, client="threads", **kw)
    ck = tmp_path / "ck.zarr"
    daskdict.fit(path, n_iter=2, client="threads", checkpoint=ck, **kw)
    state = checkpoints.load_checkpoint(ck)
    assert state["n_shares"] == 1  # one process
    resumed = daskdict.fit(path, n_iter=4, client="sync", checkpoint=ck, **kw)  # one thread
    np.testing.assert_array_equal(resumed.atoms, whole.atoms)
    # resume=False starts over (and overwrites the checkpoint)
    fresh = daskdict.fit(path, n_iter=1, client="sync", checkpoint=ck, resume=False, **kw)
    assert len(fresh.history) == 1 and len(checkpoints.load_checkpoint(ck)["history"]) == 1


def test_blocks_are_aligned_for_the_kernels(rng):
    """Arrays unpickled on a worker can start at an odd address; the kernels get an aligned
    copy with the same values, and the codes do not depend on where the input sat."""
    atoms = rng.standard_normal((40, 16)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    y = rng.standard_normal((30, 16)).astype(np.float32)
    raw = bytearray(atoms.nbytes + 1)
    odd = np.frombuffer(raw, dtype=np.uint8)[1:].view(np.float32).reshape(atoms.shape)
    odd[...] = atoms
    assert not odd.flags.aligned
    fixed = coding.as_block(odd)
    assert fixed.flags.aligned and fixed.flags.c_contiguous
    np.testing.assert_array_equal(fixed, atoms)
    gram = coding.gram_matrix(atoms)
    expected = coding.code_block(y, atoms, gram, 3, 0.0, "omp")
    got = coding.code_block(y, odd, gram, 3, 0.0, "omp")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_threads_in_one_process_share_one_gram_matrix(rng):
    """Threads of one process get the same atoms object per iteration: one Gram matrix is
    made for all of them; a new dictionary gets its own, and the end of a fit frees it."""
    atoms = rng.standard_normal((20, 8)).astype(np.float32)
    first = shares.process_gram(atoms)
    np.testing.assert_allclose(first, atoms @ atoms.T, rtol=1e-6)
    assert shares.process_gram(atoms) is first
    other = atoms * 2
    assert shares.process_gram(other) is not first
    np.testing.assert_allclose(shares.process_gram(other), other @ other.T, rtol=1e-6)
    shares._SHARES["left-by-an-error"] = None
    shares.forget_worker_state(Runtime(scheduler="sync"))
    assert shares._GRAM_CACHE == [None, None] and shares._SHARES == {}


def test_threads_make_one_gram_matrix_together(rng, monkeypatch):
    """Threads arriving together share the row blocks out and all get the matrix that
    gram_matrix makes alone, bit for bit; a failed block fails every thread, and the next
    call makes the matrix again."""
    monkeypatch.setattr(coding, "GRAM_ROWS", 256)
    atoms = rng.standard_normal((600, 24)).astype(np.float32)  # 2 full blocks and a part
    expected = coding.gram_matrix(atoms)
    np.testing.assert_allclose(expected, atoms @ atoms.T, rtol=1e-5, atol=1e-5)
    made = []
    real_block = coding.gram_block

    def slow_block(atoms, gram, start):
        made.append((threading.get_ident(), start))
        time.sleep(0.05)  # every thread arrives before the blocks run out
        real_block(atoms, gram, start)

    monkeypatch.setattr(coding, "gram_block", slow_block)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        grams = list(pool.map(lambda _: shares.process_gram(atoms), range(3)))
    assert all(gram is grams[0] for gram in grams)
    np.testing.assert_array_equal(grams[0], expected)
    assert sorted(start for _, start in made) == [0, 256, 512]
    assert len({thread for thread, _ in made}) > 1

    def failing_block(atoms, gram, start):
        raise MemoryError("no room")

    monkeypatch.setattr(coding, "gram_block", failing_block)
    other = atoms * 2
    with pytest.raises(MemoryError):
        shares.process_gram(other)
    monkeypatch.setattr(coding, "gram_block", real_block)
    np.testing.assert_array_equal(shares.process_gram(other), coding.gram_matrix(other))
    shares.clear_worker_state()


def test_statistics_merge_by_a_fixed_tree(rng):
    """Shares' statistics are merged by a tree of tasks, 8 at a time: the sums of 20 shares
    (three merges, then the root) equal one merge of all of them, the worst rows are the worst
    of all, and the same tree gives the same bits every time."""
    def part(n_worst=5):
        err = np.sort(rng.random(n_worst))[::-1]
        return {"restricted": rng.standard_normal((6, 4)), "coef_sq": rng.random(6),
                "usage": rng.integers(0, 9, 6), "sums": rng.random(5), "row_sum": rng.random(4),
                "worst_err": err, "worst_rows": rng.standard_normal((n_worst, 4))}

    parts = [part() for _ in range(20)]
    tree = shares.tree_reduce([dask.delayed(p) for p in parts], 5)
    (merged,) = dask.compute(tree, scheduler="sync")
    flat = shares.merge_statistics(parts, 5)
    for key in ("restricted", "coef_sq", "sums", "row_sum"):
        np.testing.assert_allclose(merged[key], flat[key], rtol=1e-12)
    np.testing.assert_array_equal(merged["usage"], flat["usage"])
    np.testing.assert_array_equal(merged["worst_err"], flat["worst_err"])
    np.testing.assert_array_equal(merged["worst_rows"], flat["worst_rows"])
    (again,) = dask.compute(shares.tree_reduce([dask.delayed(p) for p in parts], 5),
                            scheduler="threads")
    for key, value in merged.items():
        np.testing.assert_array_equal(again[key], value)
    # one share is merged once too (the driver always gets float64 sums)
    (single,) = dask.compute(shares.tree_reduce([dask.delayed(parts[0])], 5), scheduler="sync")
    np.testing.assert_array_equal(single["restricted"], parts[0]["restricted"])
    assert shares.share_total(None, parts[3], None) is parts[3]
    with pytest.raises(RuntimeError, match="no task"):
        shares.share_total(None, None)


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-5])
def test_mod_update_does_not_depend_on_the_scale_of_the_codes(rng, scale):
    """Half the atoms unused, codes scaled: the step is the least-squares one whatever the
    scale (the ridge follows the used atoms' coefficients, not the unused atoms' stand-ins)."""
    x = rng.standard_normal((400, 8)) * (rng.random((400, 8)) < 0.5) * scale
    x = np.hstack([x, np.zeros((400, 8))])  # atoms 8..15 unused
    atoms = unit_rows(rng.standard_normal((16, 6)))
    y = x @ atoms + 0.01 * scale * rng.standard_normal((400, 6))
    stats = {"code_gram": np.triu(x.T @ x), "restricted": x.T @ (y - x @ atoms)}
    new = updates.mod_update(atoms, stats)
    expected = np.linalg.lstsq(x[:, :8], y, rcond=None)[0]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(new[:8], expected, atol=1e-6)
    np.testing.assert_allclose(new[8:], atoms[8:])


def test_statistics_with_and_without_the_code_gram_are_not_added():
    planted = make_planted(300, 8, 16, 2, 20.0, random_state=0)
    y, atoms = np.asarray(planted.data, dtype=np.float32), planted.atoms.astype(np.float32)
    gram = coding.gram_matrix(atoms)
    with_gram = coding.block_statistics(y, atoms, gram, 2, 0.0, "omp", 4, keep_codes=True)
    without = coding.block_statistics(y, atoms, gram, 2, 0.0, "omp", 4)
    for first, second in ((with_gram, without), (without, with_gram)):
        with pytest.raises(ValueError, match="with and without the code Gram"):
            shares.merge_statistics([first, second], 4)
    total = shares.merge_statistics([with_gram, with_gram], 4)
    assert "codes" not in total
    np.testing.assert_allclose(np.diag(total["code_gram"]), total["coef_sq"], rtol=1e-6)
