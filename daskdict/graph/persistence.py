"""A concept graph on disk: the saved graph and the per-pair checkpoints of a fit.

Both are Zarr groups with a daskdict header (:mod:`daskdict.io.formats`): a saved graph is of
kind ``"concept graph"``; a checkpoint is a folder of ``pair-<layer>.zarr`` groups of kind
``"concept graph pair"``, each written atomically once its layer pair is fit, so that a new fit
resumes after the last one.

Graph layout: header (parameters, settings, seed, samples, concepts per layer), ``held_out``,
``layers/<l>/mean_active_value``, ``layers/<l>/input_scale`` and one ``pairs/<l>`` group (a
:class:`PairResult`) per layer with parents. The header's ``settings.input_encoding`` says what
the models saw of each layer (``"support"`` or ``"scaled magnitude"``); graphs of the first
layout have no ``input_encoding`` and no ``input_scale`` (see :func:`read_graph`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from daskdict.errors import CheckpointMismatchError, InvalidInputError
from daskdict.graph.fitting import PairResult, Settings
from daskdict.io.atomic import atomic_group, readable_path, recover_replaced
from daskdict.io.formats import (
    HEADER_KEY,
    check_folder,
    check_output,
    open_kind,
    write_header,
)

GRAPH_KIND = "concept graph"
PAIR_KIND = "concept graph pair"


# --------------------------------------------------------------------------- checkpoints


def pair_path(checkpoint: Path, layer: int) -> Path:
    """Where the checkpoint keeps the pair ``layer - 1 -> layer``."""
    return checkpoint / f"pair-{layer:03d}.zarr"


def open_checkpoint(checkpoint: str | os.PathLike, n_layers: int,
                    inputs: Iterable[Any] = ()) -> tuple[Path, dict[int, zarr.Group]]:
    """Check a checkpoint folder and every pair it will hold; the pairs already saved there.

    Runs before any work: the folder may not be a daskdict object itself, and every pair path
    must be free or hold a pair (which is resumed, never replaced by another kind).

    Parameters
    ----------
    checkpoint : str or path-like
        The checkpoint folder (created when the first pair is written).
    n_layers : int
        Layers of the graph; pairs 1 … n_layers - 1.
    inputs : iterable
        The fit's inputs (paths among them may not be inside the checkpoint).

    Returns
    -------
    checkpoint : Path
    saved : dict of int to zarr.Group
        The saved pairs by target layer, opened read-only.

    Raises
    ------
    OutputNotWritableError
        If the folder is another daskdict object, cannot be written, or a pair path holds
        something that is not a concept-graph pair.
    """
    checkpoint = check_folder(checkpoint, inputs, "the checkpoint")
    saved = {}
    for layer in range(1, n_layers):
        path = recover_replaced(pair_path(checkpoint, layer))
        # overwrite=True: a saved pair is resumed (and never replaced by another kind)
        check_output(path, PAIR_KIND, inputs=inputs, overwrite=True)
        if path.exists():
            saved[layer] = open_kind(path, PAIR_KIND)[0]
    return checkpoint, saved


def write_pair(path: Path, result: PairResult, fields: dict) -> None:
    """Write one fitted layer pair atomically, with ``fields`` in its header."""
    with atomic_group(path) as group:
        result.write(group)
        write_header(group, PAIR_KIND, **fields)


def check_saved_pair(group: zarr.Group, fields: dict, checkpoint: Path | None) -> None:
    """Refuse a saved pair of another fit (other parameters, samples, concepts or codes)."""
    saved = dict(group.attrs.get(HEADER_KEY, {}))
    for key, what in (("params", "parameters"), ("n_samples", "number of samples"),
                      ("n_concepts", "concepts per layer"), ("fingerprints", "codes")):
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(fields[key])):
            raise CheckpointMismatchError(
                f"The checkpoint {checkpoint} holds layer pair {fields['layer'] - 1} -> "
                f"{fields['layer']} of another fit (other {what}). Remove it or choose another "
                "path.")


def saved_seeds(saved: dict[int, zarr.Group]) -> set[int]:
    """The seeds of the saved pairs (one, for a checkpoint of a single fit)."""
    return {int(group.attrs[HEADER_KEY]["seed"]) for group in saved.values()}


# --------------------------------------------------------------------------- saved graphs


def jsonable_params(params: dict) -> dict:
    """Parameters for the header; a client or Generator is not kept (None on load)."""
    out = {}
    for key, value in params.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = None
    return out


def write_graph(path: str | os.PathLike, pairs: list[PairResult | None], *,
                held_out: np.ndarray, per_layer: dict[str, list[np.ndarray]], fields: dict,
                overwrite: bool = False) -> Path:
    """Write a fitted graph as a Zarr group, atomically (checked by the writer rule first).

    Parameters
    ----------
    path : str or path-like
    pairs : list of PairResult
        ``pairs[l]`` for l >= 1; ``pairs[0]`` is None.
    held_out : ndarray of int of shape (n_held_out,)
    per_layer : dict of str to list of ndarray of shape (n_concepts[l],)
        Per-layer vectors (``mean_active_value``, ``input_scale``), written as
        ``layers/<l>/<name>``.
    fields : dict
        Header fields (``params``, ``settings``, ``seed``, ``n_samples``, ``n_concepts``).
    overwrite : bool, default=False
        Replace an existing concept graph at ``path`` (never anything else).

    Returns
    -------
    Path
    """
    path = check_output(path, GRAPH_KIND, overwrite=overwrite)
    with atomic_group(path) as group:
        group.create_array("held_out", data=np.asarray(held_out, dtype=np.int64))
        for name, vectors in per_layer.items():
            for layer, values in enumerate(vectors):
                group.create_array(f"layers/{layer}/{name}", data=np.asarray(values))
        for layer, pair in enumerate(pairs[1:], start=1):
            pair.write(group.create_group(f"pairs/{layer}"))
        write_header(group, GRAPH_KIND, **fields)
    return path


def read_graph(path: str | os.PathLike) -> tuple[dict, dict]:
    """A saved graph's header and its arrays (read-only; nothing on disk changes).

    Returns
    -------
    meta : dict
        The header.
    arrays : dict
        ``pairs`` (list, None first), ``held_out``, ``per_layer`` (``mean_active`` and
        ``input_scale``, lists per layer) and ``settings`` (:class:`Settings`).

    Raises
    ------
    InvalidInputError
        For a graph of the first layout (no ``input_encoding`` in its settings) fit on the
        signed codes themselves: its models expect inputs that this daskdict no longer makes.
        Such a graph fit with ``binarize_inputs=True`` saw the support, as now, and is read.
    """
    group, meta = open_kind(readable_path(path), GRAPH_KIND)
    n_layers = len(meta["n_concepts"])
    settings = dict(meta["settings"])
    first_layout = "input_encoding" not in settings
    if first_layout:
        if not settings.get("binarize_inputs"):
            raise InvalidInputError(
                f"{str(path)!r} is a concept graph of the first layout (settings without "
                "'input_encoding', daskdict format 1), fit on signed codes: its models expect "
                "the raw codes, while this daskdict feeds each concept as |x| over its mean "
                "active |x|. Refit it (its parameters are in its header).")
        settings["input_encoding"] = "support"
    n_concepts = list(meta["n_concepts"])
    arrays = {
        "pairs": [None] + [PairResult.read(group[f"pairs/{layer}"])
                           for layer in range(1, n_layers)],
        "held_out": np.asarray(group["held_out"][...]),
        "per_layer": {
            "mean_active": [np.asarray(group[f"layers/{layer}/mean_active_value"][...])
                            for layer in range(n_layers)],
            # the support needs no scale: a binarised graph of the first layout has none
            "input_scale": [np.ones(n_concepts[layer]) if first_layout
                            else np.asarray(group[f"layers/{layer}/input_scale"][...])
                            for layer in range(n_layers)]},
        "settings": Settings(**settings),
    }
    return meta, arrays


def describe_graph(path: str | os.PathLike) -> dict:
    """A JSON-ready summary of a saved graph, from its header and array shapes."""
    group, meta = open_kind(readable_path(path), GRAPH_KIND)
    n_layers = len(meta["n_concepts"])
    return {"kind": GRAPH_KIND, "format": meta.get("format"), "version": meta.get("version"),
            "n_layers": n_layers, "n_concepts": list(meta["n_concepts"]),
            "n_samples": meta["n_samples"], "seed": meta["seed"], "params": meta["params"],
            "n_edges": [int(group[f"pairs/{layer}/parents"].shape[0])
                        for layer in range(1, n_layers)]}
