"""Built-in data: planted dictionaries with sparse mixtures and noise (the K-SVD paper's test).

A planted store has a known dictionary, so a fit can be scored by how many planted atoms it
recovers; it is what ``daskdict demo`` and the benchmarks use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import zarr

from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.reads import default_chunk_rows
from daskdict.io.store import EmbeddingStore, create_store, open_store, write_vector

# the words of a text that the planted text encoder looks up: runs of letters, digits and
# underscores (every concept name is such a run of lower-case letters)
_WORDS = re.compile(r"\w+")


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


def _planted_blocks(n_samples, n_features, n_atoms, n_nonzero, snr_db, random_state,
                    chunk_rows):
    """The planted atoms, the block sizes, the delayed blocks and the generator after them.

    Each block is ``(data, indices, values)``; the same arguments give the same blocks.
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
    return atoms, rows, sizes, blocks, rng


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
    atoms, rows, sizes, blocks, _ = _planted_blocks(n_samples, n_features, n_atoms, n_nonzero,
                                                    snr_db, random_state, chunk_rows)
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
    group = zarr.open_group(path, mode="r+")
    group.create_array("planted/atoms", data=atoms.astype(np.float32))
    return store, atoms


# Concrete nouns for named planted concepts (none is an English stop word); beyond this list,
# names are made-up pronounceable words.
CONCEPT_NAMES = (
    "dog cat horse bicycle guitar piano lighthouse volcano tractor umbrella castle bridge "
    "waterfall pizza sushi penguin giraffe elephant zebra tiger kangaroo dolphin octopus "
    "butterfly tulip cactus pumpkin strawberry pineapple banana lemon cherry avocado "
    "carrot mushroom broccoli sandwich pancake cupcake teapot kettle lantern candle clock "
    "telescope microscope camera laptop keyboard headphones violin trumpet drum saxophone "
    "harp accordion sailboat canoe submarine helicopter airplane rocket balloon kite train "
    "tram scooter skateboard surfboard snowboard sled tent hammock bench fountain statue "
    "windmill barn greenhouse pyramid temple cathedral mosque pagoda igloo skyscraper "
    "tunnel canyon glacier desert jungle meadow orchard vineyard harbor marina island reef "
    "owl eagle parrot flamingo peacock swan duck rooster goat sheep llama camel panda koala "
    "squirrel rabbit hedgehog fox wolf bear moose deer turtle frog lizard crocodile shark "
    "whale jellyfish starfish crab lobster snail beetle ladybug dragonfly bee spider "
    "anchor compass map globe crown sword shield helmet armor trophy medal ring necklace "
    "bracelet wallet backpack suitcase hat scarf glove boot sneaker sandal jacket sweater "
    "dress tie kimono apron").split()

# words shared by groups of concepts (a context word per group) and by all captions
CONTEXT_WORDS = ("sunny rainy snowy foggy indoor outdoor vintage modern rustic tropical "
                 "urban rural colorful dark bright quiet").split()
FILLER_WORDS = ("photo picture image shot view scene closeup snapshot daylight background "
                "nice beautiful").split()


def concept_names(n_concepts: int, random_state=None) -> list[str]:
    """``n_concepts`` distinct names: the built-in nouns first, then made-up words."""
    names = list(CONCEPT_NAMES[:n_concepts])
    rng = np.random.default_rng(random_state)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    taken = set(names) | set(CONTEXT_WORDS) | set(FILLER_WORDS)
    while len(names) < n_concepts:
        word = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels))
                       for _ in range(3))
        if word not in taken:
            taken.add(word)
            names.append(word)
    return names


def planted_captions(indices: np.ndarray, values: np.ndarray, names: list[str], *,
                     n_context_groups: int = 16, mention_prob: float = 0.9,
                     context_prob: float = 0.5, random_state=None) -> list[str]:
    """Captions naming each row's planted concepts, with distractor words shared across them.

    Every row's strongest concept is named; each other active concept with probability
    ``mention_prob``. Concept ``j`` has a context word shared with the other concepts of its
    group (``j % n_context_groups``), added with probability ``context_prob``, and every
    caption gets one or two filler words common to all concepts.

    Parameters
    ----------
    indices, values : ndarray of shape (n_samples, n_nonzero)
        Planted supports and coefficients (``-1`` / ``0`` padding allowed).
    names : list of str
        Name of each planted concept.

    Returns
    -------
    list of str of length n_samples
    """
    rng = np.random.default_rng(random_state)
    n_samples, width = indices.shape
    strength = np.where(indices >= 0, np.abs(values), -1.0)
    order = np.argsort(-strength, axis=1)
    mention = rng.random((n_samples, width)) < mention_prob
    mention[:, 0] = True
    add_context = rng.random((n_samples, width)) < context_prob
    fillers = rng.integers(len(FILLER_WORDS), size=(n_samples, 2))
    two_fillers = rng.random(n_samples) < 0.5
    captions = []
    for row in range(n_samples):  # data generation only: not part of any algorithm
        atoms = [int(indices[row, j]) for j in order[row] if indices[row, j] >= 0]
        named = [names[a] for a, m in zip(atoms, mention[row], strict=False) if m]
        contexts = sorted({CONTEXT_WORDS[a % n_context_groups % len(CONTEXT_WORDS)]
                           for a, c in zip(atoms, add_context[row], strict=False) if c})
        words = [FILLER_WORDS[fillers[row, 0]]]
        if two_fillers[row]:
            words.append(FILLER_WORDS[fillers[row, 1]])
        if not named:  # a row without planted concepts (all-zero codes)
            subject = "blank scene"
        elif len(named) == 1:
            subject = named[0]
        else:
            subject = ", a ".join(named[:-1]) + " and a " + named[-1]
        text = f"a {' '.join(words)} of a {subject}"
        if contexts:
            text += " in a " + " and ".join(contexts) + " setting"
        captions.append(text)
    return captions


