"""Where a fit codes: the shape of the LocalCluster it starts, and a GPU per worker process.

``device="cpu"`` codes with the numba kernels, in one worker process with a thread per core.
``device="cuda"`` codes with :mod:`daskdict.learn.device_coder` (PyTorch), in one worker
process per GPU: each process is given its own GPU (:func:`pin_worker_device`), and
``"cuda"`` then means that GPU in every thread of the process (:func:`worker_device`; torch's
current device is per thread, so it cannot carry the choice).
"""

from __future__ import annotations

from typing import Any

from daskdict.compute.runtime import Runtime
from daskdict.errors import InvalidInputError
from daskdict.io.resources import n_cores
from daskdict.learn import device_coder

# This process's own GPU, once pinned (empty: "cuda" is torch's current device).
_WORKER_GPU: list[int] = []


def cluster_shape(device: str, here: bool = False) -> tuple[int, int]:
    """Worker processes and threads per worker of a LocalCluster started for a fit.

    One process with a thread per core: its threads share one Gram matrix in the CPU's cache
    and balance their share of the rows, which is faster than one single-threaded process per
    core. With ``device="cuda"``, one process per GPU, the cores shared out among them for the
    statistics. ``here``: the fit computes on this machine, whose GPUs are checked first
    (:func:`check_here`).
    """
    if here:
        check_here(device)
    if device != "cuda":
        return 1, n_cores()
    n_gpus = max(1, sum(name.startswith("cuda") for name in device_coder.available_devices()))
    return n_gpus, max(1, n_cores() // n_gpus)


def worker_device(device: str) -> str:
    """What ``device`` means in this process: ``"cuda"`` is its own GPU once pinned."""
    return f"cuda:{_WORKER_GPU[0]}" if device == "cuda" and _WORKER_GPU else device


def pin_worker_device(dask_worker: Any = None) -> str | None:
    """Give this Dask worker the GPU its number names, modulo the GPUs it sees (a LocalCluster
    of one process per GPU); a worker named otherwise (a batch job's, which sees its own GPU)
    keeps torch's current device.

    Returns the device chosen, or None. Run on every worker with ``client.run``.
    """
    name = getattr(dask_worker, "name", None)
    torch = device_coder.require_torch()
    if not isinstance(name, int) or not torch.cuda.is_available():
        return None
    _WORKER_GPU[:] = [name % torch.cuda.device_count()]
    return f"cuda:{_WORKER_GPU[0]}"


def device_problem(device: str) -> str | None:
    """Why this process cannot code on ``device``, or None when it can."""
    try:
        device_coder.resolve_device(device, device_coder.require_torch())
    except InvalidInputError as exc:
        return str(exc)
    return None


def check_here(device: str) -> None:
    """Refuse ``device`` where this process (and so a LocalCluster it starts) cannot use it."""
    if device != "cpu" and (problem := device_problem(device)) is not None:
        raise InvalidInputError(problem)


def prepare_workers(rt: Runtime, device: str) -> None:
    """Check that every worker can code on ``device`` (a named error for the first that
    cannot), then give each worker of a multi-GPU node its own GPU."""
    if device == "cpu" or rt.client is None:
        return
    problems = {address: problem for address, problem in
                rt.client.run(device_problem, device).items() if problem is not None}
    if problems:
        address, problem = sorted(problems.items())[0]
        raise InvalidInputError(f"The worker {address} cannot code on {device!r}: {problem}")
    if device == "cuda":
        rt.client.run(pin_worker_device)
