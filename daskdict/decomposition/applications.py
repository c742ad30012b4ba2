"""What the component scores are for: retrieval, token heat maps, removing a spurious cue.

The applications of Balasubramanian, Basu, Feizi (2024), "Decomposing and Interpreting Image
Representations via Text in ViTs Beyond CLIP", over contributions given as a mapping
component name -> array (n, width), NumPy or Dask:

- :func:`retrieve_by_text`: rows whose sum of a feature's best components (aligned to CLIP
  space) is closest in cosine to a text embedding;
- :func:`retrieve_by_example`: rows like a reference row in one feature only, through the
  components that score for that feature far more than for any other, summed in the model's
  own space;
- :func:`ablate`: the representation with chosen components replaced by their mean over the
  rows (zero-shot removal of a spurious cue such as an image's background);
- :func:`token_heatmap` and :func:`plot_heatmap`: per-token scores ``u^T f_i(c_{i,t})`` of the
  chosen components, drawn over the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np

from daskdict.decomposition.scores import ComponentScores, check_arrays
from daskdict.errors import InvalidInputError
from daskdict.validation import check_positive_int

__all__ = ["ablate", "plot_heatmap", "retrieve_by_example", "retrieve_by_text",
           "token_heatmap"]


def _check_scores(scores: Any, feature: str) -> ComponentScores:
    if not isinstance(scores, ComponentScores):
        raise InvalidInputError(
            f"Expected scores to be ComponentScores (from component_scores). Got "
            f"{type(scores).__name__}.")
    if feature not in scores.features:
        raise InvalidInputError(
            f"Unknown feature {feature!r}; the scores cover {list(scores.features)}.")
    return scores


def _pick(arrays: Mapping[str, Any], chosen: Sequence[str], what: str) -> list[Any]:
    missing = [name for name in chosen if name not in arrays]
    if missing:
        raise InvalidInputError(
            f"{what} lacks the component(s) {missing}; it holds {len(arrays)} component(s) "
            f"({', '.join(list(arrays)[:5])}, …).")
    return [arrays[name] for name in chosen]


def _vector(vector: Any, name: str, width: int) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (width,):
        raise InvalidInputError(f"Expected {name} of shape ({width},). Got {array.shape}.")
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise InvalidInputError(f"Expected {name} to be finite and non-zero.")
    return array


def _total(arrays: list[Any]) -> Any:
    """The sum of the arrays, float64 (Dask when any of them is)."""
    if any(isinstance(a, da.Array) for a in arrays):
        arrays = [da.asarray(a) for a in arrays]
    total = arrays[0].astype(np.float64)
    for array in arrays[1:]:
        total = total + array
    return total


def _best(similarity: Any, n_items: int, exclude: int | None = None) -> np.ndarray:
    """Row indices of the ``n_items`` largest similarities, best first (NaN refused)."""
    similarity = np.array(similarity, dtype=np.float64)  # (n,): small even for many rows
    if np.isnan(similarity).any():
        raise InvalidInputError("The contributions hold NaN or infinite values.")
    if exclude is not None:
        similarity[exclude] = -np.inf
    order = np.argsort(-similarity, kind="stable")
    return order[:n_items].astype(np.int64)


def _cosine(rows: Any, vector: np.ndarray) -> Any:
    """Cosine of every row with ``vector``; 0 for a zero row. Shape (n,)."""
    norms = (rows * rows).sum(axis=1) ** 0.5
    dots = rows @ vector
    safe = da.where(norms > 0, norms, 1.0) if isinstance(rows, da.Array) else np.where(
        norms > 0, norms, 1.0)
    return dots / (safe * np.linalg.norm(vector))


def _n_items(n_items: int, available: int) -> int:
    n_items = check_positive_int("n_items", n_items)
    if n_items > available:
        raise InvalidInputError(f"n_items={n_items} exceeds the {available} rows available.")
    return n_items


def retrieve_by_text(aligned: Mapping[str, Any], scores: ComponentScores, feature: str,
                     text_vector: Any, k_components: int, n_items: int) -> np.ndarray:
    """Rows that best match a text through a feature's best components.

    Parameters
    ----------
    aligned : mapping of str to array of shape (n, D)
        The components' contributions aligned to CLIP space (NumPy or Dask).
    scores : ComponentScores
    feature : str
        The feature whose ``k_components`` best-scoring components are summed.
    text_vector : array of shape (D,)
        The CLIP text embedding of one instantiation of the feature ("striped").
    k_components, n_items : int

    Returns
    -------
    ndarray of int64 of shape (n_items,)
        Row indices by decreasing cosine of the summed contributions with ``text_vector``.
    """
    arrays = check_arrays(aligned, "aligned")
    n_rows, width = next(iter(arrays.values())).shape
    chosen = _check_scores(scores, feature).top_components(feature, k_components)
    vector = _vector(text_vector, "text_vector", width)
    n_items = _n_items(n_items, n_rows)
    return _best(_cosine(_total(_pick(arrays, chosen, "aligned")), vector), n_items)


def retrieve_by_example(contributions: Mapping[str, Any], scores: ComponentScores,
                        feature: str, reference_row: int, k_components: int,
                        n_items: int) -> np.ndarray:
    """Rows like a reference row in one feature, in the model's own space.

    The ``k_components`` components whose score for ``feature`` most exceeds their score for
    every other feature (:meth:`ComponentScores.gap_components`) are summed, per row, in the
    model's own space; the rows nearest the reference's sum in cosine are returned.

    Parameters
    ----------
    contributions : mapping of str to array of shape (n, d)
        The raw (not aligned) contributions, NumPy or Dask.
    scores : ComponentScores
    feature : str
    reference_row : int
        The reference row (never returned).
    k_components, n_items : int

    Returns
    -------
    ndarray of int64 of shape (n_items,)
        Row indices, nearest first.
    """
    arrays = check_arrays(contributions, "contributions")
    n_rows = next(iter(arrays.values())).shape[0]
    chosen = _check_scores(scores, feature).gap_components(feature, k_components)
    reference_row = check_positive_int("reference_row", reference_row, minimum=0)
    if reference_row >= n_rows:
        raise InvalidInputError(f"reference_row={reference_row} is out of range: the "
                                f"contributions have {n_rows} rows.")
    n_items = _n_items(n_items, n_rows - 1)
    total = _total(_pick(arrays, chosen, "contributions"))
    reference = np.asarray(total[reference_row], dtype=np.float64)
    if not np.all(np.isfinite(reference)):
        raise InvalidInputError("The reference row's contributions hold NaN or infinite values.")
    if not np.any(reference):
        raise InvalidInputError(
            f"The reference row's chosen components sum to zero: no direction to compare "
            f"({chosen}).")
    return _best(_cosine(total, reference), n_items, exclude=reference_row)


def _means(arrays: dict[str, Any], drop: list[str], mean_over: Any) -> dict[str, Any]:
    """Per dropped component, its mean row (width,)."""
    n_rows, width = next(iter(arrays.values())).shape
    if isinstance(mean_over, Mapping):
        return {name: _mean_row(_pick(mean_over, [name], "mean_over")[0], f"mean_over[{name!r}]",
                                width) for name in drop}
    if mean_over is None:
        return {name: arrays[name].mean(axis=0) for name in drop}
    rows = np.asarray(mean_over)
    if rows.dtype == bool:
        if rows.shape != (n_rows,):
            raise InvalidInputError(f"Expected a boolean mean_over of shape ({n_rows},). Got "
                                    f"{rows.shape}.")
        rows = np.flatnonzero(rows)
    if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
        raise InvalidInputError("Expected mean_over to be None, a boolean mask of the rows, "
                                "row indices, or a mapping component -> mean row.")
    if rows.min() < 0 or rows.max() >= n_rows:
        raise InvalidInputError(f"mean_over holds row indices outside [0, {n_rows}).")
    return {name: arrays[name][rows].mean(axis=0) for name in drop}


def _mean_row(vector: Any, name: str, width: int) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    if array.shape != (width,) or not np.all(np.isfinite(array)):
        raise InvalidInputError(f"Expected {name} to be a finite vector of shape ({width},).")
    return array


def _finite_block(block: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(block)):
        raise InvalidInputError("The contributions hold NaN or infinite values.")
    return block


def ablate(contributions: Mapping[str, Any], drop: Sequence[str],
           mean_over: Any = None) -> Any:
    """The representation with the ``drop`` components replaced by their mean over rows.

    The paper's zero-shot removal of a spurious cue: a classifier trained on the whole
    representation, fed this one, can no longer see what the dropped components carried.

    Parameters
    ----------
    contributions : mapping of str to array of shape (n, d)
        Every component's raw contribution (their sum is the representation).
    drop : sequence of str
        The components to replace.
    mean_over : None, bool array of shape (n,), int array, or mapping of str to (d,)
        Which rows the means are taken over (None: all), or the means themselves (taken over
        another set of rows, say the training set).

    Returns
    -------
    array of shape (n, d), float64
        Dask when any contribution is (NaN then raises when computed), else NumPy.
    """
    arrays = check_arrays(contributions, "contributions")
    if isinstance(drop, str) or not isinstance(drop, Sequence):
        raise InvalidInputError(f"Expected drop to be a sequence of component names. Got "
                                f"{drop!r}.")
    drop = list(dict.fromkeys(drop))
    _pick(arrays, drop, "contributions")
    means = _means(arrays, drop, mean_over)
    kept = [a for name, a in arrays.items() if name not in drop]
    total = _total(kept) if kept else None
    constant = _total([m[None, :] for m in means.values()]) if drop else None
    if total is None:
        n_rows = next(iter(arrays.values())).shape[0]
        total = constant * np.ones((n_rows, 1))
    elif constant is not None:
        total = total + constant
    if isinstance(total, da.Array):
        total = total.map_blocks(_finite_block, dtype=np.float64)
    return total


def token_heatmap(token_contributions: Mapping[str, Any], components: Sequence[str],
                  direction: Any, maps: Mapping[str, Any] | None = None) -> np.ndarray:
    """Per-token scores ``sum_i u^T f_i(c_{i,t})`` over the chosen components.

    A component's contribution is a sum over tokens, ``c_i = sum_t c_{i,t}``, and the
    alignment ``f_i`` is linear, so ``u^T f_i(c_i) = sum_t u^T f_i(c_{i,t})``: each token's
    share of the component's match with the text embedding ``u``.

    Parameters
    ----------
    token_contributions : mapping of str to array of shape (n_tokens, d)
        One image's per-token contributions of each component.
    components : sequence of str
        The components to sum (say a feature's best, :meth:`ComponentScores.top_components`).
    direction : array of shape (D,)
        ``u``, a CLIP text embedding.
    maps : mapping of str to array of shape (D, d), optional
        Each chosen component's linear alignment ``f_i(c) = maps[i] @ c``; the identity (and
        ``d == D``) when None.

    Returns
    -------
    ndarray of shape (n_tokens,), float64
    """
    arrays = check_arrays(token_contributions, "token_contributions")
    n_tokens, width = next(iter(arrays.values())).shape
    if isinstance(components, str) or not isinstance(components, Sequence) or not components:
        raise InvalidInputError(f"Expected components to be a non-empty sequence of names. "
                                f"Got {components!r}.")
    chosen = _pick(arrays, list(components), "token_contributions")
    if maps is None:
        u = _vector(direction, "direction", width)
        pulled = [u] * len(chosen)
    else:
        if not isinstance(maps, Mapping):
            raise InvalidInputError("Expected maps to be a mapping of component -> (D, d).")
        matrices = [np.asarray(m, dtype=np.float64)
                    for m in _pick(maps, list(components), "maps")]
        u = np.asarray(direction, dtype=np.float64)
        for name, matrix in zip(components, matrices, strict=True):
            if matrix.shape != (u.size, width) or not np.all(np.isfinite(matrix)):
                raise InvalidInputError(
                    f"Expected maps[{name!r}] to be a finite (D, d) = ({u.size}, {width}) "
                    f"matrix (D the direction's width). Got shape {matrix.shape}.")
        u = _vector(u, "direction", u.size)
        # u^T (M c) = (M^T u)^T c: pull the direction back to the model's space once
        pulled = [matrix.T @ u for matrix in matrices]
    heat = np.zeros(n_tokens)
    for tokens, vector in zip(chosen, pulled, strict=True):
        heat += np.asarray(tokens, dtype=np.float64) @ vector
    if not np.all(np.isfinite(heat)):
        raise InvalidInputError("The token contributions hold NaN or infinite values.")
    return heat


def plot_heatmap(scores: Any, grid_shape: tuple[int, int], image: Any = None, ax: Any = None,
                 *, cmap: str = "jet", alpha: float = 0.5) -> Any:
    """Draw per-token scores as a heat map over an image's patch grid (needs matplotlib).

    Parameters
    ----------
    scores : array of shape (n_tokens,)
        From :func:`token_heatmap`, patch tokens only (drop a class token first).
    grid_shape : (int, int)
        Patch rows and columns, ``rows * cols == n_tokens``.
    image : array of shape (H, W) or (H, W, C), optional
        Drawn under the heat map, which is stretched over it.
    ax : matplotlib Axes, optional
        Drawn into; a new figure's when None.
    cmap : str, default="jet"
    alpha : float, default=0.5
        The heat map's opacity over the image.

    Returns
    -------
    matplotlib Axes
    """
    values = np.asarray(scores, dtype=np.float64)
    shape = tuple(grid_shape) if isinstance(grid_shape, Sequence) else ()
    if len(shape) != 2:
        raise InvalidInputError(f"Expected grid_shape = (rows, cols). Got {grid_shape!r}.")
    rows, cols = (check_positive_int("grid_shape", v) for v in shape)
    if values.ndim != 1 or values.size != rows * cols:
        raise InvalidInputError(
            f"Expected {rows * cols} token scores for a {rows}x{cols} grid. Got shape "
            f"{values.shape} (drop the class token first).")
    picture = None if image is None else np.asarray(image)
    if picture is not None and picture.ndim not in (2, 3):
        raise InvalidInputError(f"Expected an image (H, W) or (H, W, C). Got shape "
                                f"{picture.shape}.")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    extent = None
    if picture is not None:
        ax.imshow(picture)
        extent = (-0.5, picture.shape[1] - 0.5, picture.shape[0] - 0.5, -0.5)
    ax.imshow(values.reshape(rows, cols), cmap=cmap, alpha=1.0 if picture is None else alpha,
              extent=extent, interpolation="nearest")
    ax.set_axis_off()
    return ax
