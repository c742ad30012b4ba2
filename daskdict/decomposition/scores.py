"""Which model components encode which image features: the component scores.

Balasubramanian, Basu, Feizi (2024), "Decomposing and Interpreting Image Representations via
Text in ViTs Beyond CLIP", score a component ``i`` for a feature ``p`` (say "pattern",
described by the text embeddings ``B`` of its instantiations "striped", "spotted", …) by how
well the component's contribution follows the whole representation inside the feature's
subspace (their Alg. 2)::

    B   <- an orthonormal basis of the span of the instantiation embeddings   (r, D)
    s_Z <- Z B^T,   Z = sum_i f_i(c_i)                                          (n, r)
    s_C <- f_i(c_i) B^T                                                         (n, r)
    score[i, p] = mean_j corr(s_Z[:, j], s_C[:, j])

where ``f_i(c_i)`` are the contributions aligned to CLIP space (:class:`CompAlign`'s output).
One pass over row chunks of a Dask graph sums the moments of the projections (count, sums,
squares, cross products): the data never have to fit in memory.

:func:`proxy_scores` is the paper's check of the scores (its Tab. 2), judged by CLIP image
embeddings; :func:`ordering_agreement` compares the orderings that the two induce.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from scipy.stats import spearmanr

from daskdict.embedding.clip import CLIP
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import write_text
from daskdict.io.reads import default_chunk_rows, zarr_to_dask
from daskdict.validation import check_positive_int

__all__ = ["KIND", "ComponentScores", "check_arrays", "component_scores", "feature_vectors",
           "ordering_agreement", "orthonormal_basis", "proxy_scores"]

KIND = "component scores"
METHODS = ("projection", "clip proxy")
# a vector whose part outside the span of the earlier ones is shorter than this (relative to
# its norm) adds no direction: the instantiations are linearly dependent
RANK_TOLERANCE = 1e-6
# bytes of all the components' projections of one row chunk (what one task of the pass holds)
MOMENT_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- inputs


def check_arrays(arrays: Any, what: str, min_rows: int = 1) -> dict[str, Any]:
    """A mapping name -> 2-D array (NumPy or Dask), all of one shape, checked before any work.

    NumPy arrays are checked for NaN and infinite values here; Dask and Zarr arrays (which may
    not fit in memory; Zarr arrays become Dask arrays) where their values are first read.

    Parameters
    ----------
    arrays : mapping of str to array of shape (n, width), NumPy, Dask or Zarr
    what : str
        Names the mapping in errors (``"aligned"``, ``"contributions"``).
    min_rows : int, default=1

    Returns
    -------
    dict of str to ndarray or dask.array.Array, in the mapping's order
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise InvalidInputError(
            f"Expected {what} to be a non-empty mapping of component name -> array (n, width). "
            f"Got {type(arrays).__name__}" + (" (empty)." if isinstance(arrays, Mapping) else "."))
    out: dict[str, Any] = {}
    shape = None
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise InvalidInputError(f"Expected the names in {what} to be strings. Got {name!r}.")
        if isinstance(array, zarr.Array):  # a store's layer: read by row chunks, not at once
            array = zarr_to_dask(array)
        array = array if isinstance(array, da.Array) else np.asarray(array)
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise InvalidInputError(
                f"Expected {what}[{name!r}] to be a numeric 2-D array (n, width). Got "
                f"{array.dtype} of shape {array.shape}.")
        if shape is None:
            shape = array.shape
            if shape[0] < min_rows:
                raise InvalidInputError(f"Expected {what} to have at least {min_rows} rows "
                                        f"(correlations over rows). Got {shape[0]}.")
        elif array.shape != shape:
            raise InvalidInputError(
                f"{what}[{name!r}] has shape {array.shape} but {what}[{next(iter(out))!r}] has "
                f"{shape}: every component needs the same rows and width.")
        if isinstance(array, np.ndarray) and not np.all(np.isfinite(array)):
            raise InvalidInputError(f"{what}[{name!r}] holds NaN or infinite values.")
        out[name] = array
    return out


