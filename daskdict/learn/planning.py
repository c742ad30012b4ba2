"""How long a fit will take and how much memory its workers need, before spending an allocation.

A short calibration measures the costs of one K-SVD iteration where they will run, on every
worker thread of the cluster at once (so that the threads' contention for memory bandwidth is
in the figures), on ``calibration_rows`` rows of the user's data (or planted data of the same
width):

* ``t_gram``: the Gram matrix each worker process makes once per iteration (its threads share
  it);
* ``t_row``: coding and summarising one row (correlation GEMM, Batch-OMP, the statistics,
  for the method of optimal directions folding its code into the code Gram matrix, and
  reading it), from the blocks a calibration task codes after its first (whose caches are
  cold);
* ``t_gather``: receiving one share's statistics (n_atoms x n_features float64, and for the
  method of optimal directions the n_atoms x n_atoms float64 code Gram matrix) from another
  process;
* ``t_merge``: adding one share's statistics to a merge (timed here);
* ``t_driver``: the atom update the fit will use (:func:`~daskdict.learn.updates.mod_update`
  or :func:`~daskdict.learn.updates.approx_update`) and the replacements (timed here).

The update is resolved as a fit resolves it (:func:`daskdict.learn.params.resolve_update`):
``"auto"`` is the method of optimal directions up to
:data:`~daskdict.learn.params.MOD_MAX_ATOMS` atoms, whose code Gram matrix every share sums,
sends and merges beside the other statistics.

A fit cuts the rows into one share per worker process, which the worker's T threads code
together; the shares' statistics are merged on the workers by a tree of up to 8 at a time
(each merge receives all but one of its inputs from other workers), and the driver receives
the root. The model of one iteration over N rows on W workers is then the time of the slowest
share, the merges along the tree and the driver's work::

    t_iter = t_gram + ceil(N / (W T)) * t_row
             + sum over the tree's levels of ((m - 1) * t_gather + m * t_merge)
             + t_gather + t_driver

where m is the number of inputs per merge at that level (min(8, inputs left)): one level of W
inputs up to 8 workers, two up to 64, three up to 512.

Memory does not grow with N: a worker holds the dictionary, its Gram matrix, the statistics
(with the code Gram matrix for the method of optimal directions), one chunk and the coder's
buffers. The peak resident memory of the calibration tasks is measured, and an analytic
account of the large arrays is given next to it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import dask
import numpy as np

from daskdict.compute.runtime import Runtime, release_memory, runtime
from daskdict.datasets.planted import make_planted
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.formats import check_output
from daskdict.io.reads import open_rows
from daskdict.learn.coding import CODE_ROWS
from daskdict.learn.params import UPDATES, resolve_update
from daskdict.learn.shares import (
    MERGE_EVERY,
    forget_worker_state,
    merge_statistics,
    share_statistics,
)
from daskdict.learn.updates import approx_update, mod_update, n_candidates, replace_atoms
from daskdict.validation import check_choice, check_positive_int

KIND = "plan"
# The updates a plan models: those of one pass over the data (the exact K-SVD update holds all
# the rows in one task, which no share model describes).
PLAN_UPDATES = tuple(name for name in UPDATES if name != "ksvd")
# What a plan records: the update once "auto" is resolved.
RESOLVED_UPDATES = tuple(name for name in PLAN_UPDATES if name != "auto")
# What a plan saved before plans recorded their update modelled.
LEGACY_UPDATE = "approx"


@dataclasses.dataclass
class Plan:
    """A calibrated prediction of a fit's time per iteration and memory per worker.

    Attributes
    ----------
    n_samples, n_features, n_atoms, n_nonzero, n_workers, threads_per_worker, chunk_rows : int
        What was planned for.
    seconds_per_iteration : float
        Predicted wall time of one iteration.
    memory_per_worker_bytes : int
        Predicted peak resident memory of one worker process (measured in calibration).
    arrays_per_worker_bytes : dict of str to int
        The large arrays a worker holds (analytic), for reading the memory figure.
    calibration : dict
        The measured costs (seconds): ``t_gram``, ``t_row``, ``t_gather``,
        ``t_merge`` (merging one share's statistics) and ``t_driver`` (the driver's update),
        with ``rows``, ``threads`` (worker threads calibrated at once) and ``where``.
    update : {"mod", "approx"}
        The dictionary update modelled (``"auto"`` resolved as the fit resolves it); a plan
        saved before plans recorded it modelled ``"approx"``.
    """

    n_samples: int
    n_features: int
    n_atoms: int
    n_nonzero: int
    n_workers: int
    threads_per_worker: int
    chunk_rows: int
    seconds_per_iteration: float
    memory_per_worker_bytes: int
    arrays_per_worker_bytes: dict
    calibration: dict
    update: str = LEGACY_UPDATE

    def predict(self, n_samples: int | None = None, n_workers: int | None = None,
                threads_per_worker: int | None = None) -> float:
        """Seconds per iteration for another N or cluster size, from the same calibration."""
        cal = self.calibration
        n_samples = self.n_samples if n_samples is None else n_samples
        return model_seconds(cal, n_samples, self.n_workers if n_workers is None else n_workers,
                      self.threads_per_worker if threads_per_worker is None
                      else threads_per_worker)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the plan as a JSON file with a daskdict header (kind ``"plan"``).

        Parameters
        ----------
        path : path
        overwrite : bool, default=False
            Replace a plan saved at ``path`` (never anything else).
        """
        path = check_output(path, KIND, overwrite=overwrite, file=True)
        payload = {formats.HEADER_KEY: formats.header(KIND), **self.to_dict()}
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)  # a crash leaves the old plan or the new one
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan written by :meth:`save`."""
        meta = formats.read_header(path)
        if meta.get("kind") != KIND:
            raise InvalidInputError(
                f"Expected {str(path)!r} to hold a daskdict plan. Got {meta.get('kind')!r}.")
        formats.check_format(meta, path)
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = dataclasses.fields(cls)
        # fields with a default came after the first plans, which lack them
        missing = [field.name for field in fields
                   if field.name not in payload and field.default is dataclasses.MISSING]
        if missing:
            raise InvalidInputError(f"The plan {str(path)!r} lacks {', '.join(missing)}.")
        loaded = cls(**{field.name: payload[field.name] for field in fields
                        if field.name in payload})
        if loaded.update not in RESOLVED_UPDATES:
            raise InvalidInputError(
                f"The plan {str(path)!r} models the update {loaded.update!r}; expected one of "
                f"{list(RESOLVED_UPDATES)}.")
        return loaded

    def summary(self) -> str:
        hours = self.seconds_per_iteration / 3600
        return (f"N={self.n_samples:,} x d={self.n_features}, {self.n_atoms} atoms, "
                f"{self.n_nonzero} non-zeros, {self.update} update, on {self.n_workers} "
                f"worker(s) x {self.threads_per_worker} thread(s): "
                f"{self.seconds_per_iteration:,.1f} s per iteration ({hours:.2f} h), "
                f"{self.memory_per_worker_bytes / 2**30:.2f} GiB per worker")


def model_seconds(cal: dict, n_samples: int, n_workers: int, threads_per_worker: int) -> float:
    """Seconds of one iteration over ``n_samples`` rows from the calibration ``cal`` (the
    model of the module's docstring)."""
    merging, inputs = 0.0, n_workers
    while True:  # the levels of the merge tree (daskdict.learn.shares.tree_reduce)
        per_merge = min(inputs, MERGE_EVERY)
        merging += (per_merge - 1) * cal["t_gather"] + per_merge * cal["t_merge"]
        inputs = math.ceil(inputs / MERGE_EVERY)
        if inputs == 1:
            break
    return (cal["t_gram"] + math.ceil(n_samples / (n_workers * threads_per_worker))
            * cal["t_row"] + merging + cal["t_gather"] + cal["t_driver"])


def _calibrate_thread(reader: Any, ranges: list[tuple[int, int]], atoms: np.ndarray,
                      n_nonzero: int, start_at: float, code_gram: bool) -> dict:
    """One worker thread's timings (all threads' tasks start together at ``start_at``);
    with ``code_gram``, its blocks' codes are folded into the code Gram matrix, as a fit
    with the method of optimal directions folds them."""
    while time.time() < start_at:  # line the tasks up so that they contend as in a fit
        time.sleep(0.001)
    timings: list[tuple[int, float]] = []
    begin = time.perf_counter()
    # a share of its own (a token of its own): this thread codes all the rows
    stats = share_statistics(reader, ranges, uuid.uuid4().hex, atoms, n_nonzero, 0.0, "omp",
                             n_candidates(atoms.shape[0]), timings, code_gram=code_gram)
    t_task = time.perf_counter() - begin
    rows, seconds = np.array(timings).T
    # the Gram matrix, made (or waited for) before the blocks
    t_gram = t_task - float(seconds.sum())
    # per row, from the blocks after the first: the first runs with cold caches (the Gram
    # matrix was just made), which a fit's share pays once over many blocks
    steady = slice(1, None) if len(timings) > 1 else slice(None)
    t_row = float(seconds[steady].sum() / rows[steady].sum())
    release_memory()
    return {"t_gram": t_gram, "t_task": t_task, "t_row": t_row,
            "stats": stats,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _calibration_data(source: Any, layer: str | None, n_rows: int, n_features: int | None,
                      n_atoms: int, n_nonzero: int, random_state: int
                      ) -> tuple[Any, int, int, int | None]:
    """A reader of the rows to calibrate on, how many, their width and the stored chunk rows.

    A store's or Zarr array's own reader is used, so reading and decoding chunks is timed too.
    """
    if source is None:
        if n_features is None:
            raise InvalidInputError("Give a data source or n_features to calibrate on.")
        planted = make_planted(n_rows, n_features, n_atoms, n_nonzero, 20.0,
                               random_state=random_state, dtype=np.float32)
        return np.ascontiguousarray(planted.data), n_rows, n_features, None
    data, _, reader = open_rows(source, layer, skip_flagged=True)
    if n_features is not None and n_features != data.shape[1]:
        raise InvalidInputError(
            f"The source has {data.shape[1]} features; n_features={n_features} disagrees.")
    # whole stored chunks (a part of a chunk costs the whole chunk's read and decoding, which
    # would overstate the per-row cost), and at least two (see _calibrate_thread)
    chunk = int(data.chunks[0][0])
    take = min(max(-(-n_rows // chunk), 2) * chunk, data.shape[0])
    if reader is None or getattr(reader, "dtype", None) != np.float32:
        reader = np.ascontiguousarray(data[:take].compute(), dtype=np.float32)
    return reader, take, int(data.shape[1]), int(data.chunks[0][0])


def _calibrate(rt: Runtime, reader: Any, ranges: list[tuple[int, int]], atoms: np.ndarray,
               n_nonzero: int, code_gram: bool) -> tuple[list[dict], float, int]:
    """Every worker thread's timings, from a second round (the first loads the kernels and
    the data everywhere); the wall time of that round and the number of threads. The tasks
    return their statistics (with the code Gram matrix when ``code_gram``), whose transfer
    the round's wall time includes."""
    threads = rt.lanes()
    shared_reader = rt.share(reader) if isinstance(reader, np.ndarray) else reader

    def one_round():
        # a new dictionary object per round, as per iteration in a fit: the tasks of a round
        # on one worker share its Gram matrix, and no round reuses the last one's
        shared_atoms = rt.share(atoms.copy())
        start_at = time.time() + 1.0
        tasks = []
        for worker in threads:
            placement = {"workers": [worker], "allow_other_workers": False} if worker else {}
            with dask.annotate(**placement):
                tasks.append(dask.delayed(_calibrate_thread, pure=False)(
                    shared_reader, ranges, shared_atoms, n_nonzero, start_at, code_gram))
        begin = time.time()
        results = rt.compute(*tasks)
        return results, time.time() - max(begin, start_at)

    one_round()
    results, t_wall = one_round()
    forget_worker_state(rt)  # as a fit does: the workers keep no Gram matrix afterwards
    return list(results), t_wall, len(threads)


def plan(source: Any = None, *, n_samples: int, n_atoms: int = 3072, n_nonzero: int = 10,
         n_workers: int, threads_per_worker: int = 1, n_features: int | None = None,
         layer: str | None = None, chunk_rows: int | None = None,
         calibration_rows: int = 8192, update: str = "auto", client: Any = None,
         random_state: int = 0, verbose: bool = False) -> Plan:
    """Predict the time per iteration and memory per worker of a fit, from a calibration.

    Parameters
    ----------
    source : path, array or None
        Data to calibrate on (its first ``calibration_rows`` rows), as for :func:`daskdict.fit`;
        None: planted data of ``n_features`` columns.
    n_samples : int
        Rows of the planned fit.
    n_atoms, n_nonzero : int
        As for :func:`daskdict.fit`.
    n_workers, threads_per_worker : int
        The planned cluster: its worker processes and threads per worker.
    n_features : int, optional
        Width of the data (needed without ``source``).
    layer : str, optional
        Layer of a store ``source``.
    chunk_rows : int, optional
        Rows per stored chunk (default: the source's, or about 32 MB).
    calibration_rows : int, default=8192
        Rows each worker thread codes in calibration (for a stored source: rounded up to whole
        chunks, at least two).
    update : {"auto", "mod", "approx"}, default="auto"
        The fit's dictionary update, resolved as :func:`daskdict.fit` resolves it ("auto":
        "mod" up to 4,096 atoms, "approx" beyond) and recorded in the plan. For "mod" the
        calibration sums the code Gram matrix too, sends it with the statistics and times
        the driver's solve. "ksvd" (all the data in one task) is not modelled.
    client : distributed.Client, cluster, "local" or None
        Where to calibrate: on the planned kind of machine, ideally the planned cluster (None:
        a LocalCluster here). Every worker thread calibrates at once.
    random_state : int, default=0

    Returns
    -------
    Plan

    Raises
    ------
    InvalidInputError
        For a bad size or update, or ``n_nonzero`` above the data's width.
    """
    for name, value in (("n_samples", n_samples), ("n_atoms", n_atoms),
                        ("n_nonzero", n_nonzero), ("n_workers", n_workers),
                        ("threads_per_worker", threads_per_worker),
                        ("calibration_rows", calibration_rows)):
        check_positive_int(name, value)
    update = _check_update(update, n_atoms)
    reader, n_rows, n_features, stored_chunk_rows = _calibration_data(
        source, layer, calibration_rows, n_features, n_atoms, n_nonzero, random_state)
    if n_nonzero > n_features:
        raise InvalidInputError(f"n_nonzero={n_nonzero} exceeds the {n_features} features.")
    if chunk_rows is None:
        chunk_rows = stored_chunk_rows or max(1, (32 << 20) // (4 * n_features))
    # rows in memory are coded in 4 ranges at least, so that the steady per-row cost is seen
    step = stored_chunk_rows or max(1, min(chunk_rows, -(-n_rows // 4)))
    ranges = [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]
    rng = np.random.default_rng(random_state)
    atoms = rng.standard_normal((n_atoms, n_features)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    with runtime(client if client is not None else "local", verbose=verbose) as rt:
        results, t_wall, n_threads = _calibrate(rt, reader, ranges, atoms, n_nonzero,
                                                code_gram=update == "mod")
    return _make_plan(results, t_wall, n_threads, atoms, client, n_rows, chunk_rows, dict(
        n_samples=int(n_samples), n_features=int(n_features), n_atoms=int(n_atoms),
        n_nonzero=int(n_nonzero), n_workers=int(n_workers),
        threads_per_worker=int(threads_per_worker), chunk_rows=int(chunk_rows),
        update=update))


def _check_update(update: Any, n_atoms: int) -> str:
    """The update a fit with ``update`` and ``n_atoms`` atoms uses ("mod" or "approx")."""
    if update == "ksvd":
        raise InvalidInputError(
            "plan models the one-pass updates (auto, mod, approx); update='ksvd' codes all the "
            "data in one task, which no plan of shares describes. Plan with update='approx' "
            "or 'mod' instead.")
    check_choice("update", update, PLAN_UPDATES)
    return resolve_update(update, n_atoms)[0]


def _make_plan(results: list[dict], t_wall: float, n_threads: int, atoms: np.ndarray,
               client: Any, n_rows: int, chunk_rows: int, planned: dict) -> Plan:
    """The plan from the calibration tasks' timings."""
    t_gram = float(np.median([r["t_gram"] for r in results]))
    t_row = max(float(np.median([r["t_row"] for r in results])), 1e-12)
    # what the round took beyond its slowest task: shipping the statistics back
    t_gather = max(0.0, t_wall - max(r["t_task"] for r in results)) / n_threads
    t_driver, t_merge = _time_driver(atoms, results[0]["stats"], planned["update"])
    calibration = {"t_gram": t_gram, "t_row": t_row, "t_gather": t_gather,
                   "t_merge": t_merge, "t_driver": t_driver,
                   "rows": int(n_rows), "threads": n_threads, "where": _where(client)}
    threads = planned["threads_per_worker"]
    seconds = model_seconds(calibration, planned["n_samples"], planned["n_workers"], threads)
    arrays = _arrays_per_worker(planned["n_atoms"], planned["n_features"],
                                planned["n_nonzero"], chunk_rows, threads, planned["update"])
    peak = int(max(r["peak_rss"] for r in results))
    # the calibration tasks held calibration_rows rows; a fit holds chunk_rows per thread
    peak += max(0, chunk_rows - n_rows) * planned["n_features"] * 4 * 2 * threads
    return Plan(**planned, seconds_per_iteration=float(seconds),
                memory_per_worker_bytes=peak, arrays_per_worker_bytes=arrays,
                calibration=calibration)


def _where(client: Any) -> str:
    if client is None or client == "local":
        return "LocalCluster on this machine"
    return client if isinstance(client, str) else type(client).__name__


def _time_driver(atoms: np.ndarray, stats: dict, update: str,
                 repeats: int = 3) -> tuple[float, float]:
    """Seconds of the driver's update per iteration, and of merging one share's statistics.

    ``update`` "mod" solves with the merged code Gram matrix (``stats`` then holds one, of
    shape (n_atoms, n_atoms)), as the fit does; "approx" takes the power step.
    """
    n_worst = stats["worst_err"].size
    update_atoms = mod_update if update == "mod" else approx_update

    def once(n_shares):
        begin = time.perf_counter()
        merged = merge_statistics([stats] * n_shares, n_worst)
        new_atoms = update_atoms(atoms, merged)
        replace_atoms(new_atoms, merged)
        return time.perf_counter() - begin

    one = float(np.median([once(1) for _ in range(repeats)]))
    four = float(np.median([once(4) for _ in range(repeats)]))
    per_share = max(0.0, (four - one) / 3)
    return max(0.0, one - per_share), per_share


def _arrays_per_worker(n_atoms, n_features, n_nonzero, chunk_rows, threads, update) -> dict:
    """Bytes of the large arrays one worker holds during an iteration (float32 data)."""
    arrays = {
        "dictionary": n_atoms * n_features * 4 * 2,  # the shared key and its contiguous copy
        "gram": n_atoms * n_atoms * 4,  # one per worker process, shared by its threads
        "statistics": n_atoms * n_features * 8 * 2 * threads,  # running total + one chunk's
        "chunk": chunk_rows * n_features * 4 * 2 * threads,  # decoded + contiguous
        "correlations": CODE_ROWS * n_atoms * 4 * threads,
        "codes": chunk_rows * n_nonzero * 8 * threads,
    }
    if update == "mod":
        # float64 and dense (the upper triangle is summed, the whole matrix travels): the
        # share's running total and a merge input
        arrays["code_gram"] = n_atoms * n_atoms * 8 * 2
    return arrays


def describe_plan(path: Path) -> dict:
    """A summary of a saved plan."""
    saved = Plan.load(path)
    return {"kind": KIND, "summary": saved.summary(), **saved.to_dict()}


formats.register(KIND, Plan.load, describe_plan)
