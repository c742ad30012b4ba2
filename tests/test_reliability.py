"""Reliability: checkpoints survive SIGKILL and interrupts, resumes agree with uninterrupted runs,
stale checkpoints are refused, and a fit survives the death of a Dask worker.

Data are small (a few thousand rows, d=16-32) so the file runs in well under a minute or two;
where a test must hit a running fit (kill, interrupt), it first checks that it did (a kill that
lands after the fit finished is a failed precondition, not a pass).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import checkpoint_history, wait_for

import daskdict
import daskdict.io.atomic as atomic_mod
import daskdict.learn.training as learn
from daskdict.compute.runtime import Runtime
from daskdict.datasets.planted import make_planted, write_planted_store
from daskdict.errors import CheckpointMismatchError
from daskdict.learn import checkpoints, coding

SCRIPT = Path(__file__).parent / "scripts" / "fit_checkpoint.py"
N_ATOMS, N_NONZERO = 32, 3


# --------------------------------------------------------------------------- helpers


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_script(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rel") / "planted.zarr"
    write_planted_store(path, 4000, 16, N_ATOMS, N_NONZERO, 20.0, random_state=0, chunk_rows=500)
    return path


def fit_store(store, n_iter, **kw):
    kw.setdefault("client", "threads")
    return daskdict.fit(store, n_atoms=N_ATOMS, n_nonzero=N_NONZERO, n_iter=n_iter,
                        random_state=0, verbose=False, **kw)


# --------------------------------------------------------------------------- 1. SIGKILL


def test_sigkill_then_resume_matches_uninterrupted_run(planted_store, tmp_path):
    """SIGKILL a checkpointed fit in a subprocess between iterations; rerunning the same command
    resumes after the last checkpointed iteration (which it does not recompute) and ends with
    the atoms of an uninterrupted run."""
    n_iter = 8
    reference = fit_store(planted_store, n_iter)

    ck = tmp_path / "run.zarr"
    common = [planted_store, "--checkpoint", ck, "--iters", n_iter, "--atoms", N_ATOMS,
              "--nonzero", N_NONZERO, "--seed", 0, "--client", "threads"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, common),
                             "--throttle", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ((h := checkpoint_history(ck)) is not None and len(h) >= 2)
                 or proc.poll() is not None, 90, "two checkpointed iterations")
        assert proc.poll() is None, (
            "precondition: the fit finished (or died) before it could be killed:\n"
            + proc.communicate()[1])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    saved = checkpoint_history(ck)
    assert saved is not None, "the checkpoint is unreadable after SIGKILL"
    done = len(saved)
    assert 2 <= done < n_iter, f"precondition: killed with {done} of {n_iter} iterations saved"
    assert [h["iteration"] for h in saved] == list(range(1, done + 1))

    atoms_out, report = tmp_path / "atoms.npy", tmp_path / "report.json"
    result = run_script(*common, "--atoms-out", atoms_out, "--report", report)
    assert result.returncode == 0, result.stderr
    rep = json.loads(report.read_text())

    # finished iterations were not redone: exactly the missing ones were computed, and the
    # records of the finished ones (timings included) are those of the killed run
    assert rep["computed_iterations"] == n_iter - done
    assert rep["history"][:done] == saved
    assert [h["iteration"] for h in rep["history"]] == list(range(1, n_iter + 1))
    atoms = np.load(atoms_out)
    assert atoms.shape == reference.atoms.shape
    assert np.abs(atoms - reference.atoms).max() < 1e-5
    # the checkpoint now holds the finished run
    assert len(checkpoint_history(ck)) == n_iter


def test_finished_checkpoint_is_returned_without_recomputing(planted_store, tmp_path,
                                                            monkeypatch):
    ck = tmp_path / "run.zarr"
    first = fit_store(planted_store, 3, checkpoint=ck)
    calls = []
    real = learn._iterate
    monkeypatch.setattr(learn, "_iterate", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = fit_store(planted_store, 3, checkpoint=ck)
    assert calls == []
    assert np.array_equal(again.atoms, first.atoms)
    assert again.history == first.history


# --------------------------------------------------------------------------- 2. mismatch


@pytest.fixture
def checkpointed(planted_store, tmp_path):
    ck = tmp_path / "run.zarr"
    fit_store(planted_store, 2, checkpoint=ck)
    return ck


@pytest.mark.parametrize("change", ["n_atoms", "n_nonzero", "coder", "dtype", "replace_atoms"])
def test_checkpoint_of_other_parameters_is_refused(planted_store, checkpointed, change):
    params = dict(n_atoms=N_ATOMS, n_nonzero=N_NONZERO, n_iter=2, random_state=0,
                  client="threads", verbose=False, checkpoint=checkpointed)
    params[change] = {"n_atoms": 40, "n_nonzero": 4, "coder": "mp", "dtype": "float64",
                      "replace_atoms": False}[change]
    before = tree_hashes(checkpointed)
    with pytest.raises(CheckpointMismatchError, match="another fit"):
        daskdict.fit(planted_store, **params)
    assert tree_hashes(checkpointed) == before


def test_checkpoint_of_other_data_is_refused(planted_store, checkpointed, tmp_path):
    before = tree_hashes(checkpointed)
    other = tmp_path / "other.zarr"  # other number of rows
    write_planted_store(other, 3000, 16, N_ATOMS, N_NONZERO, 20.0, random_state=1,
                        chunk_rows=500)
    with pytest.raises(CheckpointMismatchError, match="another fit"):
        fit_store(other, 2, checkpoint=checkpointed)
    assert tree_hashes(checkpointed) == before

    # another layer of the same shape in the same store
    two = tmp_path / "two.zarr"
    daskdict.create_store(two, {"a": make_planted(2000, 16, N_ATOMS, 3, random_state=0).data,
                                "b": make_planted(2000, 16, N_ATOMS, 3, random_state=1).data},
                          chunk_rows=500)
    ck = tmp_path / "layers.zarr"
    fit_store(two, 2, layer="a", checkpoint=ck)
    with pytest.raises(CheckpointMismatchError):
        fit_store(two, 2, layer="b", checkpoint=ck)

    # the same values with other chunks (the reduction order, hence the result, differs)
    values = np.asarray(zarr.open_array(planted_store / "layers" / "final", mode="r")[...])
    ck = tmp_path / "chunks.zarr"
    fit_store(da.from_array(values, chunks=(500, -1)), 2, checkpoint=ck)
    with pytest.raises(CheckpointMismatchError):
        fit_store(da.from_array(values, chunks=(1000, -1)), 2, checkpoint=ck)


@pytest.mark.parametrize("source", ["ndarray", "rewritten-store"])
def test_checkpoint_of_same_shape_other_content_is_refused(tmp_path, source):
    ck = tmp_path / "run.zarr"
    a = make_planted(2000, 16, N_ATOMS, N_NONZERO, random_state=0).data.astype(np.float32)
    b = make_planted(2000, 16, N_ATOMS, N_NONZERO, random_state=1).data.astype(np.float32)
    if source == "ndarray":
        first, second = a, b
    else:
        first = second = tmp_path / "store.zarr"
        daskdict.create_store(first, {"final": a}, chunk_rows=500)
    daskdict.fit(first, N_ATOMS, N_NONZERO, 2, random_state=0, client="sync", verbose=False,
                 checkpoint=ck)
    if source != "ndarray":
        daskdict.create_store(second, {"final": b}, chunk_rows=500, overwrite=True)
    with pytest.raises(CheckpointMismatchError):
        daskdict.fit(second, N_ATOMS, N_NONZERO, 2, random_state=0, client="sync",
                     verbose=False, checkpoint=ck)


def test_checkpoint_of_other_random_state_is_refused(planted_store, checkpointed):
    with pytest.raises(CheckpointMismatchError):
        daskdict.fit(planted_store, N_ATOMS, N_NONZERO, 2, random_state=1, client="threads",
                     verbose=False, checkpoint=checkpointed)


def test_checkpoint_with_random_state_none_resumes_with_its_seed(planted_store, tmp_path):
    """random_state=None on resume adopts the checkpoint's seed (documented design)."""
    ck = tmp_path / "run.zarr"
    first = daskdict.fit(planted_store, N_ATOMS, N_NONZERO, 2, client="threads",
                         verbose=False, checkpoint=ck)
    again = daskdict.fit(planted_store, N_ATOMS, N_NONZERO, 2, client="threads",
                         verbose=False, checkpoint=ck)
    assert again.params["random_state"] == first.params["random_state"]
    assert np.array_equal(again.atoms, first.atoms)