def _check_vectors(vectors: Any, name: str, width: int) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != width:
        raise InvalidInputError(
            f"Expected the vectors of feature {name!r} to have shape (k, {width}) (the width "
            f"of the aligned contributions). Got {np.shape(vectors)}.")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"The vectors of feature {name!r} hold NaN or infinite values.")
    return array


def _check_features(features: Any, width: int) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or not features:
        raise InvalidInputError(
            "Expected features to be a non-empty mapping of feature name -> vectors (k, D).")
    return {str(name): _check_vectors(vectors, str(name), width)
            for name, vectors in features.items()}


def orthonormal_basis(vectors: np.ndarray, *, name: str = "feature") -> np.ndarray:
    """An orthonormal basis of the span of ``vectors``, by Gram-Schmidt in their order.

    The ``j``-th basis vector is the part of the ``j``-th independent vector orthogonal to the
    earlier ones, so directions stay tied to instantiations; vectors in the span of earlier
    ones (a repeated or zero text embedding) add none.

    Parameters
    ----------
    vectors : array of shape (k, D)
    name : str
        Names the feature in errors.

    Returns
    -------
    ndarray of shape (r, D), r <= k the rank of ``vectors``

    Raises
    ------
    InvalidInputError
        If every vector is zero.
    """
    vectors = _check_vectors(vectors, name, np.shape(vectors)[-1])
    basis: list[np.ndarray] = []
    for vector in vectors:
        norm = np.linalg.norm(vector)
        residual = vector.copy()
        for _ in range(2):  # orthogonalise twice: once loses orthogonality in float64
            for direction in basis:
                residual -= (direction @ residual) * direction
        length = np.linalg.norm(residual)
        if norm > 0 and length > RANK_TOLERANCE * norm:
            basis.append(residual / length)
    if not basis:
        raise InvalidInputError(f"The vectors of feature {name!r} are all zero.")
    return np.stack(basis)


# --------------------------------------------------------------------------- moments


