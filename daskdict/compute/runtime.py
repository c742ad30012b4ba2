"""Where the Dask graphs run: an existing Client, a LocalCluster started on demand, or in process.

Three thread pools meet in daskdict (BLAS, numba, Dask). Each Dask worker runs one task per core
with single-threaded BLAS (distributed's nanny sets ``OMP_NUM_THREADS=1`` and friends before
starting a worker) and serial numba kernels; in-process runs limit BLAS to one thread while
several Dask threads compute: oversubscribed cores slow every pool down.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import dask
from threadpoolctl import ThreadpoolController

from daskdict.io.resources import n_cores

# Names of the schedulers that run in this process, without a cluster.
IN_PROCESS = ("threads", "sync")


_CONTROLLER: list[ThreadpoolController] = []


def blas_controller() -> ThreadpoolController:
    """This process's thread-pool controller, made once: finding the loaded libraries reads
    the process's memory map, which would cost each small iteration of a fit more than its
    own update."""
    if not _CONTROLLER:
        import scipy.linalg  # noqa: F401  (its own BLAS, loaded before the snapshot)

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc only; elsewhere a no-op).

    A long task allocates and frees a chunk's buffers over and over from worker threads, whose
    glibc arenas keep the freed pages: otherwise a worker's resident memory grows with the
    number of chunks it reads, i.e. with N.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class Runtime:
    """What a fit or encode computes with: a distributed Client, or an in-process scheduler.

    Use :func:`runtime` to make one; it closes any cluster it started.
    """

    def __init__(self, client: Any = None, scheduler: str | None = None):
        self.client = client
        self.scheduler = scheduler

    def share(self, value: Any) -> Any:
        """A large array as one graph key that many tasks depend on (sent once per worker).

        Not ``client.scatter``: scattered data is lost for good with the worker holding it,
        while a graph key is recomputed on another worker, so a killed worker costs a retry,
        not the fit.
        """
        return dask.delayed(value, pure=False)

    def compute(self, *values: Any) -> tuple:
        """Compute delayed values (one graph)."""
        if self.client is not None:
            with warnings.catch_warnings():
                # the dictionary travels in the graph on purpose (see ``share``)
                warnings.filterwarnings("ignore", message="Sending large graph")
                futures = self.client.compute(list(values))
            return tuple(self.client.gather(futures))
        # Single-threaded BLAS in every task, as in a cluster's workers: OpenBLAS's products
        # differ in the last bits between thread counts, and a fit resumed under another
        # scheduler must end with the same atoms. The threads scheduler runs one task per core.
        with blas_controller().limit(limits=1, user_api="blas"):
            if self.scheduler == "threads" and n_cores() > 1:
                return dask.compute(*values, scheduler="threads", num_workers=n_cores())
            return dask.compute(*values, scheduler="sync")

    def workers(self) -> list[tuple[str | None, int]]:
        """Each worker process: its address (None in process) and its number of threads."""
        if self.client is not None:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            return [(address, int(info.get("nthreads", 1)))
                    for address, info in sorted(workers.items())] or [(None, 1)]
        return [(None, n_cores() if self.scheduler == "threads" else 1)]

    def lanes(self) -> list[str | None]:
        """One entry per task slot (worker thread): its worker's address, or None in process
        (``daskdict.plan`` calibrates one task per slot)."""
        return [address for address, n_threads in self.workers() for _ in range(n_threads)]

    @property
    def n_workers(self) -> int:
        if self.client is not None:
            return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))
        return n_cores() if self.scheduler == "threads" else 1

    def describe(self) -> str:
        if self.client is not None:
            return f"Dask cluster, {self.n_workers} workers, dashboard {self.client.dashboard_link}"
        return f"in process ({self.scheduler} scheduler)"


# Variables by which the Dask nannies make their workers' libraries single-threaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def local_cluster(n_workers: int | None = None, memory_limit: str | int | None = "auto",
                  verbose: bool = False, threads_per_worker: int = 1):
    """A LocalCluster as daskdict uses it: by default one single-threaded worker process per
    core (``daskdict.fit`` asks for one process with a thread per core instead).

    Services bind to localhost only; the dashboard takes a free port. Unless ``verbose``, the
    workers log errors only (not their warnings). Their logs of daskdict's own errors are
    dropped when daskdict computes on the cluster (:mod:`daskdict.compute.logs`).
    """
    from distributed import LocalCluster

    # the nannies set OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's) in this process's environment
    # for the workers they spawn; left there, it would make whatever this process starts later
    # (torch's thread pool, a subprocess) single-threaded
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    try:
        return LocalCluster(n_workers=n_workers or n_cores(),
                            threads_per_worker=threads_per_worker, processes=True,
                            host="127.0.0.1", dashboard_address="127.0.0.1:0",
                            memory_limit=memory_limit,
                            silence_logs=logging.WARNING if verbose else logging.ERROR)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _is_cluster(value: Any) -> bool:
    """A Dask cluster object (LocalCluster, a dask-jobqueue cluster, ...), not a Client."""
    return hasattr(value, "scheduler_address") and not hasattr(value, "submit")


@contextlib.contextmanager
def runtime(client: Any = None, *, in_memory: bool = False, verbose: bool = True,
            n_workers: int | None = None, memory_limit: str | int | None = "auto",
            threads_per_worker: int = 1) -> Iterator[Runtime]:
    """Yield the :class:`Runtime` for ``client``.

    Parameters
    ----------
    client : distributed.Client, a Dask cluster, "local", "threads", "sync" or None
        ``None`` chooses: data already in this process's memory (a NumPy array) is computed in
        process with threads, since sending it to worker processes would only copy it; anything
        else gets a LocalCluster. ``"local"`` always starts a LocalCluster. A cluster object
        (e.g. from :func:`daskdict.cluster`) is connected to and left running.
    in_memory : bool
        Whether the data is a NumPy array in this process.
    verbose : bool
        Print the dashboard link of a started cluster.
    n_workers, memory_limit, threads_per_worker
        For a LocalCluster started here: one single-threaded worker per core by default.
    """
    if client is None:
        client = "threads" if in_memory else "local"
    started = None  # a cluster started here, closed here
    if isinstance(client, str):
        if client in IN_PROCESS:
            yield Runtime(scheduler=client)
            return
        if client != "local":
            raise ValueError(
                f"Expected client to be a distributed.Client, a Dask cluster, 'local', "
                f"'threads' or 'sync'. Got {client!r}. (For an HPC cluster, pass "
                f"daskdict.cluster({client!r}, jobs=...).)"
            )
        client = started = local_cluster(n_workers, memory_limit,
                                         threads_per_worker=threads_per_worker)
    if _is_cluster(client):
        from distributed import Client

        from daskdict.compute.logs import quiet_workers

        connected = Client(client)
        try:
            quiet_workers(connected)
            if verbose:
                workers = Runtime(client=connected).workers()
                print(f"daskdict: {type(client).__name__} with {len(workers)} worker(s), "
                      f"{sum(n for _, n in workers)} thread(s), dashboard "
                      f"{connected.dashboard_link}", file=sys.stderr)
            yield Runtime(client=connected)
        finally:
            connected.close()
            if started is not None:
                started.close()
        return
    from daskdict.compute.logs import quiet_workers

    quiet_workers(client)
    if verbose:
        print(f"daskdict: using {client.dashboard_link}", file=sys.stderr)
    yield Runtime(client=client)
