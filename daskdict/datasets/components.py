"""Planted component contributions with a known alignment: the test of CompAlign.

Each of ``n_components`` model components contributes a Gaussian vector ``c_i`` of width ``d``;
the target (a stand-in for a CLIP image embedding of width ``D``) is ``z = sum_i R_i c_i +
noise`` with every ``R_i`` orthogonal, as the alignment maps of Balasubramanian, Basu and Feizi
(2024), *Decomposing and Interpreting Image Representations via Text in ViTs Beyond CLIP*, are
meant to be. A fit is scored by how closely its maps match the planted ``R_i``.
"""

from __future__ import annotations

import numbers

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.validation import check_positive_int

__all__ = ["make_aligned_components", "planted_orthogonal_maps"]


def planted_orthogonal_maps(n_maps: int, target_width: int, width: int,
                            random_state=None) -> np.ndarray:
    """Random orthogonal maps, shape (n_maps, target_width, width).

    Each map ``R`` has orthonormal columns (``R.T @ R = I``) when ``target_width >= width``,
    orthonormal rows (``R @ R.T = I``) otherwise; drawn uniformly (Haar) by the QR decomposition
    of a Gaussian matrix with the signs of R's diagonal fixed.
    """
    rng = np.random.default_rng(random_state)
    tall = target_width >= width
    shape = (n_maps, target_width, width) if tall else (n_maps, width, target_width)
    q, r = np.linalg.qr(rng.standard_normal(shape))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    return q if tall else np.swapaxes(q, 1, 2)


def make_aligned_components(n_rows: int = 20000, n_components: int = 12, width: int = 64,
                            target_width: int = 64, snr_db: float = 20.0, random_state=0
                            ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Component contributions, their aligned target, and the planted orthogonal maps.

    Component ``i`` (named ``component.NN``) draws its rows from a full-rank Gaussian
    ``N(0, s_i^2 U_i diag(e_i) U_i^T)``: a random rotation ``U_i``, eigenvalues ``e_i`` spread
    log-uniformly over [0.25, 1] and a scale ``s_i`` log-uniform in [0.5, 2], so that the
    components differ in size and shape and no two maps are interchangeable. The target row
    is ``z = sum_i R_i c_i + e`` with white Gaussian noise ``e`` whose power is the signal's
    over ``10^(snr_db / 10)``.

    Parameters
    ----------
    n_rows : int, default=20000
    n_components : int, default=12
    width : int, default=64
        Width d of every component.
    target_width : int, default=64
        Width D of the target.
    snr_db : float, default=20.0
        Signal-to-noise ratio of the target, in decibels.
    random_state : int, Generator or None, default=0

    Returns
    -------
    components : dict of str to ndarray of float32 of shape (n_rows, width)
        In order ``component.00``, ``component.01``, ...
    target : ndarray of float32 of shape (n_rows, target_width)
    maps : ndarray of float64 of shape (n_components, target_width, width)
        The planted maps ``R_i`` (orthogonal, see :func:`planted_orthogonal_maps`).

    Raises
    ------
    InvalidInputError
        If a size is not a positive integer, or ``snr_db`` not a finite number.
    """
    for name, value in (("n_rows", n_rows), ("n_components", n_components), ("width", width),
                        ("target_width", target_width)):
        check_positive_int(name, value)
    if (isinstance(snr_db, bool) or not isinstance(snr_db, numbers.Real)
            or not np.isfinite(snr_db)):
        raise InvalidInputError(f"Expected snr_db to be a finite number. Got {snr_db!r}.")
    rng = np.random.default_rng(random_state)
    scales = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n_components))
    maps = planted_orthogonal_maps(n_components, target_width, width, rng)
    components: dict[str, np.ndarray] = {}
    clean = np.zeros((n_rows, target_width))
    for i in range(n_components):
        rotation = np.linalg.qr(rng.standard_normal((width, width)))[0]
        spread = np.exp(rng.uniform(np.log(0.25), 0.0, width))
        factor = scales[i] * rotation * np.sqrt(spread)  # covariance factor @ factor.T
        values = rng.standard_normal((n_rows, width)) @ factor.T
        components[f"component.{i:02d}"] = values.astype(np.float32)
        clean += components[f"component.{i:02d}"] @ maps[i].T
    power = float(np.mean(clean ** 2))
    noise = rng.standard_normal(clean.shape) * np.sqrt(power / 10 ** (float(snr_db) / 10))
    return components, (clean + noise).astype(np.float32), maps