def _as_dask(arrays: list[Any], row_bytes: int) -> list[da.Array]:
    """Dask arrays with the same row chunks and one column chunk (blocks line up by rows).

    The row chunks are the first Dask array's (else about 32 MiB of float64 input), cut to
    at most :data:`MOMENT_BYTES` for all the arrays' projections (``row_bytes`` per row).
    """
    n_rows, width = arrays[0].shape
    given = next((a.chunks[0] for a in arrays if isinstance(a, da.Array)),
                 (default_chunk_rows(width, 8),))
    size = min(max(given), max(1, MOMENT_BYTES // row_bytes))
    rows = da.core.normalize_chunks((size,), (n_rows,))[0]
    return [da.asarray(a).rechunk((rows, -1)) for a in arrays]


def _project(block: np.ndarray, basis: np.ndarray, unit_rows: bool) -> np.ndarray:
    block = block.astype(np.float64, copy=False)
    if unit_rows:  # cosines: a zero row has cosine 0 with everything
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block = block / np.where(norms > 0, norms, 1.0)
    return block @ basis.T


def _block_moments(*blocks: np.ndarray, shift_left: np.ndarray, shift_right: np.ndarray,
                   right_is_sum: bool) -> np.ndarray:
    """One chunk's moments, packed in one row: count, then per component and direction the
    sums, sums of squares and cross products, then the right side's sums and squares."""
    left = blocks if right_is_sum else blocks[:-1]
    # shifting by a rough mean keeps the one-pass sums of squares free of cancellation
    right = (sum(left) if right_is_sum else blocks[-1]) - shift_right
    sums, squares, cross = (np.empty((len(left), right.shape[1])) for _ in range(3))
    for i, block in enumerate(left):  # one component at a time: no (m, rows, r) copy
        centred = block - shift_left[i]
        sums[i], squares[i] = centred.sum(axis=0), (centred * centred).sum(axis=0)
        cross[i] = (centred * right).sum(axis=0)
    return np.concatenate([[right.shape[0]], sums.ravel(), squares.ravel(), cross.ravel(),
                           right.sum(axis=0), (right * right).sum(axis=0)])[None, :]


def _correlations(names: list[str], left: list[da.Array], right: da.Array | None,
                  what: str) -> np.ndarray:
    """Per component and direction, the correlation over rows of ``left[i][:, j]`` with
    ``right[:, j]`` (with the sum of ``left`` when ``right`` is None): shape (m, r)."""
    m, r = len(left), left[0].shape[1]
    first = left[0].chunks[0][0]
    heads = da.compute(*[p[:first] for p in left],
                         *([] if right is None else [right[:first]]))
    shift_left = np.stack([h.mean(axis=0) for h in heads[:m]])
    shift_left = np.where(np.isfinite(shift_left), shift_left, 0.0)
    shift_right = (shift_left.sum(axis=0) if right is None
                   else np.nan_to_num(heads[m].mean(axis=0), posinf=0.0, neginf=0.0))
    arrays = left if right is None else [*left, right]
    length = 1 + 3 * m * r + 2 * r
    n_blocks = len(left[0].chunks[0])
    packed = da.map_blocks(_block_moments, *arrays, shift_left=shift_left,
                           shift_right=shift_right, right_is_sum=right is None,
                           chunks=((1,) * n_blocks, (length,)), dtype=np.float64)
    moments = packed.sum(axis=0).compute()
    n = moments[0]
    s_l, ss_l, cross = (moments[1 + k * m * r:1 + (k + 1) * m * r].reshape(m, r)
                        for k in range(3))
    s_r, ss_r = moments[1 + 3 * m * r:1 + 3 * m * r + r], moments[1 + 3 * m * r + r:]
    for name, row in zip(names, ss_l, strict=True):
        if not np.all(np.isfinite(row)):
            raise InvalidInputError(f"{what}[{name!r}] holds NaN or infinite values.")
    if not np.all(np.isfinite(ss_r)):
        raise InvalidInputError("The target representation holds NaN or infinite values.")
    var_l = np.maximum(ss_l - s_l * s_l / n, 0.0)
    var_r = np.maximum(ss_r - s_r * s_r / n, 0.0)
    cov = cross - s_l * s_r / n
    denominator = np.sqrt(var_l * var_r)
    # a component (or a target) constant along a direction follows nothing: correlation 0
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(denominator > 0, cov / denominator, 0.0)
    return np.clip(corr, -1.0, 1.0)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, eq=False)
class ComponentScores:
    """Scores of model components for image features, and the orderings they induce.

    Attributes
    ----------
    scores : ndarray of shape (n_components, n_features), float64
        ``scores[i, p]``: the importance of component ``i`` for feature ``p`` (in [-1, 1]).
    components : tuple of str
    features : tuple of str
    method : str
        ``"projection"`` (:func:`component_scores`) or ``"clip proxy"``
        (:func:`proxy_scores`).
    n_rows : int or None
        The rows the scores were computed over.
    """

    scores: np.ndarray
    components: tuple[str, ...]
    features: tuple[str, ...]
    method: str = "projection"
    n_rows: int | None = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "components", tuple(self.components))
        object.__setattr__(self, "features", tuple(self.features))
        if scores.shape != (len(self.components), len(self.features)):
            raise InvalidInputError(
                f"Expected scores of shape (n_components, n_features) = "
                f"{(len(self.components), len(self.features))}. Got {scores.shape}.")
        if not np.all(np.isfinite(scores)):
            raise InvalidInputError("The scores hold NaN or infinite values.")
        for what, names in (("component", self.components), ("feature", self.features)):
            if len(set(names)) != len(names):
                raise InvalidInputError(f"The {what} names repeat: {list(names)}.")
        if self.method not in METHODS:
            raise InvalidInputError(f"Expected method in {list(METHODS)}. Got {self.method!r}.")

    def _feature(self, feature: str) -> int:
        if feature not in self.features:
            raise InvalidInputError(
                f"Unknown feature {feature!r}; the scores cover {list(self.features)}.")
        return self.features.index(feature)

    def _component(self, component: str) -> int:
        if component not in self.components:
            raise InvalidInputError(
                f"Unknown component {component!r}; the scores cover {len(self.components)} "
                f"components ({', '.join(self.components[:5])}, …).")
        return self.components.index(component)

    def _k(self, k: int) -> int:
        k = check_positive_int("k", k)
        if k > len(self.components):
            raise InvalidInputError(
                f"k={k} exceeds the number of components ({len(self.components)}).")
        return k

    def component_order(self, feature: str) -> list[str]:
        """Components by their score for ``feature``, best first."""
        column = self.scores[:, self._feature(feature)]
        return [self.components[i] for i in np.argsort(-column, kind="stable")]

    def feature_order(self, component: str) -> list[str]:
        """Features by their score for ``component``, best first."""
        row = self.scores[self._component(component)]
        return [self.features[p] for p in np.argsort(-row, kind="stable")]

    def top_components(self, feature: str, k: int) -> list[str]:
        """The ``k`` components that score highest for ``feature``."""
        return self.component_order(feature)[:self._k(k)]

    def gaps(self, feature: str) -> np.ndarray:
        """Per component, ``min over p' != feature of s[i, feature] - s[i, p']``, shape (m,).

        With a single feature, the score itself.
        """
        p = self._feature(feature)
        others = np.delete(self.scores, p, axis=1)
        if others.shape[1] == 0:
            return self.scores[:, p].copy()
        return self.scores[:, p] - others.max(axis=1)

    def gap_components(self, feature: str, k: int) -> list[str]:
        """The ``k`` components whose score for ``feature`` most exceeds their score for any
        other feature: the paper's choice for retrieval by an example image."""
        k = self._k(k)
        order = np.argsort(-self.gaps(feature), kind="stable")
        return [self.components[i] for i in order[:k]]

    def rows(self) -> list[dict]:
        """One dict per component and feature: ``component``, ``feature``, ``score`` and
        ``rank`` (the component's place in the feature's ordering, 1 = best)."""
        out = []
        for p, feature in enumerate(self.features):
            ranks = np.empty(len(self.components), dtype=int)
            ranks[np.argsort(-self.scores[:, p], kind="stable")] = np.arange(
                1, len(self.components) + 1)
            out.extend({"component": c, "feature": feature, "score": float(self.scores[i, p]),
                        "rank": int(ranks[i])} for i, c in enumerate(self.components))
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the scores as a JSON file with a daskdict header (kind ``"component scores"``);
        :func:`daskdict.load` reads it back.

        Raises
        ------
        OutputNotWritableError
            If ``path`` holds anything but component scores, or holds them and ``overwrite``
            is False.
        """
        path = formats.check_output(path, KIND, overwrite=overwrite, file=True)
        payload = {formats.HEADER_KEY: formats.header(KIND, method=self.method,
                                                      n_rows=self.n_rows),
                   "components": list(self.components), "features": list(self.features),
                   "scores": self.scores.tolist()}
        write_text(path, json.dumps(payload, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ComponentScores:
        """Read scores written by :meth:`save`."""
        meta = formats.read_header(path)
        if meta.get("kind") != KIND:
            raise InvalidInputError(
                f"Expected {str(path)!r} to hold daskdict {KIND}. Got {meta.get('kind')!r}.")
        formats.check_format(meta, path)
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        missing = [key for key in ("components", "features", "scores") if key not in payload]
        if missing:
            raise InvalidInputError(f"The scores {str(path)!r} lack {', '.join(missing)}.")
        return cls(np.asarray(payload["scores"], dtype=np.float64).reshape(
                       len(payload["components"]), len(payload["features"])),
                   payload["components"], payload["features"],
                   meta.get("method", "projection"), meta.get("n_rows"))


def describe_scores(path: Path) -> dict:
    """A summary of saved scores: their size and each feature's three best components."""
    saved = ComponentScores.load(path)
    return {"kind": KIND, "method": saved.method, "n_rows": saved.n_rows,
            "n_components": len(saved.components), "features": list(saved.features),
            "top_components": {f: saved.component_order(f)[:3] for f in saved.features}}


