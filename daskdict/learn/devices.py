"""Where a fit codes: the shape of the LocalCluster it starts, and a GPU per worker process.

``device="cpu"`` codes with the numba kernels, in one worker process with a thread per core.
``device="cuda"`` codes with :mod:`daskdict.learn.device_coder` (PyTorch), in one worker
process per GPU.
"""

from __future__ import annotations

from typing import Any

from daskdict.io.resources import n_cores
from daskdict.learn import device_coder


def cluster_shape(device: str) -> tuple[int, int]:
    """Worker processes and threads per worker of a LocalCluster started for a fit.

    One process with a thread per core: its threads share one Gram matrix in the CPU's cache
    and balance their share of the rows, which is faster than one single-threaded process per
    core. With ``device="cuda"``, one process per GPU (each codes its share on its own GPU,
    see :func:`pin_worker_device`), the cores shared out among them for the statistics.
    """
    if device != "cuda":
        return 1, n_cores()
    n_gpus = max(1, sum(name.startswith("cuda") for name in device_coder.available_devices()))
    return n_gpus, max(1, n_cores() // n_gpus)


def pin_worker_device(dask_worker: Any = None) -> str | None:
    """Make this Dask worker's current CUDA device the one its number names, modulo the GPUs
    it sees, so that ``"cuda"`` means a GPU of its own in a LocalCluster of one process per
    GPU; a worker named otherwise (a batch job's, which sees its own GPU) is left as it is.

    Returns the device chosen, or None. Run on every worker with ``client.run``.
    """
    name = getattr(dask_worker, "name", None)
    torch = device_coder.require_torch()
    if not isinstance(name, int) or not torch.cuda.is_available():
        return None
    index = name % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"
