"""Metrics of a dictionary: reconstruction, sparsity, coherence, and recovery of a planted one."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

# The K-SVD paper's criterion: a planted atom counts as recovered when a learned atom has
# 1 - |d_i . d_j| below this.
RECOVERY_THRESHOLD = 0.01


def _unit_rows(atoms) -> np.ndarray:
    atoms = np.asarray(atoms, dtype=np.float64)
    norms = np.linalg.norm(atoms, axis=1, keepdims=True)
    return atoms / np.where(norms > 0, norms, 1.0)


def recovered_fraction(true_atoms, learned_atoms,
                       threshold: float = RECOVERY_THRESHOLD) -> float:
    """Fraction of planted atoms matched by some learned atom (1 - |d_i . d̂_j| < threshold).

    Parameters
    ----------
    true_atoms : array of shape (n_true, n_features)
    learned_atoms : array of shape (n_learned, n_features)
    """
    sim = np.abs(_unit_rows(true_atoms) @ _unit_rows(learned_atoms).T)
    return float(np.mean(1.0 - sim.max(axis=1) < threshold))


def align_atoms(true_atoms, learned_atoms) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian alignment maximising |cosine|: (learned index per true atom, |cosine|)."""
    sim = np.abs(_unit_rows(true_atoms) @ _unit_rows(learned_atoms).T)
    rows, cols = linear_sum_assignment(-sim)
    match = np.full(sim.shape[0], -1)
    match[rows] = cols
    return match, sim[rows, cols]


def support_scores(true_indices, learned_indices, match) -> tuple[float, float]:
    """Support precision and recall of learned codes against planted ones after alignment.

    ``match`` maps each planted atom to a learned atom (from :func:`align_atoms`).
    """
    inverse = np.full(max(int(np.max(match)) + 1, int(np.max(learned_indices)) + 1), -1)
    inverse[match[match >= 0]] = np.flatnonzero(match >= 0)
    mapped = np.where(learned_indices >= 0, inverse[np.maximum(learned_indices, 0)], -2)
    hits = sum(len(np.intersect1d(t[t >= 0], m[m >= 0]))
               for t, m in zip(true_indices, mapped, strict=True))
    n_learned = int((learned_indices >= 0).sum())
    n_true = int((true_indices >= 0).sum())
    return hits / max(n_learned, 1), hits / max(n_true, 1)


def max_coherence(atoms) -> float:
    """Largest |d_i . d_j| over distinct atoms."""
    unit = _unit_rows(atoms)
    gram = np.abs(unit @ unit.T)
    np.fill_diagonal(gram, 0.0)
    return float(gram.max())


def reconstruction_metrics(data, reconstruction) -> dict:
    """Relative error, FVU and mean per-sample relative residual (zero rows skipped)."""
    data = np.asarray(data, dtype=np.float64)
    residual = data - np.asarray(reconstruction, dtype=np.float64)
    norms = np.linalg.norm(data, axis=1)
    res_norms = np.linalg.norm(residual, axis=1)
    centred = data - data.mean(axis=0)
    nonzero = norms > 0
    return {
        "relative_error": float(np.linalg.norm(residual) / np.linalg.norm(data)),
        "fvu": float((residual**2).sum() / (centred**2).sum()),
        "mean_relative_residual": float(np.mean(res_norms[nonzero] / norms[nonzero])),
    }