formats.register(KIND, ComponentScores.load, describe_scores)


# --------------------------------------------------------------------------- scores


def component_scores(aligned: Mapping[str, Any],
                     features: Mapping[str, Any]) -> ComponentScores:
    """Score every component for every feature (the paper's Alg. 2), in one pass over rows.

    Parameters
    ----------
    aligned : mapping of str to array of shape (n, D)
        Every component's contribution aligned to CLIP space (NumPy or Dask); their sum is
        the representation ``Z``.
    features : mapping of str to array of shape (k, D)
        Each feature's instantiation embeddings (see :func:`feature_vectors`); a repeated or
        dependent instantiation adds no basis direction.

    Returns
    -------
    ComponentScores
        ``scores[i, p]``, the mean over the directions of feature ``p``'s orthonormal basis of
        the correlation over rows between component ``i``'s projection and ``Z``'s.

    Raises
    ------
    InvalidInputError
        For an empty mapping, arrays of different shapes, vectors of another width, fewer than
        2 rows, or NaN (NumPy inputs before any work; Dask inputs when read).
    """
    arrays = check_arrays(aligned, "aligned", min_rows=2)
    n_rows, width = next(iter(arrays.values())).shape
    vectors = _check_features(features, width)
    bases = [orthonormal_basis(v, name=name) for name, v in vectors.items()]
    basis = np.concatenate(bases)
    projections = [a.map_blocks(_project, basis=basis, unit_rows=False, dtype=np.float64,
                                chunks=(a.chunks[0], (basis.shape[0],)))
                   for a in _as_dask(list(arrays.values()), 8 * len(basis) * len(arrays))]
    corr = _correlations(list(arrays), projections, None, "aligned")
    cuts = np.cumsum([b.shape[0] for b in bases])[:-1]
    scores = np.stack([c.mean(axis=1) for c in np.split(corr, cuts, axis=1)], axis=1)
    return ComponentScores(scores, list(arrays), list(vectors), "projection", int(n_rows))


