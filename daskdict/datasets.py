"""Built-in data: planted dictionaries with sparse mixtures and noise (the K-SVD paper's test).

A planted store has a known dictionary, so a fit can be scored by how many planted atoms it
recovers; it is what ``daskdict demo`` and the benchmarks use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from .errors import InvalidInputError
from .store import EmbeddingStore, create_store, default_chunk_rows


@dataclass(frozen=True)
class Planted:
    """Planted data: ``data ≈ codes @ atoms + noise``.

    Attributes
    ----------
    data : ndarray of shape (n_samples, n_features)
    atoms : ndarray of shape (n_atoms, n_features), unit rows
    indices : ndarray of shape (n_samples, n_nonzero), the planted supports
    values : ndarray of shape (n_samples, n_nonzero), their N(0, 1) coefficients
    """

    data: np.ndarray
    atoms: np.ndarray
    indices: np.ndarray
    values: np.ndarray


def planted_atoms(n_atoms: int, n_features: int, random_state=None) -> np.ndarray:
    """Gaussian atoms normalised to unit length, shape (n_atoms, n_features)."""
    rng = np.random.default_rng(random_state)
    atoms = rng.standard_normal((n_atoms, n_features))
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def _planted_block(atoms, n_samples, n_nonzero, noise_scale, snr_db, seed, dtype):
    rng = np.random.default_rng(seed)
    n_atoms = atoms.shape[0]
    # n_nonzero distinct atoms per row: the first columns of a random ranking
    indices = np.argsort(rng.random((n_samples, n_atoms)), axis=1)[:, :n_nonzero]
    values = rng.standard_normal((n_samples, n_nonzero))
    clean = np.einsum("ik,ikf->if", values, atoms[indices])
    noise = rng.standard_normal(clean.shape)
    if noise_scale is None:  # per-block SNR, as in the K-SVD paper's test
        noise *= np.linalg.norm(clean) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
    else:
        noise *= noise_scale
    return (clean + noise).astype(dtype), indices.astype(np.int32), values


def make_planted(n_samples: int = 1500, n_features: int = 20, n_atoms: int = 50,
                 n_nonzero: int = 3, snr_db: float | None = 20.0, *, random_state=None,
                 dtype=np.float64) -> Planted:
    """The K-SVD paper's synthetic test: sums of ``n_nonzero`` random atoms plus white noise.

    Parameters
    ----------
    n_samples, n_features, n_atoms, n_nonzero : int
    snr_db : float or None
        Signal-to-noise ratio of the whole matrix in dB; None for no noise.
    random_state : int, Generator or None

    Returns
    -------
    Planted
    """
    if n_nonzero > n_atoms:
        raise InvalidInputError(f"n_nonzero={n_nonzero} exceeds n_atoms={n_atoms}.")
    rng = np.random.default_rng(random_state)
    atoms = planted_atoms(n_atoms, n_features, rng)
    noise_scale = None if snr_db is not None else 0.0  # None: scale the noise to snr_db
    data, indices, values = _planted_block(atoms, n_samples, n_nonzero, noise_scale, snr_db,
                                           rng.integers(2**63), dtype)
    return Planted(data, atoms, indices, values)


def write_planted_store(path: str | os.PathLike, n_samples: int, n_features: int = 768,
                        n_atoms: int = 3072, n_nonzero: int = 10, snr_db: float = 20.0, *,
                        random_state=None, chunk_rows: int | None = None,
                        overwrite: bool = False, captions: bool = False,
                        scheduler: str = "threads") -> tuple[EmbeddingStore, np.ndarray]:
    """Write a planted embedding store block by block (memory does not grow with N).

    The layer ``final`` holds the data, ``planted/atoms`` the planted dictionary.
    ``captions=True`` adds captions naming each row's planted concepts ("concept_12 and …").

    Returns
    -------
    store : EmbeddingStore
    atoms : ndarray of shape (n_atoms, n_features)
    """
    rng = np.random.default_rng(random_state)
    atoms = planted_atoms(n_atoms, n_features, rng)
    rows = chunk_rows or default_chunk_rows(n_features)
    sizes = [min(rows, n_samples - start) for start in range(0, n_samples, rows)]
    seeds = rng.integers(2**63, size=len(sizes))
    # the noise level is fixed from the expected signal power, so every block has the same SNR
    noise_scale = np.sqrt(n_nonzero / n_features) / 10 ** (snr_db / 20)
    blocks = [dask.delayed(_planted_block)(atoms, size, n_nonzero, noise_scale, snr_db, seed,
                                           np.float32)
              for size, seed in zip(sizes, seeds, strict=True)]
    data = da.concatenate([da.from_delayed(b[0], (size, n_features), np.float32)
                           for b, size in zip(blocks, sizes, strict=True)])
    caption_list = None
    if captions:
        indices = np.concatenate([b[1] for b in dask.compute(*blocks, scheduler=scheduler)])
        caption_list = [" and ".join(f"concept_{j}" for j in row) for row in indices]
    with dask.config.set(scheduler=scheduler):
        store = create_store(path, {"final": data}, captions=caption_list, model="planted",
                             chunk_rows=rows, overwrite=overwrite,
                             attrs={"planted": {"n_atoms": n_atoms, "n_nonzero": n_nonzero,
                                                "snr_db": snr_db}})
    import zarr

    group = zarr.open_group(path, mode="r+")
    group.create_array("planted/atoms", data=atoms.astype(np.float32))
    return store, atoms
