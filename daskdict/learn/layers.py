"""One dictionary per layer of an embedding store, and each layer's codes over it.

What a concept graph between layers is fit on: :func:`fit_layers` learns and encodes every
``hidden_*`` layer with one cluster for all of them, resumably when given an output folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daskdict.compute.runtime import runtime
from daskdict.errors import InvalidInputError
from daskdict.io.formats import check_folder, check_output
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.learn.training import fit
from daskdict.validation import check_positive_int

# fit_layers passes these to fit itself
_RESERVED = ("layer", "checkpoint", "client")


def _opened(store: Any) -> EmbeddingStore:
    if isinstance(store, str | os.PathLike):
        return open_store(store)
    if not isinstance(store, EmbeddingStore):
        raise InvalidInputError(
            f"Expected store to be a path to an embedding store or an EmbeddingStore. Got "
            f"{type(store).__name__}.")
    return store


def hidden_layers(store: Any) -> list[str]:
    """The ``hidden_*`` layer names of an embedding store (path or EmbeddingStore), sorted.

    Parameters
    ----------
    store : str, path-like or EmbeddingStore

    Returns
    -------
    list of str
        In layer order (``hidden_00``, ``hidden_01`` …); empty when there are none.
    """
    return sorted(name for name in _opened(store).layer_names if name.startswith("hidden_"))


def layer_outputs(directory: Path, name: str) -> dict[str, Path]:
    """The paths :func:`fit_layers` writes for layer ``name`` in ``directory``, by kind."""
    return {"dictionary": directory / f"{name}.dictionary.zarr",
            "codes": directory / f"{name}.codes.zarr",
            "checkpoint": directory / f"{name}.checkpoint.zarr"}


def check_out_dir(out_dir: str | os.PathLike, names: Sequence[str],
                  store_path: Path) -> Path:
    """The writer rule for :func:`fit_layers`' folder, before any work.

    The folder may not be a daskdict object, nor the store, nor inside it (or hold it); each
    layer's outputs may replace only outputs of the same kind (a rerun resumes there).
    """
    directory = check_folder(out_dir, [store_path], "the output folder")
    for name in names:
        outputs = layer_outputs(directory, name)
        for kind in ("dictionary", "codes"):  # fit checks its own checkpoint
            check_output(outputs[kind], kind, inputs=[store_path], overwrite=True)
    return directory


def fit_layers(store: Any, layers: Sequence[str] | None = None, n_atoms: int | None = None,
               n_nonzero: int = 10, n_iter: int = 10, *, out_dir: str | os.PathLike | None = None,
               client: Any = None, verbose: bool = True, **fit_kwargs: Any
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit one dictionary per layer of an embedding store and encode each layer with it.

    Parameters
    ----------
    store : str, path-like or EmbeddingStore
        An embedding store with layers ``hidden_00``, ``hidden_01`` ….
    layers : sequence of str, optional
        Layer names in layer order (default: the store's ``hidden_*`` layers, sorted).
    n_atoms, n_nonzero, n_iter
        As for :func:`daskdict.fit` (``n_atoms`` default: 4 x the layer's width).
    out_dir : str or path-like, optional
        Folder for ``<layer>.dictionary.zarr`` and ``<layer>.codes.zarr``, and for each fit's
        checkpoint (``<layer>.checkpoint.zarr``), so an interrupted call resumes (outputs of
        the same kind there are replaced, anything else is refused before any work). Without
        it everything stays in memory.
    client : distributed.Client, "local", "threads", "sync" or None
        Started once for all layers (None: a LocalCluster).
    verbose : bool, default=True
        Show each fit's progress bar (and the dashboard link of a started cluster).
    **fit_kwargs
        Passed to :func:`daskdict.fit` (``random_state``, ``coder``, ``tol`` …).

    Returns
    -------
    dictionaries : dict of str to Dictionary, in layer order
    codes : dict of str to Codes of shape (n_samples, n_atoms), in layer order
        ``list(codes.values())`` is what :meth:`daskdict.ConceptGraph.fit` takes.

    Raises
    ------
    InvalidInputError
        If the store has no such layers, or ``fit_kwargs`` holds what fit_layers sets itself.
    OutputNotWritableError
        If ``out_dir`` breaks the writer rule (see :func:`check_out_dir`).
    """
    for reserved in _RESERVED:
        if reserved in fit_kwargs:
            raise InvalidInputError(f"fit_layers sets {reserved!r} itself; do not pass it.")
    # the counts are checked before out_dir is made (fit checks the rest before any work)
    check_positive_int("n_atoms", n_atoms, optional=True)
    check_positive_int("n_nonzero", n_nonzero)
    check_positive_int("n_iter", n_iter)
    opened = _opened(store)
    names = hidden_layers(opened) if layers is None else list(layers)
    if not names:
        raise InvalidInputError(
            f"The store {opened.path} has no hidden_* layers (it has {opened.layer_names}); pass "
            "layers=[...].")
    for name in names:
        opened.layer_array(name)  # a missing layer is an error before any fit
    directory = (check_out_dir(out_dir, names, Path(opened.path)) if out_dir is not None
                 else None)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    dictionaries, codes = {}, {}
    with runtime(client, in_memory=False, verbose=verbose) as rt:
        where = rt.client if rt.client is not None else rt.scheduler
        for name in names:
            paths = layer_outputs(directory, name) if directory is not None else None
            model = fit(str(opened.path), n_atoms, n_nonzero, n_iter, layer=name,
                        checkpoint=paths and paths["checkpoint"], client=where,
                        verbose=verbose, **fit_kwargs)
            if paths is not None:
                # check_out_dir allowed only outputs of these kinds: a rerun replaces them
                model.save(paths["dictionary"], overwrite=True)
                codes[name] = model.encode(opened.path, layer=name, client=where,
                                           out=paths["codes"], overwrite=True)
            else:
                codes[name] = model.encode(opened.layer_array(name), client=where)
            dictionaries[name] = model
    return dictionaries, codes