def proxy_scores(aligned: Mapping[str, Any], clip_target: Any,
                 features: Mapping[str, Any]) -> ComponentScores:
    """The paper's "ground truth" proxy of the scores, judged by a CLIP model (its Tab. 2).

    For component ``i`` and instantiation ``s`` of feature ``p``: the correlation over rows
    between ``cos(f_i(c_i), y_s)`` and ``cos(z_CLIP, y_s)``, averaged over the instantiations.

    Parameters
    ----------
    aligned : mapping of str to array of shape (n, D)
    clip_target : array of shape (n, D)
        The CLIP image embeddings of the same rows.
    features : mapping of str to array of shape (k, D)
        The instantiations' CLIP text embeddings ``y_s``.

    Returns
    -------
    ComponentScores
        With ``method="clip proxy"``.
    """
    arrays = check_arrays(aligned, "aligned", min_rows=2)
    n_rows, width = next(iter(arrays.values())).shape
    target = check_arrays({"clip_target": clip_target}, "clip_target")["clip_target"]
    if target.shape != (n_rows, width):
        raise InvalidInputError(
            f"Expected clip_target of shape {(n_rows, width)} (the aligned contributions' rows "
            f"and width). Got {target.shape}.")
    vectors = _check_features(features, width)
    for name, v in vectors.items():
        if np.any(np.linalg.norm(v, axis=1) == 0):
            raise InvalidInputError(f"Feature {name!r} has a zero vector: no cosine with it.")
    units = np.concatenate([v / np.linalg.norm(v, axis=1, keepdims=True)
                            for v in vectors.values()])
    *parts, target = _as_dask([*arrays.values(), target], 8 * len(units) * (len(arrays) + 1))
    left, right = ([a.map_blocks(_project, basis=units, unit_rows=True, dtype=np.float64,
                                 chunks=(a.chunks[0], (units.shape[0],))) for a in group]
                   for group in (parts, [target]))
    corr = _correlations(list(arrays), left, right[0], "aligned")
    cuts = np.cumsum([v.shape[0] for v in vectors.values()])[:-1]
    scores = np.stack([c.mean(axis=1) for c in np.split(corr, cuts, axis=1)], axis=1)
    return ComponentScores(scores, list(arrays), list(vectors), "clip proxy", int(n_rows))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho, NaN where either side is constant (no ordering to compare)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b)[0])


