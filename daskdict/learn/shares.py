"""Shares: the rows one worker process codes in an iteration, and how their statistics merge.

Zarr and NumPy data are cut into one equal *share* per worker process (:func:`share_ranges`):
contiguous rows, read as *ranges* that each lie inside one stored chunk. The threads of a
worker code its share together, one *block* at a time (:func:`share_blocks`), sharing one Gram
matrix per process (:func:`process_gram`), so that the (n_atoms x n_features) sums leave each
worker once. The shares' statistics are then merged on the workers by a fixed tree
(:func:`tree_reduce`). Every sum is added in an order fixed by the data's chunks and the number
of shares alone, so the atoms do not depend on threads, timing or where tasks ran.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Any

import dask
import numpy as np

from daskdict.compute.runtime import Runtime, release_memory
from daskdict.learn import coding, kernels


def share_ranges(chunk_rows: tuple[int, ...], n_shares: int) -> list[list[tuple[int, int]]]:
    """Split the rows into ``n_shares`` contiguous shares of equal size, cut at chunk boundaries.

    Parameters
    ----------
    chunk_rows : tuple of int
        Rows of each stored chunk, in order.
    n_shares : int

    Returns
    -------
    list of list of (int, int)
        Per share, its *ranges*: the ``(start, stop)`` rows it reads, each inside one stored
        chunk (a chunk on a share boundary is read in part by both shares).
    """
    bounds = np.concatenate([[0], np.cumsum(chunk_rows)])
    n_rows = int(bounds[-1])
    shares = np.linspace(0, n_rows, min(n_shares, n_rows) + 1).round().astype(int)
    out = []
    for start, stop in itertools.pairwise(shares):
        inner = bounds[(bounds > start) & (bounds < stop)]
        cuts = [int(start), *map(int, inner), int(stop)]
        out.append(list(itertools.pairwise(cuts)))
    return out


# The threads of a worker take a share's blocks in turn: its ranges (up to a chunk each) and,
# towards its end, blocks that halve in size down to CODE_ROWS rows, so that the threads finish
# within about one small block of each other whatever their speeds (cores of a VM do not all
# run at the same speed). The cut depends only on the ranges, never on the number of threads.
# Each block's statistics (n_atoms x n_features) are made and summed on their own, a few ms a
# block: cutting the whole share into small blocks would cost more than it balances.
TAIL_BLOCKS = (1, 1, 2, 4, 8)  # in CODE_ROWS, from the share's end


def share_blocks(ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The blocks a share is coded in: ``(range index, start, stop)``, in row order.

    The ranges, cut where the last :data:`TAIL_BLOCKS` blocks (counted from the share's end)
    begin.
    """
    end = ranges[-1][1]
    cuts = end - coding.CODE_ROWS * np.cumsum(TAIL_BLOCKS)
    blocks = []
    for index, (start, stop) in enumerate(ranges):
        inner = sorted(int(c) for c in cuts if start < c < stop)
        blocks += [(index, a, b) for a, b in itertools.pairwise([start, *inner, stop])]
    return blocks


class SharedGram:
    """A Gram matrix made by the threads that need it, each taking the next row block of
    :func:`daskdict.learn.coding.gram_block`, as :func:`~daskdict.learn.coding.gram_matrix`
    makes it (the same bits): no thread makes it alone while the others wait."""

    def __init__(self, atoms: np.ndarray):
        self.atoms = coding.as_block(atoms)
        n_atoms = self.atoms.shape[0]
        self.gram = np.empty((n_atoms, n_atoms), dtype=self.atoms.dtype)
        self.starts = range(0, n_atoms, coding.GRAM_ROWS)
        self.next_start = self.n_done = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def _claim(self) -> int | None:
        with self.changed:
            if self.next_start == len(self.starts) or self.error is not None:
                return None
            self.next_start += 1
            return self.starts[self.next_start - 1]

    def make(self) -> np.ndarray:
        """Make row blocks until none is left; the matrix once every one is made."""
        while (start := self._claim()) is not None:
            try:
                coding.gram_block(self.atoms, self.gram, start)
            except BaseException as error:  # (MemoryError) the others must not wait forever
                with self.changed:
                    self.error = error
                    self.changed.notify_all()
                raise
            with self.changed:
                self.n_done += 1
                if self.n_done == len(self.starts):
                    self.changed.notify_all()
        with self.changed:
            self.changed.wait_for(
                lambda: self.n_done == len(self.starts) or self.error is not None)
            if self.error is not None:
                raise RuntimeError("another thread failed to make the Gram matrix") from self.error
        return self.gram


