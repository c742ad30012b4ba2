"""Clusters to fit on: a LocalCluster, or batch-system jobs through dask-jobqueue.

``daskdict.cluster("slurm", jobs=8)`` returns a dask-jobqueue cluster whose workers are batch
jobs; pass it as ``client=`` to :func:`daskdict.fit` (or ``daskdict fit --cluster slurm --jobs
8``). Everything not given here comes from dask's configuration (``~/.config/dask/
jobqueue.yaml``, section ``jobqueue.<kind>``), as with dask-jobqueue itself: queue, account,
memory, walltime, interface, job directives.

Two choices are daskdict's:

* one single-threaded worker process per core of a job (``processes = cores``): the numba
  kernels and BLAS run serially in each task, and Dask runs one task per core;
* the job script exports ``OMP_NUM_THREADS=1`` and the other thread-count variables before the
  workers start, as distributed's nanny does on a LocalCluster, so BLAS and numba do not
  oversubscribe the cores.

With ``jobs=`` the cluster keeps that many jobs (``adapt(minimum_jobs=jobs, maximum_jobs=jobs)``):
a job killed by the scheduler (walltime, preemption, ``scancel``) is replaced by a new one, and
the fit's task on the lost worker runs again elsewhere. A fit whose whole allocation ends
resumes from its ``checkpoint=`` when called again.
"""

from __future__ import annotations

import time
from typing import Any

from daskdict.compute.runtime import local_cluster
from daskdict.errors import InvalidInputError
from daskdict.io.resources import n_cores
from daskdict.validation import check_choice, check_positive_int

# daskdict name -> dask-jobqueue class
JOBQUEUE_KINDS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "oar": "OARCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
}
KINDS = ("local", *JOBQUEUE_KINDS)
# exported in every job script before the workers start
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")


def cluster(kind: str = "local", *, jobs: int | None = None, cores: int | None = None,
            memory: str | None = None, walltime: str | None = None, adapt: bool = True,
            wait: float | None = 600.0, **kwargs: Any):
    """Start a Dask cluster for :func:`daskdict.fit`.

    Parameters
    ----------
    kind : {"local", "slurm", "pbs", "sge", "lsf", "oar", "htcondor", "moab"}
        ``"local"``: a LocalCluster on this machine (one single-threaded worker per core).
        The others: a dask-jobqueue cluster (``pip install daskdict[jobqueue]``).
    jobs : int, optional
        Batch jobs to keep running (for ``"local"``: worker processes; default one per core).
        Without it a jobqueue cluster starts no job: call ``.scale()`` or ``.adapt()`` on it.
    cores, memory, walltime : optional
        Per job; default from ``jobqueue.yaml``. ``cores`` worker processes of one thread each
        run in a job.
    adapt : bool, default=True
        Keep ``jobs`` jobs alive, replacing killed ones; False submits them once (``scale``).
    wait : float or None, default=600
        Seconds to wait for the workers of all ``jobs`` to connect (queues can be slow); None
        returns at once. Jobs not started by then stay queued. A fit cuts the rows into as
        many shares as there are workers when it starts, so start it on a full cluster.
    **kwargs
        Passed to the dask-jobqueue class (``queue``, ``account``, ``interface``,
        ``job_extra_directives``, ``log_directory`` …) or to LocalCluster (``memory_limit``).

    Returns
    -------
    distributed.LocalCluster or dask_jobqueue.JobQueueCluster
        Close it (``cluster.close()``, or use it in a ``with`` block) when done.

    Examples
    --------
    >>> with daskdict.cluster("slurm", jobs=8, cores=16, memory="64GB",
    ...                       walltime="04:00:00") as hpc:
    ...     model = daskdict.fit("embeddings.zarr", n_atoms=3072, client=hpc,
    ...                          checkpoint="run.zarr")
    """
    check_choice("kind", kind, KINDS)
    jobs = check_positive_int("jobs", jobs, optional=True)
    cores = check_positive_int("cores", cores, optional=True)
    if kind == "local":
        started = local_cluster(jobs or n_cores(), kwargs.pop("memory_limit", "auto"))
        if kwargs:
            started.close()
            raise InvalidInputError(
                f"A local cluster takes jobs= and memory_limit=; got also {sorted(kwargs)}.")
        return started
    started, processes = _jobqueue_cluster(kind, cores, memory, walltime, kwargs)
    if jobs is not None:
        if adapt:
            started.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
        else:
            started.scale(jobs=jobs)
        if wait:
            _wait_for_workers(started, jobs * processes, wait)
    return started


def _jobqueue_cluster(kind: str, cores, memory, walltime, kwargs: dict) -> tuple[Any, int]:
    """The dask-jobqueue cluster, and the worker processes of each of its jobs."""
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ImportError(
            f"daskdict.cluster({kind!r}) needs dask-jobqueue: pip install 'daskdict[jobqueue]'"
        ) from exc
    import dask

    cls = getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])
    options = {key: value for key, value in
               {"cores": cores, "memory": memory, "walltime": walltime}.items()
               if value is not None}
    options.update(kwargs)
    cores = options.get("cores", dask.config.get(f"jobqueue.{kind}.cores", None))
    if cores is None:
        raise InvalidInputError(
            f"Say how many cores a {kind} job has: cores=... or jobqueue.{kind}.cores in "
            "jobqueue.yaml.")
    options.setdefault("processes", dask.config.get(f"jobqueue.{kind}.processes", None)
                       or int(cores))
    prologue = list(options.pop("job_script_prologue", None)
                    or dask.config.get(f"jobqueue.{kind}.job-script-prologue", None) or [])
    prologue += [f"export {name}=1" for name in THREAD_VARIABLES
                 if not any(line.startswith(f"export {name}=") for line in prologue)]
    return cls(job_script_prologue=prologue, **options), int(options["processes"])


def _wait_for_workers(started, n_workers: int, timeout: float) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(started) as client:
        while len(client.scheduler_info(n_workers=-1)["workers"]) < n_workers:
            if time.monotonic() > deadline:
                return  # the jobs stay queued; a fit waits for its tasks' workers
            time.sleep(0.5)
