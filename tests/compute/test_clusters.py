"""Arguments of daskdict.cluster, and what it says when dask-jobqueue is missing."""

import inspect
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