_GRAM_LOCK = threading.Lock()
_GRAM_CACHE: list = [None, None]  # [the atoms object, its SharedGram]


def process_gram(atoms: np.ndarray) -> np.ndarray:
    """The Gram matrix of ``atoms``, made once per process and dictionary.

    The tasks of one iteration that run in one process (threads of a worker, or of the
    in-process scheduler) receive the same atoms object; they make its Gram matrix together
    and share one copy in the CPU's cache instead of each making and streaming its own.
    """
    with _GRAM_LOCK:
        if _GRAM_CACHE[0] is not atoms or _GRAM_CACHE[1].error is not None:
            _GRAM_CACHE[:] = [None, None]  # free the last iteration's before making this one
            _GRAM_CACHE[:] = [atoms, SharedGram(atoms)]
        shared = _GRAM_CACHE[1]
    return shared.make()


class ShareWork:
    """The blocks of one share in one iteration, shared by the threads of a process coding it.

    Threads claim blocks in row order; each block's statistics are folded into the share's
    total in block order, whichever thread made them, so the sums (and the atoms) do not depend
    on how many threads took part or how fast each was. A range is read once, by the first
    thread that needs it, and dropped when its last block is claimed.
    """

    def __init__(self, reader: Any, ranges: list[tuple[int, int]],
                 blocks: list[tuple[int, int, int]]):
        self.reader, self.ranges, self.blocks = reader, ranges, blocks
        self.lock = threading.Lock()
        self.next_block = 0
        self.left = np.bincount([b[0] for b in blocks], minlength=len(ranges)).tolist()
        self.read: dict[int, list] = {}  # range index -> [lock, rows or None]
        self.waiting: dict[int, dict] = {}  # block index -> statistics not folded yet
        self.n_folded = 0
        self.total: dict | None = None

    def claim(self) -> tuple[int, np.ndarray] | None:
        """The next block: ``(block index, its rows)``, or None when all are taken."""
        with self.lock:
            if self.next_block == len(self.blocks):
                return None
            index = self.next_block
            self.next_block += 1
            which, start, stop = self.blocks[index]
            entry = self.read.setdefault(which, [threading.Lock(), None])
            self.left[which] -= 1
            if self.left[which] == 0:
                del self.read[which]  # the threads that use it hold it meanwhile
        with entry[0]:
            if entry[1] is None:
                begin, end = self.ranges[which]
                entry[1] = self.reader[begin:end]
        offset = self.ranges[which][0]
        return index, entry[1][start - offset:stop - offset]

    def fold(self, index: int, stats: dict, n_worst: int) -> dict | None:
        """Add a block's statistics in block order; the total once the last is in, else None."""
        with self.lock:
            self.waiting[index] = stats
            while self.n_folded in self.waiting:
                self.total = accumulate(self.total, self.waiting.pop(self.n_folded), n_worst)
                self.n_folded += 1
            if self.n_folded < len(self.blocks):
                return None
            total, self.total = self.total, None  # handed over once
            return total


_SHARES_LOCK = threading.Lock()
_SHARES: dict[str, ShareWork] = {}


def clear_worker_state() -> None:
    """Drop this process's Gram matrix and unfinished shares."""
    with _GRAM_LOCK:
        _GRAM_CACHE[:] = [None, None]
    with _SHARES_LOCK:
        _SHARES.clear()


def forget_worker_state(rt: Runtime) -> None:
    """Free the cached Gram matrices, here and in the workers, once a fit ends, and any share
    left unfinished by an error; a worker lost meanwhile has nothing to free."""
    clear_worker_state()
    if rt.client is not None:
        with contextlib.suppress(Exception):
            rt.client.run(clear_worker_state)