# --------------------------------------------------------------------------- 3. worker killed


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def worker_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "planted.zarr"
    write_planted_store(path, 6000, 32, 64, 4, 20.0, random_state=0, chunk_rows=500)
    return path


WORKER_FIT = dict(n_atoms=64, n_nonzero=4, n_iter=8, random_state=0, verbose=False)


@pytest.fixture(scope="module")
def worker_reference(cluster_client, worker_store):
    return daskdict.fit(worker_store, client=cluster_client, **WORKER_FIT)


def _fit_in_thread(store, client, **kw):
    box: dict = {}

    def target():
        try:
            box["model"] = daskdict.fit(store, client=client, **WORKER_FIT, **kw)
        except BaseException as exc:  # reported by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.cluster
def test_fit_survives_worker_killed_mid_iteration(cluster_client, worker_store,
                                                  worker_reference, tmp_path):
    """SIGKILL one of two workers while it runs a share (or chunk) task of iteration >= 3; the nanny
    restarts it, the lost tasks are recomputed and the fit ends with the undisturbed atoms."""
    client = cluster_client
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)
    ck = tmp_path / "progress.zarr"  # only used to see how far the fit is
    thread, box = _fit_in_thread(worker_store, client, checkpoint=ck)

    wait_for(lambda: ((h := checkpoint_history(ck)) is not None and len(h) >= 2)
             or not thread.is_alive(), 120, "two finished iterations")
    assert thread.is_alive(), f"precondition: the fit ended before the kill: {box}"

    def busy_worker():
        for address, keys in client.processing().items():
            busy = any(str(k).startswith(("share_statistics", "block_statistics"))
                       for k in keys)
            if address in pids and busy:
                return address
        return None

    victim = wait_for(busy_worker, 60, "a worker running a chunk task", interval=0.001)
    os.kill(pids[victim], signal.SIGKILL)
    at_kill = checkpoint_history(ck)
    alive_at_kill = thread.is_alive()
    thread.join(300)
    assert not thread.is_alive(), "the fit hung after a worker was killed"
    assert alive_at_kill and at_kill is not None and len(at_kill) < WORKER_FIT["n_iter"], (
        "precondition: the kill landed after the fit finished")
    assert "error" not in box, f"the fit failed after a worker was killed: {box.get('error')!r}"
    model = box["model"]
    assert len(model.history) == WORKER_FIT["n_iter"]
    assert np.abs(model.atoms - worker_reference.atoms).max() < 1e-5
    # the worker really died and was replaced by the nanny
    client.wait_for_workers(2, timeout=60)
    new_pids = client.run(os.getpid)
    assert pids[victim] not in new_pids.values()


