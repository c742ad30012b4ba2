"""K-SVD out of core: each iteration is one Dask graph over the row chunks of the data.

One iteration (``update="mod"``, ``"approx"`` or ``"auto"``, the default) reads every chunk
once. Per block of rows, a task computes the correlations ``Y_b D^T`` (GEMM), codes the rows
(Batch-OMP or matching pursuit, numba; or the device coder on a GPU), and sums the restricted
residual products ``sum_i r_i x_ij`` of every atom, the squared coefficients, usage counts,
error sums and the worst-represented rows (and, for ``"mod"``, the code Gram matrix). Zarr and
NumPy data are cut into one equal share per worker process, whose threads code it together
(see :mod:`daskdict.learn.shares`); a dask array gets one task per chunk and a tree reduction.
The driver then updates all atoms at once (see :mod:`daskdict.learn.updates`).

``update="ksvd"`` is textbook K-SVD: it needs all rows of an atom's restricted residual at
once, so it holds all the data in one task (a NumPy array, or a store or dask array of one
chunk).
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from daskdict.compute.runtime import Runtime, runtime
from daskdict.errors import InvalidInputError
from daskdict.io.formats import check_output
from daskdict.io.reads import open_rows
from daskdict.learn import coding, shares
from daskdict.learn.centering import centered_rows
from daskdict.learn.checkpoints import (
    check_checkpoint_path,
    check_resumable,
    check_same_data,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from daskdict.learn.devices import cluster_shape, prepare_workers
from daskdict.learn.dictionary import Dictionary
from daskdict.learn.levels import (
    level_checkpoint,
    level_seed,
    residual_rows,
    split_levels,
    stack_levels,
)
from daskdict.learn.params import FitParams, base_seed, iteration_rng, validate_params
from daskdict.learn.updates import (
    POSITIVE_STEP,
    approx_update,
    exact_ksvd_block,
    initial_atoms,
    mod_update,
    n_candidates,
    replace_atoms,
    summary,
)
from daskdict.learn.validation_rows import (
    EarlyStopping,
    best_checkpoint_path,
    check_patience,
    load_best,
    open_validation,
    save_best,
    validation_error,
)

__all__ = ["base_seed", "fit", "initial_atoms"]


@dataclass
class _Fit:
    """What a fit knows once its inputs are checked: the data and where its results go."""

    data: Any
    reader: Any
    description: dict
    params: FitParams
    seed: int
    checkpoint: Path | None
    state: dict | None
    validation: Any = None
    validation_description: dict | None = None
    patience: int | None = None
    best_checkpoint: Path | None = None


# The docstring of fit (long: every parameter of a fit), kept out of its body.
_FIT_DOC = """Learn a K-SVD dictionary out of core.

    Parameters
    ----------
    source : str, path-like, zarr.Array, zarr.Group, dask array or ndarray
        Data of shape (n_samples, n_features): a path to a Zarr array, a path to an embedding
        store (see ``layer``), a Zarr array, a dask array chunked along rows, or a NumPy array.
        Rows of a store flagged in ``items/error`` (images ``embed`` could not read) are left
        out.
    n_atoms : int or sequence of int, optional
        Number of atoms; default ``4 * n_features`` (a 4x overcomplete dictionary). A
        sequence learns a dictionary with levels (with ``n_nonzero`` a sequence of the same
        length): the first level on the data, each next one on what the levels before it
        leave (see :mod:`daskdict.learn.levels`); ``n_atoms=[128, 512], n_nonzero=[1, 4]``
        gives each row one coarse concept and four finer ones.
    n_nonzero : int or sequence of int, default=10
        Maximum number of atoms per sample (per level).
    n_iter : int, default=10
        Number of K-SVD iterations.
    layer : str, optional
        Layer of an embedding store; default ``"final"`` (or the only layer).
    coder : {"omp", "mp"}, default="omp"
        Batch-OMP, or matching pursuit with a least-squares refit.
    tol : float, default=0.0
        Also stop coding a sample once its relative residual ``|y - xD| / |y|`` is at most
        ``tol``.
    update : {"auto", "mod", "approx", "ksvd"}, default="auto"
        ``"mod"``: the method of optimal directions, the least-squares dictionary for the
        iteration's codes, ``(X^T X)^{-1} X^T Y`` with rows normalised (one pass over the
        data; every task also sums the code Gram matrix ``X^T X``, n_atoms^2 float64).
        ``"approx"``: one power step per atom from the iteration's codes, all atoms at once,
        one pass over the data, no n_atoms^2 matrix. ``"auto"``: "mod" up to 4,096 atoms,
        "approx" beyond (``params["update_choice"]`` says which and why). ``"ksvd"``: exact
        leading singular pairs of the restricted residuals (textbook K-SVD); the data must be
        a NumPy array, or a store or dask array of one chunk.
    atom_batch_size : int, optional
        For ``update="ksvd"``: atoms updated together from the same state (default: all).
        ``1`` is the sequential textbook update.
    shuffle_atoms : bool, default=True
        For ``update="ksvd"``: visit atoms in a random order each iteration.
    replace_atoms : bool, default=True
        Replace unused and near-duplicate atoms by the worst-represented samples.
    init : {"data", "kmeans++", "random"} or ndarray of shape (n_atoms, n_features)
        Initial dictionary.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the computation and the atoms.
    positive : bool, default=False
        Non-negative codes (non-negative Batch-OMP with a non-negative least-squares refit on
        the support): each concept is one-sided, and ``encode`` codes the same way. Needs
        ``coder="omp"`` and an update other than "ksvd".
    center : bool, default=False
        Fit the rows minus their mean (one more pass over the data), kept in the dictionary
        (``mean``) so that ``encode`` codes ``y - mean`` and ``reconstruct`` adds it back. With
        levels, the first level is fitted on the centred rows. (Scaling rows to unit norm is
        not offered: it changes no code's atoms, since OMP's support is the same for ``c y``
        as for ``y``, only how much each row weighs in the fit.)
    device : {"cpu", "cuda", "cuda:N"}, default="cpu"
        Where rows are coded. "cpu": the numba coders. "cuda": Batch-OMP batched over the rows
        on a GPU through PyTorch (:mod:`daskdict.learn.device_coder`; the correlations in
        float32 with TF32 off, the same codes as the numba coders within float32 rounding,
        signed or ``positive``; coder "omp", dtype "float32", float32 correlations). A
        LocalCluster started by the fit has one worker process per GPU; on a cluster of your
        own, "cuda" is each worker's current device. Not part of a checkpoint's identity.
    validation : path, EmbeddingStore, zarr.Array, zarr.Group, dask array or ndarray, optional
        Held-out rows of shape (n_validation, n_features), never trained on, in any form
        ``source`` takes (a store is read at the same ``layer``); not the training source
        itself. After each iteration they are coded with the iteration's new atoms, as
        ``encode`` codes them (same coder, ``n_nonzero``, ``tol``, ``positive``; minus the
        mean of a centred fit), and ``||V - X D||_F / ||V||_F`` (of the centred rows for a
        centred fit, like the training error) is recorded as ``validation_error``: one task
        per chunk of the rows, one more (short) pass per iteration. With levels, each level
        codes what the levels before it leave of the rows. Without ``patience`` the
        dictionary keeps the last atoms (``params["best_iteration"]`` still names the
        iteration with the lowest validation error). Resuming a checkpoint assumes the same
        validation rows (they are not part of its identity).
    patience : int, optional
        Needs ``validation``. Stop once the validation error has not decreased by more than a
        relative 1e-4 for ``patience`` iterations in a row; the last record then holds
        ``stopped_early=True``, the dictionary keeps the atoms of the iteration with the
        lowest validation error, and its ``params["best_iteration"]`` names it. A fit that
        stopped is finished: resuming its checkpoint runs no more iterations (pass
        ``resume=False`` to start over). With levels, each level stops on its own.
    correlation_dtype : {"float32", "bfloat16", "auto"}, default="float32"
        Precision of the correlations ``Y_b D^T`` from which each code's atoms are chosen.
        "bfloat16" computes them from bfloat16 inputs with float32 sums, through PyTorch
        (needs torch, coder "omp", signed or positive, and dtype "float32"), on the matrix
        units of CPUs that have them (AMX, AVX512-BF16); the correlation of every chosen atom,
        and of every atom within the rounding's bound of the best, is then recomputed in
        float32, so each choice, the coefficients and the residual are float32's. "auto"
        picks "bfloat16" where torch is installed and the CPU reports amx_bf16 or
        avx512_bf16, "float32" elsewhere. The choice is made once per fit and recorded:
        ``params["correlation_dtype"]`` (what was used; ``encode`` uses it by default),
        ``params["correlations"]`` and each history record's ``correlations`` (why).
    random_state : int, Generator or None
        Makes the fit reproducible.
    client : distributed.Client, a Dask cluster, "local", "threads", "sync" or None
        Where to compute; None starts a LocalCluster (closed afterwards) except for NumPy input,
        which is computed in this process. For SLURM, PBS and other batch systems pass a
        cluster from :func:`daskdict.cluster`.
    checkpoint : str or path-like, optional
        Zarr group where the state is saved atomically after every iteration. If it already
        holds the state of the same fit, the fit resumes after its last finished iteration
        (e.g. after the batch job running the fit hit its walltime). With levels, level k's
        state goes to ``<checkpoint>.level<k>``. With ``patience``, the best atoms, when older
        than the last iteration's, are kept in ``<checkpoint>.best``.
    resume : bool, default=True
        Resume from ``checkpoint`` when it holds a finished iteration; False starts over and
        overwrites it.
    out : str or path-like, optional
        Where to save the dictionary (a Zarr group); checked before any work starts, and never
        the input.
    overwrite : bool, default=False
        Replace a dictionary saved at ``out``.
    verbose : bool, default=True
        Show a progress bar with the error (and the dashboard link of a started cluster).

    Returns
    -------
    Dictionary
        ``atoms`` of shape (n_atoms, n_features) with unit rows, ``history`` (one dict per
        iteration: relative error, FVU, mean per-sample relative residual, mean L0, dead atoms,
        replaced atoms, seconds; measured by the iteration's coding step; with levels, each
        level's, marked with its ``level``; with ``validation``, ``validation_error`` and
        ``validation_seconds``, of the atoms the iteration made) and ``params`` (with
        ``validation``: ``best_iteration``, ``patience`` and the rows' ``validation``).

    Raises
    ------
    InvalidInputError
        For bad parameters or data (NaN/inf rows, values too large for ``dtype``), validation
        rows of another width or that are the training source, ``patience`` without
        ``validation``.
    OutputNotWritableError
        If ``out`` or ``checkpoint`` is the input, holds something else, or cannot be written.
    CheckpointMismatchError
        If ``checkpoint`` holds the state of another fit.
    """


def fit(
    source: Any,
    n_atoms: int | None = None,
    n_nonzero: int = 10,
    n_iter: int = 10,
    *,
    layer: str | None = None,
    coder: str = "omp",
    tol: float = 0.0,
    update: str = "auto",
    atom_batch_size: int | None = None,
    shuffle_atoms: bool = True,
    replace_atoms: bool = True,
    init: str | np.ndarray = "data",
    dtype: str | np.dtype = "float32",
    positive: bool = False,
    center: bool = False,
    correlation_dtype: str = "float32",
    device: str = "cpu",
    validation: Any = None,
    patience: int | None = None,
    random_state: int | np.random.Generator | None = None,
    client: Any = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    verbose: bool = True,
) -> Dictionary:
    hyper = dict(n_iter=n_iter, coder=coder, tol=tol, update=update,
                 atom_batch_size=atom_batch_size, shuffle_atoms=shuffle_atoms,
                 replace_atoms=replace_atoms, init=init, dtype=dtype, positive=positive,
                 center=center, correlation_dtype=correlation_dtype, device=device)
    early = dict(validation=validation, patience=check_patience(patience, validation))
    levels = split_levels(n_atoms, n_nonzero)
    if levels is not None:
        return _fit_levels(source, layer, levels, hyper, random_state, client,
                           dict(checkpoint=checkpoint, resume=resume, out=out,
                                overwrite=overwrite), verbose, early)
    setup = _prepare(source, layer, dict(n_atoms=n_atoms, n_nonzero=n_nonzero, **hyper),
                     random_state, checkpoint, resume, out, overwrite, early)
    n_workers, n_threads = cluster_shape(setup.params.device, here=client is None or isinstance(
        client, str))
    with runtime(client, in_memory=setup.description["kind"] == "ndarray", verbose=verbose,
                 n_workers=n_workers, threads_per_worker=n_threads) as rt:
        try:
            prepare_workers(rt, setup.params.device)
            model = _run(setup, init, rt, verbose)
        finally:
            shares.forget_worker_state(rt)
    if out is not None:
        model.save(out, overwrite=overwrite)
    return model


fit.__doc__ = _FIT_DOC


def _fit_levels(source: Any, layer: str | None, levels: list[tuple[Any, Any]], hyper: dict,
                random_state: Any, client: Any, outputs: dict, verbose: bool,
                early: dict) -> Dictionary:
    """A dictionary with levels: every level's parameters and every output are checked
    first, then each level is fitted on what the levels before it leave (and validated on
    what they leave of the validation rows)."""
    data, description, reader = open_rows(source, layer, skip_flagged=True)
    held_out = None
    if early["validation"] is not None:
        held_out = open_validation(early["validation"], layer, source, description,
                                   data.shape[1])
    if not isinstance(hyper["init"], str):
        raise InvalidInputError("A dictionary with levels takes init by name ('data', "
                                "'kmeans++' or 'random'): each level starts from its own rows.")
    for n_atoms, n_nonzero in levels:
        validate_params(n_atoms=n_atoms, n_nonzero=n_nonzero, **hyper,
                        n_samples=data.shape[0], n_features=data.shape[1])
    checkpoints = [level_checkpoint(outputs["checkpoint"], level) for level in range(len(levels))]
    inputs, written = [source, description["path"]], list(checkpoints)
    if held_out is not None:
        inputs += [early["validation"], held_out[1]["path"]]
    if early["patience"] is not None:
        written += [best_checkpoint_path(path) for path in checkpoints]
    if outputs["out"] is not None:
        check_output(outputs["out"], "dictionary", inputs=[*inputs, *written],
                     overwrite=outputs["overwrite"])
    for path in written:
        if path is not None:
            check_checkpoint_path(path, [*inputs, outputs["out"]])
    seed = base_seed(random_state)
    models: list[Dictionary] = []
    for level, (n_atoms, n_nonzero) in enumerate(levels):
        rows = source if level == 0 else residual_rows(data, reader, models)
        validation = early["validation"]
        if held_out is not None and level > 0:
            validation = residual_rows(held_out[0], held_out[2], models)
        # the first level centres the rows; the next ones fit what it leaves of them
        level_hyper = {**hyper, "center": hyper["center"] and level == 0}
        models.append(fit(rows, n_atoms, n_nonzero, layer=layer if level == 0 else None,
                          **level_hyper, validation=validation, patience=early["patience"],
                          random_state=level_seed(seed, level), client=client,
                          checkpoint=checkpoints[level], resume=outputs["resume"],
                          verbose=verbose))
    model = stack_levels(models, seed)
    if outputs["out"] is not None:
        model.save(outputs["out"], overwrite=outputs["overwrite"])
    return model


def _prepare(source: Any, layer: str | None, hyper: dict, random_state: Any,
             checkpoint: Any, resume: bool, out: Any, overwrite: bool, early: dict) -> _Fit:
    """Open the data and check every parameter and output before any work starts."""
    data, description, reader = open_rows(source, layer, skip_flagged=True)
    n_samples, n_features = data.shape
    inputs = [source, description["path"]]
    validation = held_out = None
    if early["validation"] is not None:
        validation, held_out, _ = open_validation(early["validation"], layer, source,
                                                  description, n_features)
        inputs += [early["validation"], held_out["path"]]
    if hyper["n_atoms"] is None:
        hyper["n_atoms"] = 4 * n_features
    params = validate_params(**hyper, n_samples=n_samples, n_features=n_features)
    if params.update == "ksvd" and not isinstance(reader, np.ndarray) and data.numblocks[0] > 1:
        raise InvalidInputError(
            f"update='ksvd' (exact) needs all the data in one task: a NumPy array, or a store "
            f"or dask array of one chunk; this one has {data.numblocks[0]} chunks. Use "
            "update='approx' (one pass per iteration) or load the data into memory."
        )
    # only a fit that may stop early returns (and so keeps) atoms older than its last ones
    best_path = best_checkpoint_path(checkpoint) if early["patience"] is not None else None
    if out is not None:
        check_output(out, "dictionary", inputs=[*inputs, checkpoint, best_path],
                     overwrite=overwrite)
    checkpoint_path = None
    if checkpoint is not None:
        checkpoint_path = check_checkpoint_path(checkpoint, [*inputs, out])
        if best_path is not None:
            best_path = check_checkpoint_path(best_path, [*inputs, out])
    seed = base_seed(random_state)
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None and resume else None
    if state is not None:
        check_resumable(state, checkpoint_path, params.to_dict(), seed, random_state is not None)
        seed = int(state["seed"])
    return _Fit(data, reader, description, params, seed, checkpoint_path, state, validation,
                held_out, early["patience"], best_path)


def _run(setup: _Fit, init: Any, rt: Runtime, verbose: bool) -> Dictionary:
    """Validate the data, start (or resume) the fit and run its iterations."""
    data, params, state = setup.data, setup.params, setup.state
    n_rows, n_zero_rows, digest = _validate_data(data, rt, params.dtype)
    data_fingerprint = fingerprint(data, setup.description, digest)
    if setup.validation is not None:
        _validate_held_out(setup.validation, rt, params.dtype)
    mean, reader = None, setup.reader
    if params.center:
        data, reader, mean = centered_rows(data, reader, rt, params.dtype)
    if state is not None:
        check_same_data(state, setup.checkpoint, data_fingerprint)
        atoms, history = state["atoms"].astype(params.dtype), list(state["history"])
    else:
        atoms = initial_atoms(data, init, params.n_atoms, iteration_rng(setup.seed, 0),
                              params.dtype)
        history = []
    stopper = _resumed_stopper(setup, history, atoms, data_fingerprint)
    # The rows are cut into as many shares as the cluster has worker processes now, and kept
    # so for the whole fit (and its resumption): a worker lost or added later changes where
    # shares run, not how the statistics are summed, so the atoms stay the same.
    n_shares = int(state.get("n_shares", 0)) if state is not None else 0
    n_shares = n_shares or len(rt.workers())
    bar = _progress_bar(params.n_iter, len(history), verbose)
    try:
        # a fit that stopped early is finished: its checkpoint runs no more iterations
        last = len(history) if stopper.stopped else params.n_iter
        for iteration in range(len(history) + 1, last + 1):
            atoms, record = _iterate(data, reader, atoms, params, rt,
                                     iteration_rng(setup.seed, iteration), n_rows, n_zero_rows,
                                     data.shape[1], n_shares)
            record["iteration"] = iteration
            record["correlations"] = setup.params.correlations
            if setup.validation is not None:
                _validate_iteration(setup, stopper, atoms, mean, record, rt)
            history.append(record)
            if setup.checkpoint is not None:
                _save_states(setup, stopper, atoms, history, data_fingerprint, n_shares)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(record))
            if stopper.stopped:
                break
    finally:
        if bar is not None:
            bar.close()
    extra: dict[str, Any] = {}
    if setup.validation is not None or stopper.stopped:
        extra = {"patience": setup.patience, "best_iteration": stopper.best_iteration}
    if setup.validation is not None:
        extra["validation"] = {**setup.validation_description,
                               "n_samples": int(setup.validation.shape[0])}
    if (setup.patience is not None or stopper.stopped) and stopper.best_atoms is not None:
        atoms = stopper.best_atoms
    return Dictionary(atoms=atoms, params={**params.to_dict(), "random_state": setup.seed,
                                           **extra},
                      history=history, fingerprint=data_fingerprint, mean=mean)


def _validate_held_out(rows: Any, rt: Runtime, dtype: str) -> None:
    """The pass of :func:`_validate_data` over the validation rows, its errors naming them."""
    try:
        _validate_data(rows, rt, dtype)
    except InvalidInputError as exc:
        raise InvalidInputError(f"In the validation rows: {exc}") from None


def _resumed_stopper(setup: _Fit, history: list[dict], atoms: np.ndarray,
                     data_fingerprint: dict) -> EarlyStopping:
    """The early-stopping state after the iterations of ``history``, with the best atoms when
    the fit may return them (from the checkpoint's ``.best`` group when they are older than
    ``atoms``, the state after the last iteration)."""
    stopper = EarlyStopping(setup.patience, history)
    if stopper.best_iteration == 0 or not (setup.patience is not None or stopper.stopped):
        return stopper
    if stopper.best_iteration == len(history):
        stopper.best_atoms = atoms
    elif setup.checkpoint is not None:
        stopper.best_atoms = load_best(best_checkpoint_path(setup.checkpoint),
                                       stopper.best_iteration, stopper.best_error,
                                       setup.seed, data_fingerprint)
        stopper.saved_iteration = stopper.best_iteration
    return stopper


def _validate_iteration(setup: _Fit, stopper: EarlyStopping, atoms: np.ndarray,
                        mean: np.ndarray | None, record: dict, rt: Runtime) -> None:
    """Record the validation error of the iteration's new atoms; mark the record where the
    fit stops."""
    start = time.perf_counter()
    error = validation_error(setup.validation, atoms, mean, setup.params, rt)
    record.update(validation_error=error, validation_seconds=time.perf_counter() - start)
    if stopper.update(record["iteration"], error, atoms):
        stopper.stopped = True
        record["stopped_early"] = True


def _save_states(setup: _Fit, stopper: EarlyStopping, atoms: np.ndarray, history: list[dict],
                 data_fingerprint: dict, n_shares: int) -> None:
    """Checkpoint the state after an iteration. Best atoms older than the new ones are kept
    first, in their own group, so that the state never names best atoms not yet saved."""
    if (setup.best_checkpoint is not None and stopper.best_atoms is not None
            and stopper.best_iteration < len(history)
            and stopper.saved_iteration != stopper.best_iteration):
        save_best(setup.best_checkpoint, stopper.best_atoms, stopper.best_iteration,
                  stopper.best_error, setup.seed, data_fingerprint)
        stopper.saved_iteration = stopper.best_iteration
    save_checkpoint(setup.checkpoint, {
        "atoms": atoms, "history": history, "seed": setup.seed,
        "params": setup.params.to_dict(), "fingerprint": data_fingerprint,
        "n_shares": n_shares})


def _postfix(record: dict) -> dict:
    """What the progress bar shows of an iteration."""
    shown = {"rel_err": f"{record['relative_error']:.4f}"}
    if "validation_error" in record:
        shown["val_err"] = f"{record['validation_error']:.4f}"
    shown["dead"] = record["dead_atoms"]
    return shown


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    # tqdm.auto warns inside Jupyter when ipywidgets is missing; the text bar works everywhere
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, initial=initial, desc="K-SVD", unit="iter")


def _validate_data(data: Any, rt: Runtime, dtype: str) -> tuple[int, int, int]:
    """One pass before any work: NaN/inf rows, rows too large for ``dtype`` and unreadable
    chunks fail here, with names.

    Returns the number of rows, of all-zero rows, and a CRC32 of the content.
    """
    offsets = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]])
    limit = coding.sqnorm_limit(dtype, max(data.chunks[0]))
    reports = np.array(rt.compute(*[
        dask.delayed(coding.check_block)(chunk, int(offset), limit)
        for chunk, offset in zip(data.to_delayed().ravel(), offsets, strict=True)]))
    total = reports.sum(axis=0)
    for first in (3, 6):  # the first bad or huge row of all chunks
        found = reports[:, first][reports[:, first] >= 0]
        total[first] = found.min() if found.size else -1
    coding.raise_for_report(total, dtype)
    digest = zlib.crc32(reports[:, 4].tobytes())
    return int(total[0]), int(total[1]), digest


def _share_graph(data: Any, reader: Any, shared_atoms: Any, params: FitParams, rt: Runtime,
                 n_worst: int, n_shares: int) -> Any:
    """The delayed statistics of an iteration over Zarr or NumPy data: one equal share of the
    rows per worker process, one task per thread of its worker, merged by a fixed tree."""
    workers = rt.workers()
    token = uuid.uuid4().hex
    shared_reader = rt.share(reader) if isinstance(reader, np.ndarray) else reader
    totals = []
    for share, ranges in enumerate(shares.share_ranges(data.chunks[0], n_shares)):
        worker, n_threads = workers[share % len(workers)]
        # each share prefers its own worker, one task per thread; another worker takes them
        # if that one is lost (and codes the whole share there: the same sums)
        placement = {"workers": [worker], "allow_other_workers": True} if worker else {}
        with dask.annotate(**placement):
            totals.append(dask.delayed(shares.share_total)(*[dask.delayed(
                shares.share_statistics)(shared_reader, ranges, f"{token}-{share}",
                                         shared_atoms, params.n_nonzero, params.tol,
                                         params.coder_key, n_worst,
                                         code_gram=params.update == "mod")
                for _ in range(n_threads)]))
    return shares.tree_reduce(totals, n_worst)


def _iterate(data: Any, reader: Any, atoms: np.ndarray, params: FitParams, rt: Runtime,
             rng: np.random.Generator, n_rows: int, n_zero_rows: int, n_features: int,
             n_shares: int) -> tuple[np.ndarray, dict]:
    """One K-SVD iteration: a single graph over the data, then the atom update here.

    With a ``reader`` (Zarr or NumPy data) the rows are cut into ``n_shares`` equal shares
    (see :func:`_share_graph`); otherwise one task per chunk of the dask array, reduced by a
    tree.
    """
    start = time.perf_counter()
    dtype = np.dtype(params.dtype)
    atoms = np.ascontiguousarray(atoms, dtype=dtype)
    n_worst = n_candidates(params.n_atoms)
    shared_atoms = rt.share(atoms)
    shared_gram = dask.delayed(coding.gram_matrix)(shared_atoms)  # computed only where used
    if params.update == "ksvd":
        # all the data in one task: the array itself, or a store's or dask array's one chunk
        block = rt.share(reader) if isinstance(reader, np.ndarray) else (
            data.to_delayed().ravel()[0])
        order = rng.permutation(params.n_atoms) if params.shuffle_atoms else np.arange(
            params.n_atoms)
        task = dask.delayed(exact_ksvd_block, nout=2)(
            block, shared_atoms, shared_gram, params.n_nonzero, params.tol, params.coder_key,
            n_worst, order, params.atom_batch_size or params.n_atoms)
        stats, new_atoms = rt.compute(task)[0]
    else:
        if reader is not None:
            graph = _share_graph(data, reader, shared_atoms, params, rt, n_worst, n_shares)
        else:
            graph = shares.tree_reduce([dask.delayed(coding.block_statistics)(
                chunk, shared_atoms, shared_gram, params.n_nonzero, params.tol, params.coder_key,
                n_worst, keep_codes=params.update == "mod")
                for chunk in data.to_delayed().ravel()], n_worst)
        (stats,) = rt.compute(graph)
        if params.update == "mod":
            new_atoms = mod_update(atoms, stats)
        else:
            new_atoms = approx_update(atoms, stats, POSITIVE_STEP if params.positive else 1.0)
    record = summary(stats, n_rows, n_zero_rows, n_features)
    replaced = 0
    if params.replace_atoms:
        new_atoms, replaced = replace_atoms(new_atoms, stats)
    record.update(replaced_atoms=replaced, passes=1, seconds=time.perf_counter() - start)
    return new_atoms.astype(dtype), record
