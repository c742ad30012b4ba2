"""Arguments of daskdict.cluster, and what it says when dask-jobqueue is missing."""

import inspect
import os
import sys

import pytest

import daskdict
from daskdict.compute import local_cluster, runtime
from daskdict.errors import InvalidInputError


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"kind": "kubernetes"}, "kind"), ({"jobs": 0}, "jobs"), ({"jobs": "3"}, "jobs"),
    ({"cores": 0}, "cores"), ({"cores": 2.5}, "cores"),
])
def test_bad_arguments_are_refused_before_anything_starts(kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        daskdict.cluster(**kwargs)


def test_missing_jobqueue_names_the_public_function(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"daskdict\.cluster\('slurm'\) needs dask-jobqueue"):
        daskdict.cluster("slurm", jobs=1, cores=1)
    with pytest.raises(ValueError, match=r"daskdict\.cluster\('slurm', jobs=\.\.\.\)"):
        with runtime("slurm"):
            pass


def test_the_library_word_is_verbose():
    assert "verbose" in inspect.signature(local_cluster).parameters
    assert "quiet" not in inspect.signature(local_cluster).parameters


@pytest.mark.cluster
def test_a_local_cluster_leaves_this_processs_thread_settings(monkeypatch):
    """The nannies make their workers single-threaded through the environment; this process
    (and what it starts later: torch's thread pool, a subprocess) keeps its own settings."""
    from daskdict.compute.runtime import THREAD_VARIABLES

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with local_cluster(n_workers=1) as cluster:
        assert len(cluster.workers) == 1
        assert "OMP_NUM_THREADS" not in os.environ
        assert os.environ["MKL_NUM_THREADS"] == "3"
    assert set(THREAD_VARIABLES) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}