@pytest.mark.cluster
def test_fit_survives_worker_killed_at_iteration_start(cluster_client, worker_store,
                                                        worker_reference, monkeypatch):
    """A worker dies at the start of iteration 2, as the driver ships the new dictionary."""
    client = cluster_client
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)
    killed = []
    real_share = Runtime.share

    def share(self, value):
        if len(killed) == 0 and share.calls == 1:  # call i ships the atoms of iteration i + 1
            killed.append(next(iter(pids.values())))
            os.kill(killed[0], signal.SIGKILL)
        share.calls += 1
        return real_share(self, value)

    share.calls = 0
    monkeypatch.setattr(Runtime, "share", share)
    try:
        model = daskdict.fit(worker_store, client=client, **WORKER_FIT)
    finally:
        client.wait_for_workers(2, timeout=60)
    assert killed, "precondition: no worker was killed"
    assert np.abs(model.atoms - worker_reference.atoms).max() < 1e-5


# --------------------------------------------------------------------------- 4. interrupts


def _assert_checkpoint_at(ck: Path, store, n_done: int):
    """The checkpoint is readable (zarr and load_checkpoint) and holds exactly ``n_done``
    iterations, with the atoms of an uninterrupted ``n_done``-iteration fit."""
    history = checkpoint_history(ck)
    assert history is not None
    assert [h["iteration"] for h in history] == list(range(1, n_done + 1))
    state = checkpoints.load_checkpoint(ck)
    assert state is not None and len(state["history"]) == n_done
    expected = fit_store(store, n_done).atoms
    assert np.abs(state["atoms"] - expected).max() < 1e-5
    leftovers = [p.name for p in ck.parent.iterdir() if p.name.startswith(f".{ck.name}")]
    assert leftovers == [], f"temporary checkpoint folders left behind: {leftovers}"