def write_named_planted_store(path: str | os.PathLike, n_samples: int, n_features: int = 768,
                              n_atoms: int = 3072, n_nonzero: int = 10, snr_db: float = 20.0,
                              *, random_state=None, chunk_rows: int | None = None,
                              overwrite: bool = False, scheduler: str = "threads",
                              **caption_options) -> tuple[EmbeddingStore, np.ndarray, list[str]]:
    """A planted store whose concepts have names and whose captions mention them.

    The embeddings are exactly those of :func:`write_planted_store` with the same arguments
    (so a fit recovers the same atoms); the store also holds ``items/caption`` (from
    :func:`planted_captions`), ``planted/indices`` and ``planted/values`` (the true codes),
    and the names in its attributes (``attrs["planted"]["names"]``).

    Parameters
    ----------
    path, n_samples, n_features, n_atoms, n_nonzero, snr_db, random_state, chunk_rows,
    overwrite, scheduler
        As for :func:`write_planted_store`.
    **caption_options
        Passed to :func:`planted_captions` (``mention_prob``, ``context_prob``, …).

    Returns
    -------
    store : EmbeddingStore
    atoms : ndarray of shape (n_atoms, n_features)
    names : list of str of length n_atoms
    """
    _, atoms = write_planted_store(path, n_samples, n_features, n_atoms, n_nonzero, snr_db,
                                   random_state=random_state, chunk_rows=chunk_rows,
                                   overwrite=overwrite, scheduler=scheduler)
    # the same blocks again, for the planted supports
    _, _, _, blocks, rng = _planted_blocks(n_samples, n_features, n_atoms, n_nonzero, snr_db,
                                           random_state, chunk_rows)
    parts = dask.compute(*[(b[1], b[2]) for b in blocks], scheduler=scheduler)
    indices = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts]).astype(np.float32)
    names = concept_names(n_atoms, rng)
    captions = planted_captions(indices, values, names, random_state=rng, **caption_options)
    group = zarr.open_group(path, mode="r+")
    write_vector(group, "items/caption", np.asarray(captions, dtype=str))
    group.create_array("planted/indices", data=indices)
    group.create_array("planted/values", data=values)
    planted = dict(group.attrs[formats.HEADER_KEY].get("planted", {}))
    formats.update_header(group, planted={**planted, "names": names})
    return open_store(path), atoms, names


def planted_text_encoder(store_or_atoms, names: list[str] | None = None):
    """A stand-in for CLIP's text tower on a named planted store.

    A text's embedding is the normalised sum of the planted atoms whose names it contains, so
    captions and the store's embeddings share one space (as CLIP's text and image embeddings
    do). Use it with ``explain(..., method="falcon", text_encoder=...)`` when no CLIP is at hand.

    Parameters
    ----------
    store_or_atoms : EmbeddingStore, path, or ndarray of shape (n_atoms, n_features)
    names : list of str, optional
        Required with an array; read from the store otherwise.

    Returns
    -------
    callable
        ``encode(texts) -> ndarray of shape (len(texts), n_features)``.
    """
    if isinstance(store_or_atoms, np.ndarray):
        atoms = store_or_atoms
        if names is None:
            raise InvalidInputError("planted_text_encoder needs names= with an atoms array.")
    else:
        store = (store_or_atoms if isinstance(store_or_atoms, EmbeddingStore)
                 else open_store(store_or_atoms))
        if "planted/atoms" not in store.group:
            raise InvalidInputError(f"{store.path} is not a planted store (no planted/atoms).")
        atoms = np.asarray(store.group["planted/atoms"][...])
        names = names or store.attrs.get("planted", {}).get("names")
        if not names:
            raise InvalidInputError(f"{store.path} has no concept names; write it with "
                                    "write_named_planted_store.")
    position = {name: i for i, name in enumerate(names)}

    def encode(texts) -> np.ndarray:
        out = np.zeros((len(texts), atoms.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            hits = {position[w] for w in _WORDS.findall(str(text).lower()) if w in position}
            if hits:
                out[row] = atoms[sorted(hits)].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    return encode


def planted_images(store, size: int = 32):
    """Stand-in pictures of a named planted store's items, for galleries and reports.

    Item ``j`` is drawn as horizontal bands, one per planted concept, in a colour fixed per
    concept and with a height proportional to its |coefficient|: the top items of a concept
    share a colour.

    Returns
    -------
    callable
        ``row -> ndarray of shape (size, size, 3), uint8``.
    """
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    if "planted/indices" not in store.group:
        raise InvalidInputError(f"{store.path} holds no planted codes (planted/indices).")
    indices = store.group["planted/indices"]
    values = store.group["planted/values"]
    n_atoms = int(store.attrs.get("planted", {}).get("n_atoms", 1))
    palette = (np.random.default_rng(12345).random((max(n_atoms, 1), 3)) * 200 + 40
               ).astype(np.uint8)

    def draw(row: int) -> np.ndarray:
        atoms = np.asarray(indices[int(row)])
        weights = np.abs(np.asarray(values[int(row)], dtype=np.float64))
        picture = np.full((size, size, 3), 245, dtype=np.uint8)
        order = np.argsort(-weights)
        heights = np.maximum(1, np.round(weights[order] / max(weights.sum(), 1e-12) * size))
        top = 0
        for atom, height in zip(atoms[order], heights.astype(int), strict=True):
            if atom >= 0:
                picture[top:top + height] = palette[atom]
                top += height
        return picture

    return draw
