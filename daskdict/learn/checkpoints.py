"""Checkpoints of a fit: its state after each iteration, swapped in atomically.

A checkpoint is a Zarr group of kind ``"checkpoint"`` (see :mod:`daskdict.io.formats`): the
atoms as an array, and in its header the history, the fit's random seed, its parameters, the
fingerprint of its data and its number of shares.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.errors import CheckpointMismatchError
from daskdict.io.atomic import atomic_group, recover_replaced
from daskdict.io.formats import check_output, kind_of, open_kind, write_header

KIND = "checkpoint"


def fingerprint(data: Any, description: dict, content_crc32: int) -> dict:
    """What identifies a fit's data: shape, dtype, chunks, source and a CRC32 of the content."""
    return jsonable({"shape": list(data.shape), "dtype": str(data.dtype),
                     "chunks": [list(c) for c in data.chunks][:1], **description,
                     "content_crc32": int(content_crc32)})


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, …)."""
    return json.loads(json.dumps(value))


def check_checkpoint_path(path: str | os.PathLike, inputs: list) -> Path:
    """The checkpoint path, checked before any work: never an input, another kind, or a path
    that cannot be written (an earlier checkpoint may be replaced)."""
    return check_output(path, KIND, inputs=inputs, overwrite=True)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the state after an iteration as a new Zarr group, then swap it in atomically.

    ``state`` holds ``atoms`` (an array) and JSON-ready fields (``history``, ``seed``,
    ``params``, ``fingerprint``, ``n_shares``).
    """
    with atomic_group(path) as group:
        group.create_array("atoms", data=state["atoms"])
        write_header(group, KIND, **{k: v for k, v in state.items() if k != "atoms"})


def load_checkpoint(path: Path) -> dict | None:
    """The saved state, or None if there is no finished checkpoint at ``path``.

    A swap interrupted between its two renames is completed first (the fit owns the path).
    """
    recover_replaced(path)
    if kind_of(path) != KIND:
        return None
    group, meta = open_kind(path, KIND)
    state = {k: v for k, v in meta.items() if k not in ("format", "kind")}
    state["atoms"] = np.asarray(group["atoms"][...])
    return state


# Parameters that fits gained later, with the value a checkpoint written before them implies.
_IMPLIED_PARAMS = {"positive": False, "center": False, "correlation_dtype": "float32"}

# Parameters that describe a choice rather than make it (why the correlations have their
# precision: the torch version in it may change between a fit and its resumption), or that
# give the same codes within float32 rounding (the device: a fit started on a GPU node may
# go on on a CPU one).
_DESCRIPTIVE_PARAMS = ("n_iter", "correlations", "update_choice", "device")


def _auto(params: dict) -> bool:
    """Whether the fit asked for ``correlation_dtype="auto"`` (its reason says so)."""
    return "(auto" in str(params.get("correlations", ""))


def check_resumable(state: dict, path: Path, params: dict, seed: int,
                    seed_given: bool) -> None:
    """Refuse a checkpoint written by another fit (other parameters or random seed, or more
    iterations than asked for); ``n_iter`` may grow, so a finished fit can be continued."""
    ignored = _DESCRIPTIVE_PARAMS
    if _auto(state["params"]) and _auto(params):
        # "auto" may resolve otherwise on the node that resumes: both precisions give the
        # codes of float32 up to rounding, so the fit goes on with what this node has
        ignored = (*ignored, "correlation_dtype")
    saved = {k: v for k, v in {**_IMPLIED_PARAMS, **state["params"]}.items()
             if k not in ignored}
    wanted = {k: v for k, v in jsonable(params).items() if k not in ignored}
    problem = None
    if saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        problem = "other parameters (" + ", ".join(
            f"{k}={saved.get(k)!r} there, {wanted[k]!r} here" for k in changed) + ")"
        if "update" in changed and "update_choice" not in state["params"]:
            problem += (f"; it was written before update='auto' became the default: pass "
                        f"update={saved.get('update')!r} to continue it")
    elif seed_given and seed != int(state["seed"]):
        problem = f"random_state={state['seed']}, not {seed}"
    elif len(state["history"]) > params["n_iter"]:
        problem = f"{len(state['history'])} iterations, more than n_iter={params['n_iter']}"
    if problem:
        raise CheckpointMismatchError(
            f"The checkpoint {path} belongs to another fit: {problem}. Remove it or choose "
            "another path.")


def check_same_data(state: dict, path: Path, data_fingerprint: dict) -> None:
    """Refuse a checkpoint of a fit on other data."""
    if state["fingerprint"] != data_fingerprint:
        raise CheckpointMismatchError(
            f"The checkpoint {path} belongs to another fit: other data (shape, chunks, source "
            "or content differ). Remove it or choose another path.")