def share_statistics(reader: Any, ranges: list[tuple[int, int]], token: str,
                     atoms: np.ndarray, n_nonzero: int, tol: float, coder: str, n_worst: int,
                     timings: list | None = None, code_gram: bool = False) -> dict | None:
    """One of the tasks coding a share (the rows of ``ranges``) in one iteration.

    Every thread of the worker runs one such task per share; all tasks with the same ``token``
    in one process code the share together, each taking the next block until none is left.
    Returns the share's statistics from the task that folded the last block, None from the
    others (also from one that starts after the share is done: the finished share stays
    registered, without its sums, until the fit ends). A task that runs alone (elsewhere after
    its worker was lost, or under the sync scheduler) codes the whole share and returns the
    same total. ``timings``, a list, receives ``(rows, seconds)`` of each block this task
    coded (for :func:`daskdict.plan`). With ``code_gram``, the statistics hold the code Gram
    matrix too (see :func:`accumulate`).
    """
    with _SHARES_LOCK:
        work = _SHARES.get(token)
        if work is None:
            work = _SHARES[token] = ShareWork(reader, ranges, share_blocks(ranges))
    gram = process_gram(atoms)
    atoms = coding.as_block(atoms)
    buffer = coding.correlation_buffer(atoms, atoms.dtype)
    while (claimed := work.claim()) is not None:
        begin = time.perf_counter()
        index, rows = claimed
        stats = coding.block_statistics(rows, atoms, gram, n_nonzero, tol, coder, n_worst,
                                        buffer, keep_codes=code_gram)
        del rows
        total = work.fold(index, stats, n_worst)
        release_memory()
        if timings is not None:
            _, start, stop = work.blocks[index]
            timings.append((stop - start, time.perf_counter() - begin))
        if total is not None:
            return total
    return None


# Statistics added in float64 (the others are counts and the worst rows).
SUMMED = ("restricted", "coef_sq", "sums", "row_sum")
SUMMED_ALL = (*SUMMED, "code_gram")


def accumulate(total: dict | None, stats: dict, n_worst: int) -> dict:
    """Add one set of statistics to a running total (float64 sums, updated in place).

    A block's ``"codes"`` (see :func:`daskdict.learn.coding.block_statistics`) are added to
    the total's ``"code_gram"``, the upper triangle of ``X^T X`` of shape (n_atoms, n_atoms),
    float64; totals add their matrices. Sets with and without it cannot be added (a named
    error: they come from fits of different updates).
    """
    if total is not None and ("codes" in stats or "code_gram" in stats) != (
            "code_gram" in total):
        raise ValueError("Statistics with and without the code Gram matrix cannot be added: "
                         "they come from iterations of different updates.")
    codes = stats.get("codes")
    if total is None:  # a copy: the total is updated in place, its first addend must not be
        total = {key: np.array(value, dtype=np.float64) if key in SUMMED_ALL else value.copy()
                 for key, value in stats.items() if key != "codes"}
        if codes is not None:
            n_atoms = total["restricted"].shape[0]
            total["code_gram"] = np.zeros((n_atoms, n_atoms), dtype=np.float64)
            kernels.add_code_gram(total["code_gram"], *codes)
        return total
    for key in SUMMED:
        total[key] += stats[key]
    if codes is not None:
        kernels.add_code_gram(total["code_gram"], *codes)
    elif "code_gram" in total:
        total["code_gram"] += stats["code_gram"]
    total["usage"] += stats["usage"]
    err = np.concatenate([total["worst_err"], stats["worst_err"]])
    rows = np.concatenate([total["worst_rows"], stats["worst_rows"]])
    keep = np.argsort(-err, kind="stable")[:n_worst]
    total["worst_err"], total["worst_rows"] = err[keep], rows[keep]
    return total


def merge_statistics(sets: list[dict], n_worst: int) -> dict:
    """Several sets of statistics (of blocks or shares) added in order: float64 sums, and the
    worst rows of all (the earlier first among equal errors). One set is added at a time, so
    that no stacked copy of all of them is ever held."""
    total = None
    for stats in sets:
        total = accumulate(total, stats, n_worst)
    return total


# Sets of statistics merged per task of the reduction tree.
MERGE_EVERY = 8


def tree_reduce(sets: list, n_worst: int, split_every: int = MERGE_EVERY) -> Any:
    """Merge delayed statistics by a tree of tasks on the workers, in order, at least once:
    the driver receives one set, however many workers made them.

    The tree depends only on the number of sets, so its sums are the same every time.
    """
    while True:
        sets = [dask.delayed(merge_statistics)(sets[i:i + split_every], n_worst)
                for i in range(0, len(sets), split_every)]
        if len(sets) == 1:
            return sets[0]


def share_total(*results: dict | None) -> dict:
    """A share's statistics, from the results of its tasks (the one that folded the last
    block holds them; a share coded twice, elsewhere after a lost worker, has equal sums)."""
    for result in results:
        if result is not None:
            return result
    raise RuntimeError("no task of a share returned its statistics")
