import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def unit_rows(array):
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def dense_codes(indices, values, n_atoms):
    """Reference scatter of fixed-width codes into a dense (n_samples, n_atoms) matrix."""
    out = np.zeros((indices.shape[0], n_atoms))
    for i, (idx, val) in enumerate(zip(indices, values, strict=True)):
        keep = idx >= 0
        out[i, idx[keep]] = val[keep]
    return out
