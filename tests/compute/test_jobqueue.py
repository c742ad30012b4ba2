"""Fits on a real SLURM through dask-jobqueue, whose workers are batch jobs.

Needs a SLURM controller that answers (``.ci/slurm-up`` starts a single-node one) and
dask-jobqueue. Where they are missing the tests skip with the reason, except in CI
(``CI=true``), where they fail: CI must run them.
"""

import os
import re
import shutil
import subprocess
import threading
import uuid

import numpy as np
import pytest
from conftest import checkpoint_history, wait_for

import daskdict
from daskdict.datasets.planted import write_planted_store
from daskdict.errors import InvalidInputError

pytestmark = [pytest.mark.slurm, pytest.mark.cluster]

FIT = dict(n_atoms=256, n_nonzero=6, n_iter=6, random_state=0, verbose=False)


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("squeue") is None:
        return "SLURM's commands (sinfo, squeue) are not installed"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if answer.returncode or not re.search(r"idle|mix|alloc", answer.stdout):
        return f"no SLURM node is up (sinfo: {answer.stdout.strip()} {answer.stderr.strip()})"
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "dask-jobqueue is not installed"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM tests (.ci/slurm-up starts SLURM): {problem}")
    if problem:
        pytest.skip(problem)


def _jobs(name: str) -> list[str]:
    """Ids of this test's jobs that SLURM lists as running."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("slurm") / "planted.zarr"
    write_planted_store(path, 30_000, 64, 256, 6, 20.0, random_state=0, chunk_rows=2500)
    return path


@pytest.fixture(scope="module")
def reference(store):
    """The same fit on a LocalCluster of 2 workers (the SLURM cluster has 2 as well)."""
    with daskdict.cluster("local", jobs=2) as local:
        return daskdict.fit(store, client=local, **FIT)


@pytest.fixture
def slurm_cluster(slurm, tmp_path):
    name = f"daskdict-test-{uuid.uuid4().hex[:8]}"
    # the workers run on this machine: connect them over the loopback interface
    hpc = daskdict.cluster("slurm", jobs=2, cores=1, memory="2GB", walltime="00:20:00",
                           interface="lo", job_name=name, wait=180,
                           log_directory=str(tmp_path / "slurm-logs"))
    try:
        yield hpc, name
    finally:
        hpc.close()


def test_job_script_has_daskdicts_thread_settings(slurm_cluster):
    hpc, name = slurm_cluster
    script = hpc.job_script()
    assert "export OMP_NUM_THREADS=1" in script and "export NUMBA_NUM_THREADS=1" in script
    assert re.search(r"--nthreads 1\b", script)  # one single-threaded worker per core
    assert f"-J {name}" in script


def test_fit_on_slurm_jobs_equals_a_local_fit(slurm_cluster, store, reference):
    hpc, name = slurm_cluster
    box: dict = {}
    thread = threading.Thread(
        target=lambda: box.update(model=daskdict.fit(store, client=hpc, **FIT)))
    thread.start()
    seen = wait_for(lambda: len(_jobs(name)) == 2 and _jobs(name), 60,
                    "squeue listing the 2 worker jobs")
    thread.join(300)
    assert not thread.is_alive() and "model" in box
    assert len(seen) == 2
    model = box["model"]
    assert len(model.history) == FIT["n_iter"]
    assert np.abs(model.atoms - reference.atoms).max() < 1e-5


def test_fit_survives_a_cancelled_worker_job(slurm_cluster, store, reference, tmp_path):
    """``scancel`` one of the two worker jobs mid-fit: the lost share runs again on the other
    worker, adapt() submits a replacement job, and the fit ends with the undisturbed atoms."""
    hpc, name = slurm_cluster
    ck = tmp_path / "progress.zarr"  # only used to see how far the fit is
    box: dict = {}

    def target():
        try:
            box["model"] = daskdict.fit(store, client=hpc, checkpoint=ck, **FIT)
        except BaseException as exc:  # reported below
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    wait_for(lambda: ((h := checkpoint_history(ck)) is not None and len(h) >= 2)
             or not thread.is_alive(), 180, "two finished iterations")
    assert thread.is_alive(), f"precondition: the fit ended before the cancel: {box}"
    victim = _jobs(name)[0]
    subprocess.run(["scancel", victim], check=True, timeout=30)
    at_cancel = checkpoint_history(ck)
    thread.join(300)
    assert not thread.is_alive(), "the fit hung after a worker job was cancelled"
    assert "error" not in box, f"the fit failed after a job was cancelled: {box['error']!r}"
    assert at_cancel is not None and len(at_cancel) < FIT["n_iter"]
    assert np.abs(box["model"].atoms - reference.atoms).max() < 1e-5
    # adapt() replaced the cancelled job
    replaced = wait_for(lambda: (jobs := _jobs(name)) and len(jobs) == 2 and jobs, 120,
                        "a replacement job")
    assert victim not in replaced


def test_bad_cluster_arguments():
    with pytest.raises(InvalidInputError, match="kind"):
        daskdict.cluster("kubernetes")
    with pytest.raises(InvalidInputError, match="jobs"):
        daskdict.cluster("local", jobs=0)


def test_cli_fit_on_slurm_from_jobqueue_config(slurm, store, reference, tmp_path, capsys):
    """``daskdict fit --cluster slurm --jobs 2``, configured as users do, by jobqueue.yaml."""
    import dask

    from daskdict import cli

    name = f"daskdict-test-{uuid.uuid4().hex[:8]}"
    settings = {"cores": 1, "memory": "2GB", "walltime": "00:20:00", "interface": "lo",
                "job-name": name, "log-directory": str(tmp_path / "slurm-logs")}
    config = {f"jobqueue.slurm.{key}": value for key, value in settings.items()}
    out = tmp_path / "dictionary.zarr"
    with dask.config.set(config):
        code = cli.main(["fit", str(store), "--atoms", str(FIT["n_atoms"]), "--nonzero",
                         str(FIT["n_nonzero"]), "--iters", str(FIT["n_iter"]), "--seed", "0",
                         "--cluster", "slurm", "--jobs", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert np.abs(daskdict.load(out).atoms - reference.atoms).max() < 1e-5
    # the cluster was closed with the fit: its jobs are gone
    wait_for(lambda: not _jobs(name), 60, "the worker jobs to end")