def _mean(values: list[float]) -> float | None:
    return float(np.nanmean(values)) if np.any(np.isfinite(values)) else None


def ordering_agreement(scores: ComponentScores, proxy: ComponentScores) -> dict:
    """Spearman's rank correlation between the orderings of two score tables (the paper's
    Tab. 2: the scores against :func:`proxy_scores`).

    Returns
    -------
    dict
        ``component_ordering``: per feature, rho between the two component orderings, averaged
        over features; ``feature_ordering``: per component, rho between the feature orderings,
        averaged over components (None with fewer than 2 features); ``per_feature`` and
        ``per_component``: the single values (NaN where one side is constant, left out of
        the averages).
    """
    for name, table in (("scores", scores), ("proxy", proxy)):
        if not isinstance(table, ComponentScores):
            raise InvalidInputError(
                f"Expected {name} to be ComponentScores. Got {type(table).__name__}.")
    if set(scores.components) != set(proxy.components) or set(scores.features) != set(
            proxy.features):
        raise InvalidInputError(
            "The two score tables cover different components or features; compare tables "
            "computed on the same components and features.")
    rows = [proxy.components.index(c) for c in scores.components]
    cols = [proxy.features.index(f) for f in scores.features]
    other = proxy.scores[np.ix_(rows, cols)]
    per_feature = {f: _spearman(scores.scores[:, p], other[:, p])
                   for p, f in enumerate(scores.features)}
    per_component = {c: _spearman(scores.scores[i], other[i])
                     for i, c in enumerate(scores.components)}
    return {"component_ordering": _mean(list(per_feature.values())),
            "feature_ordering": (_mean(list(per_component.values()))
                                 if len(scores.features) > 1 else None),
            "per_feature": per_feature, "per_component": per_component}


# --------------------------------------------------------------------------- text embeddings


def _check_texts(features: Any) -> dict[str, list[str]]:
    if not isinstance(features, Mapping) or not features:
        raise InvalidInputError("Expected features to be a non-empty mapping of feature name -> "
                                "instantiation texts (['striped', 'spotted', …]).")
    out = {}
    for name, texts in features.items():
        if (isinstance(texts, str) or not isinstance(texts, Sequence) or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise InvalidInputError(
                f"Expected feature {name!r} to list non-empty instantiation texts. Got "
                f"{texts!r}.")
        out[str(name)] = list(texts)
    return out


def feature_vectors(features: Mapping[str, Sequence[str]],
                    text_encoder: str | os.PathLike | Callable, *,
                    batch_size: int = 64) -> dict[str, np.ndarray]:
    """Embed each feature's instantiation texts with a CLIP text encoder, L2-normalised.

    Parameters
    ----------
    features : mapping of str to sequence of str
        ``{"pattern": ["striped", "spotted"], "color": [...]}``.
    text_encoder : str, path-like or callable
        A Hugging Face CLIP (a hub name or a ``save_pretrained`` folder), or any callable
        ``texts -> array (n_texts, D)`` in the space the contributions are aligned to.
    batch_size : int, default=64
        Texts per forward pass of a CLIP given by name.

    Returns
    -------
    dict of str to ndarray of shape (k, D), float32, unit rows
    """
    texts = _check_texts(features)
    check_positive_int("batch_size", batch_size)
    encode = text_encoder if callable(text_encoder) else CLIP(text_encoder,
                                                                batch_size=batch_size)
    flat = [t for values in texts.values() for t in values]
    vectors = np.asarray(encode(flat), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(flat) or not np.isfinite(vectors).all():
        raise InvalidInputError(f"Expected the text encoder to return {len(flat)} finite rows. "
                                f"Got shape {vectors.shape}.")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    cuts = np.cumsum([len(v) for v in texts.values()])[:-1]
    return dict(zip(texts, np.split(vectors, cuts), strict=True))