def test_keyboard_interrupt_between_iterations_keeps_last_checkpoint(planted_store, tmp_path,
                                                                     monkeypatch):
    ck = tmp_path / "run.zarr"
    real = learn._iterate
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(learn, "_iterate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_store(planted_store, 5, checkpoint=ck)
    monkeypatch.setattr(learn, "_iterate", real)
    _assert_checkpoint_at(ck, planted_store, 2)
    # and the same call resumes to the uninterrupted result
    resumed = fit_store(planted_store, 5, checkpoint=ck)
    assert np.abs(resumed.atoms - fit_store(planted_store, 5).atoms).max() < 1e-5


def test_exception_in_a_chunk_task_keeps_last_checkpoint(planted_store, tmp_path, monkeypatch):
    """A task failing mid-graph (third iteration, fifth chunk) propagates; state is intact."""
    ck = tmp_path / "run.zarr"
    real = coding.block_statistics
    lock = threading.Lock()
    calls = []

    def failing(*a, **k):
        with lock:
            calls.append(1)
            n = len(calls)
        if n == 2 * 8 + 5:  # 8 chunks per iteration
            raise RuntimeError("disk went away")
        return real(*a, **k)

    monkeypatch.setattr(coding, "block_statistics", failing)
    with pytest.raises(RuntimeError, match="disk went away"):
        fit_store(planted_store, 5, checkpoint=ck)
    monkeypatch.setattr(coding, "block_statistics", real)
    _assert_checkpoint_at(ck, planted_store, 2)


def test_interrupt_while_writing_checkpoint_keeps_previous_one(planted_store, tmp_path,
                                                               monkeypatch):
    """Interrupted after the new group is written but before it is swapped in."""
    ck = tmp_path / "run.zarr"
    real = atomic_mod.atomic_replace  # what atomic_group swaps the new group in with
    calls = []

    def interrupted(tmp, path):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(tmp, path)

    monkeypatch.setattr(atomic_mod, "atomic_replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_store(planted_store, 5, checkpoint=ck)
    monkeypatch.setattr(atomic_mod, "atomic_replace", real)
    _assert_checkpoint_at(ck, planted_store, 2)


def test_crash_between_the_two_renames_keeps_a_checkpoint(planted_store, tmp_path,
                                                           monkeypatch):
    ck = tmp_path / "run.zarr"
    real_replace = os.replace
    swaps = []

    def crashing_replace(src, dst):
        # the rename of a new group (a .run.zarr.tmp-* folder) into place; from the second
        # save on, the previous group was just renamed away (run.zarr -> .run.zarr.old-*)
        if Path(src).name.startswith(f".{ck.name}.tmp-") and Path(dst) == ck:
            swaps.append(src)
            if len(swaps) == 3:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        fit_store(planted_store, 4, checkpoint=ck)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(swaps) == 3, "precondition: the third swap was not reached"
    state = checkpoints.load_checkpoint(ck)
    assert state is not None, "no checkpoint at the path after a crash mid-swap"
    assert len(state["history"]) == 2


def test_sigint_to_cli_exits_130_and_keeps_checkpoint(planted_store, tmp_path):
    """Ctrl-C on ``daskdict fit --checkpoint``: exit code 130, one line, a readable checkpoint."""
    ck, out = tmp_path / "run.zarr", tmp_path / "dict.zarr"
    n_iter = 8
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(planted_store), "--cli", "--checkpoint", str(ck),
         "--out", str(out), "--iters", str(n_iter), "--atoms", str(N_ATOMS), "--nonzero",
         str(N_NONZERO), "--seed", "0", "--throttle", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ((h := checkpoint_history(ck)) is not None and len(h) >= 1)
                 or proc.poll() is not None, 90, "a checkpointed iteration")
        assert proc.poll() is None, "precondition: the fit ended before the interrupt"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip() == "daskdict fit: interrupted", err
    assert not out.exists()
    history = checkpoint_history(ck)
    assert history is not None and 1 <= len(history) < n_iter
    state = checkpoints.load_checkpoint(ck)
    assert [h["iteration"] for h in state["history"]] == list(range(1, len(history) + 1))
