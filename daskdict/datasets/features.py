"""Planted model components that carry known image features, for the component scores.

The data imitate what a decomposition of a vision transformer gives once its components are
aligned to CLIP space (Balasubramanian, Basu, Feizi (2024), "Decomposing and Interpreting Image
Representations via Text in ViTs Beyond CLIP"): per image (row) and model component, a
contribution in the model's own space, and its image in CLIP space under a linear map.

Each feature (say "pattern") has ``n_values`` instantiations ("striped", "spotted", …): unit
vectors of CLIP space, the stand-ins of their text embeddings, spanning a subspace of the
feature's own (the subspaces of different features are orthogonal). Each row carries one
instantiation of every feature. Component ``i`` carries feature ``p`` with a planted
importance ``w[i, p] >= 0``::

    aligned_i(row) = sum_p w[i, p] * y[p, value(row, p)] + noise_i(row)
    contribution_i(row) = aligned_i(row) @ maps[i]          # model space, width model_width

where ``noise_i`` is white noise of the whole CLIP space (so that a component's share of a
feature's variance grows with its importance) and ``maps[i]`` has orthonormal rows, so
``aligned_i = contribution_i @ maps[i].T`` exactly: ``maps[i]`` is the component's alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.validation import check_positive_int

__all__ = ["FeatureComponents", "make_feature_components", "planted_feature_components",
           "spurious_values"]

# how much the instantiations of one feature share (text embeddings of "striped" and "spotted"
# are far from orthogonal); 0 would make them orthogonal
_SHARED = 0.5


@dataclass(frozen=True, eq=False)
class FeatureComponents:
    """Planted component contributions and the features they carry.

    Attributes
    ----------
    aligned : dict of str to ndarray of shape (n_rows, width)
        Each component's contribution in CLIP space (what an alignment returns).
    contributions : dict of str to ndarray of shape (n_rows, model_width)
        The same contributions in the model's own space; their sum is the representation.
    maps : dict of str to ndarray of shape (width, model_width)
        Each component's alignment: ``aligned[c] == contributions[c] @ maps[c].T``.
    feature_vectors : dict of str to ndarray of shape (n_values, width)
        The unit vectors of each feature's instantiations (the planted text embeddings).
    importances : ndarray of shape (n_components, n_features)
        ``w[i, p]``: the amplitude with which component ``i`` carries feature ``p``.
    values : ndarray of int of shape (n_rows, n_features)
        Which instantiation of each feature each row carries.
    """

    aligned: dict[str, np.ndarray]
    contributions: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    feature_vectors: dict[str, np.ndarray]
    importances: np.ndarray
    values: np.ndarray

    @property
    def components(self) -> list[str]:
        """Component names, in the order of the rows of :attr:`importances`."""
        return list(self.aligned)

    @property
    def features(self) -> list[str]:
        """Feature names, in the order of the columns of :attr:`importances`."""
        return list(self.feature_vectors)


def _check_shapes(n_rows, n_components, n_features, n_values, width, model_width) -> None:
    for name, value in (("n_rows", n_rows), ("n_components", n_components),
                        ("n_features", n_features), ("width", width),
                        ("model_width", model_width)):
        check_positive_int(name, value)
    check_positive_int("n_values", n_values, minimum=2)
    if n_features * n_values > width:
        raise InvalidInputError(
            f"n_features * n_values = {n_features * n_values} orthogonal feature directions do "
            f"not fit in width={width}; raise width or lower n_features or n_values.")
    if model_width < width:
        raise InvalidInputError(
            f"Expected model_width >= width (the alignment must be exact). Got model_width="
            f"{model_width} < width={width}.")


def _check_given(importances, values, n_rows, n_components, n_features, n_values):
    if importances is not None:
        importances = np.asarray(importances, dtype=np.float64)
        if importances.shape != (n_components, n_features):
            raise InvalidInputError(
                f"Expected importances of shape (n_components, n_features) = "
                f"{(n_components, n_features)}. Got {importances.shape}.")
        if not np.all(np.isfinite(importances)) or np.any(importances < 0):
            raise InvalidInputError("Expected finite, non-negative importances.")
    if values is not None:
        values = np.asarray(values)
        if values.shape != (n_rows, n_features) or not np.issubdtype(values.dtype, np.integer):
            raise InvalidInputError(
                f"Expected values to be integers of shape (n_rows, n_features) = "
                f"{(n_rows, n_features)}. Got {values.dtype} {values.shape}.")
        if values.size and (values.min() < 0 or values.max() >= n_values):
            raise InvalidInputError(f"Expected values in [0, {n_values}).")
    return importances, values


def _feature_vectors(rng, n_features, n_values, width) -> list[np.ndarray]:
    """Per feature, ``n_values`` unit vectors spanning a subspace orthogonal to the others'."""
    basis = np.linalg.qr(rng.standard_normal((width, width)))[0].T  # orthonormal rows
    mixing = np.eye(n_values) + _SHARED * np.ones((n_values, n_values))
    out = []
    for p in range(n_features):
        vectors = mixing @ basis[p * n_values:(p + 1) * n_values]
        out.append(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return out


def _planted_importances(rng, n_components, n_features) -> np.ndarray:
    """Each component carries one main feature strongly and the others weakly or not at all."""
    weights = rng.uniform(0.0, 0.3, (n_components, n_features))
    weights *= rng.random((n_components, n_features)) < 0.6  # many components ignore a feature
    main = rng.permutation(n_components) % n_features
    weights[np.arange(n_components), main] = rng.uniform(0.5, 1.0, n_components)
    return weights


def planted_feature_components(n_rows: int = 2000, n_components: int = 12,
                               n_features: int = 4, n_values: int = 3, width: int = 64,
                               model_width: int = 96, *, noise: float = 1.0,
                               importances: np.ndarray | None = None,
                               values: np.ndarray | None = None, random_state=0,
                               rows_random_state=None) -> FeatureComponents:
    """Planted component contributions carrying known features (see the module's docstring).

    Parameters
    ----------
    n_rows, n_components, n_features : int
    n_values : int, default=3
        Instantiations per feature (at least 2).
    width : int, default=64
        Width of CLIP space (``n_features * n_values <= width``).
    model_width : int, default=96
        Width of the model's own space (``>= width``).
    noise : float, default=1.0
        Expected norm of each component's white noise per row.
    importances : array of shape (n_components, n_features), optional
        The planted importances; drawn at random when None (each component carries one main
        feature with weight in [0.5, 1] and each other feature with weight in [0, 0.3] or 0).
    values : int array of shape (n_rows, n_features), optional
        Which instantiation each row carries; uniform and independent when None (pass
        correlated values to plant a spurious correlation).
    random_state : int, Generator or None, default=0
        Seeds the structure: feature vectors, importances, maps.
    rows_random_state : int, Generator or None
        Seeds the rows (values and noise); derived from ``random_state`` when None. Two calls
        with the same ``random_state`` and different ``rows_random_state`` give two samples
        of the same model (a training set and a test set).

    Returns
    -------
    FeatureComponents
        Components ``component_00``, …; features ``feature_0``, ….
    """
    _check_shapes(n_rows, n_components, n_features, n_values, width, model_width)
    if not np.isfinite(noise) or noise < 0:
        raise InvalidInputError(f"Expected noise >= 0. Got {noise!r}.")
    importances, values = _check_given(importances, values, n_rows, n_components, n_features,
                                       n_values)
    rng = np.random.default_rng(random_state)
    vectors = _feature_vectors(rng, n_features, n_values, width)
    if importances is None:
        importances = _planted_importances(rng, n_components, n_features)
    maps = [np.linalg.qr(rng.standard_normal((model_width, width)))[0].T
            for _ in range(n_components)]
    rows_rng = np.random.default_rng(rng.integers(2**63) if rows_random_state is None
                                     else rows_random_state)
    if values is None:
        values = rows_rng.integers(0, n_values, (n_rows, n_features))
    # per feature, every row's instantiation vector: (n_features, n_rows, width)
    signal = np.stack([vectors[p][values[:, p]] for p in range(n_features)])
    names = [f"component_{i:02d}" for i in range(n_components)]
    aligned, contributions = {}, {}
    for i, name in enumerate(names):
        white = rows_rng.standard_normal((n_rows, width)) * (noise / np.sqrt(width))
        aligned[name] = np.einsum("p,prw->rw", importances[i], signal) + white
        contributions[name] = aligned[name] @ maps[i]
    return FeatureComponents(
        aligned=aligned, contributions=contributions,
        maps=dict(zip(names, maps, strict=True)),
        feature_vectors={f"feature_{p}": vectors[p] for p in range(n_features)},
        importances=np.array(importances, dtype=np.float64), values=np.asarray(values))


def make_feature_components(n_rows: int = 2000, n_components: int = 12, n_features: int = 4,
                            width: int = 64, *, n_values: int = 3, random_state=0,
                            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Aligned contributions, feature vectors and planted importances (a known answer for
    :func:`daskdict.decomposition.component_scores`).

    A short form of :func:`planted_feature_components`, which also returns the contributions
    in the model's own space, the alignment maps and each row's instantiations.

    Returns
    -------
    aligned : dict of str to ndarray of shape (n_rows, width)
    feature_vectors : dict of str to ndarray of shape (n_values, width)
    importances : ndarray of shape (n_components, n_features)
    """
    data = planted_feature_components(n_rows, n_components, n_features, n_values, width,
                                      max(width, 96), random_state=random_state)
    return data.aligned, data.feature_vectors, data.importances


def spurious_values(n_rows: int, n_features: int = 3, n_values: int = 2, *,
                    agreement: float = 0.0, random_state=None) -> np.ndarray:
    """Row values with a planted spurious correlation (a Waterbirds-like set, Sagawa et al.).

    Feature 0 (the label) and the other features are uniform; feature 1 (the background)
    copies the label in a share ``agreement`` of the rows and is uniform in the rest, so
    ``agreement=0.95`` gives a training set where the background predicts the label, and
    ``agreement=0`` a test set where it does not.

    Returns
    -------
    ndarray of int of shape (n_rows, n_features)
        Pass it as ``values`` to :func:`planted_feature_components`.
    """
    check_positive_int("n_rows", n_rows)
    check_positive_int("n_features", n_features, minimum=2)
    check_positive_int("n_values", n_values, minimum=2)
    if not 0.0 <= agreement <= 1.0:
        raise InvalidInputError(f"Expected agreement in [0, 1]. Got {agreement!r}.")
    rng = np.random.default_rng(random_state)
    values = rng.integers(0, n_values, (n_rows, n_features))
    copies = rng.random(n_rows) < agreement
    values[copies, 1] = values[copies, 0]
    return values
