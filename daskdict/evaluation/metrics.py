"""Metrics of a dictionary (reconstruction, sparsity, coherence, recovery of a planted one), and
the auto-interpretability of its explanations.

Auto-interpretability of explanations with CLIPScore, as in "Disentangling Concepts and
Constructing Human-Compatible Explanations for Image Embeddings" (Valentin et al.).

Each image is captioned from its concepts: ``"A photo containing"`` followed by a markdown
bullet list of the first theme of each active concept (strongest first). That caption, the
image's true caption and a meaningless lorem-ipsum string are scored against the image with
CLIP: the cosine of the image and text embeddings, and Hessel et al.'s (2021) CLIPScore
``2.5 * max(cos, 0)``. Without images, :func:`reference_scores` compares the generated caption
with the true one in a text-embedding space.

The CLIP model is any Hugging Face CLIP, by hub name or local folder (``embed`` extra:
PyTorch, transformers); it is loaded when first used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from daskdict.embedding.clip import CLIP
from daskdict.errors import InvalidInputError
from daskdict.learn.coding import unit_rows

# The K-SVD paper's criterion: a planted atom counts as recovered when a learned atom has
# 1 - |d_i . d_j| below this.
RECOVERY_THRESHOLD = 0.01


def recovered_fraction(true_atoms, learned_atoms,
                       threshold: float = RECOVERY_THRESHOLD) -> float:
    """Fraction of planted atoms matched by some learned atom (1 - |d_i . d̂_j| < threshold).

    Parameters
    ----------
    true_atoms : array of shape (n_true, n_features)
    learned_atoms : array of shape (n_learned, n_features)
    """
    sim = np.abs(unit_rows(true_atoms) @ unit_rows(learned_atoms).T)
    return float(np.mean(1.0 - sim.max(axis=1) < threshold))


def align_atoms(true_atoms, learned_atoms) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian alignment maximising |cosine|: (learned index per true atom, |cosine|)."""
    sim = np.abs(unit_rows(true_atoms) @ unit_rows(learned_atoms).T)
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
    unit = unit_rows(atoms)
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


# ---------------------------------------------------------------------- auto-interpretability

PREFIX = "A photo containing"
LOREM_IPSUM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
               "incididunt ut labore et dolore magna aliqua.")
CLIPSCORE_WEIGHT = 2.5  # Hessel et al. 2021


def concept_caption(themes: Sequence[str]) -> str:
    """``"A photo containing"`` and a markdown list of ``themes``."""
    return "\n".join([PREFIX, *(f"- {theme}" for theme in themes if theme)])


def concept_captions(codes, explanations) -> list[str]:
    """The concept caption of every item: first themes of its active concepts, strongest first.

    Parameters
    ----------
    codes : Codes
    explanations : Explanations

    Returns
    -------
    list of str of length n_items
    """
    codes = codes.compute()
    strength = np.where(codes.indices >= 0, np.abs(codes.values), -1.0)
    order = np.argsort(-strength, axis=1, kind="stable")
    ranked = np.take_along_axis(codes.indices, order, axis=1)
    signs = np.sign(np.take_along_axis(codes.values, order, axis=1))
    first: dict[tuple[int, float], str] = {}  # (atom, sign): the first theme of that side
    captions = []
    for atoms, row_signs in zip(ranked, signs, strict=True):
        themes = list(dict.fromkeys(_first_theme(explanations, first, int(a), s)
                                    for a, s in zip(atoms, row_signs, strict=True) if a >= 0))
        captions.append(concept_caption([t for t in themes if t]))
    return captions


def _first_theme(explanations, cache: dict, atom: int, sign: float) -> str:
    """The first theme of the concept explaining ``atom`` on the side of ``sign`` ("" if
    none), remembered in ``cache``."""
    if (atom, sign) not in cache:
        try:
            themes = explanations.concept_row(atom, sign)["themes"]
        except KeyError:
            themes = []
        cache[(atom, sign)] = themes[0] if themes else ""
    return cache[(atom, sign)]


@dataclass
class AutoInterpScores:
    """Per-image scores of three captions: the concepts', the true one, lorem ipsum.

    Attributes
    ----------
    cosine : dict of str to ndarray of shape (n_images,)
        Keys ``"explanation"``, ``"caption"``, ``"lorem"``.
    clipscore : dict of str to ndarray of shape (n_images,)
        ``2.5 * max(cosine, 0)``.
    generated : list of str
        The concept captions.
    """

    cosine: dict
    clipscore: dict
    generated: list = field(default_factory=list)

    def summary(self) -> dict:
        """Mean cosine and CLIPScore of each caption kind."""
        return {kind: {"mean_cosine": float(np.mean(self.cosine[kind])),
                       "mean_clipscore": float(np.mean(self.clipscore[kind]))}
                for kind in self.cosine}

    def to_dict(self) -> dict:
        return {"cosine": {k: v.tolist() for k, v in self.cosine.items()},
                "clipscore": {k: v.tolist() for k, v in self.clipscore.items()},
                "generated": list(self.generated), "summary": self.summary()}


def clipscore(cosine: np.ndarray) -> np.ndarray:
    """Hessel et al.'s CLIPScore, ``2.5 * max(cos, 0)``."""
    return CLIPSCORE_WEIGHT * np.maximum(np.asarray(cosine, dtype=np.float64), 0.0)


def autointerp_scores(codes, explanations, true_captions: Sequence[str], *, clip=None,
                      images: Sequence | None = None, image_embeddings=None,
                      text_encoder: Callable | None = None) -> AutoInterpScores:
    """CLIPScore of the concept captions, the true captions and lorem ipsum, per image.

    Parameters
    ----------
    codes : Codes
        Codes of the images (n_images rows).
    explanations : Explanations
    true_captions : sequence of str of length n_images
    clip : CLIP, str or path, optional
        A Hugging Face CLIP (name or folder); used for ``images`` and texts.
    images : sequence of length n_images, optional
        PIL images, paths or uint8 arrays; embedded with ``clip``.
    image_embeddings : array of shape (n_images, d), optional
        Precomputed CLIP image embeddings instead of ``images``.
    text_encoder : callable, optional
        ``texts -> embeddings`` in the image embeddings' space (default: ``clip``).

    Returns
    -------
    AutoInterpScores
    """
    if clip is not None and not isinstance(clip, CLIP):
        clip = CLIP(clip)
    generated = concept_captions(codes, explanations)
    n_images = len(generated)
    if len(true_captions) != n_images:
        raise InvalidInputError(f"Expected {n_images} true captions (one per coded image). "
                                f"Got {len(true_captions)}.")
    if image_embeddings is None:
        if images is None or clip is None:
            raise InvalidInputError("autointerp_scores needs images= and clip=, or "
                                    "image_embeddings= (and a text_encoder= or clip=).")
        if len(images) != n_images:
            raise InvalidInputError(f"Expected {n_images} images. Got {len(images)}.")
        image_embeddings = clip.encode_images(images)
    image_embeddings = unit_rows(np.asarray(image_embeddings), np.float32)
    encode = text_encoder or (clip.encode_texts if clip is not None else None)
    if encode is None:
        raise InvalidInputError("autointerp_scores needs clip= or text_encoder= for texts.")
    texts = {"explanation": generated, "caption": [str(c) for c in true_captions],
             "lorem": [LOREM_IPSUM]}
    cosine = {}
    for kind, batch in texts.items():
        embedded = unit_rows(np.asarray(encode(batch)), np.float32)
        if embedded.shape[1] != image_embeddings.shape[1]:
            raise InvalidInputError(
                f"Text embeddings have {embedded.shape[1]} features, image embeddings "
                f"{image_embeddings.shape[1]}: use one CLIP for both.")
        if kind == "lorem":
            cosine[kind] = image_embeddings @ embedded[0]
        else:
            cosine[kind] = np.einsum("ij,ij->i", image_embeddings, embedded)
    cosine = {k: np.asarray(v, dtype=np.float64) for k, v in cosine.items()}
    return AutoInterpScores(cosine, {k: clipscore(v) for k, v in cosine.items()}, generated)


def reference_scores(generated: Sequence[str], true_captions: Sequence[str],
                     text_encoder: Callable) -> np.ndarray:
    """Cosine of generated and true captions in a text-embedding space, shape (n_images,).

    For users without the images: any ``texts -> embeddings`` function (a CLIP text tower, a
    sentence-embedding model).
    """
    if len(generated) != len(true_captions):
        raise InvalidInputError(f"Expected as many true captions as generated ones "
                                f"({len(generated)}). Got {len(true_captions)}.")
    left = unit_rows(np.asarray(text_encoder(list(generated))), np.float32)
    right = unit_rows(np.asarray(text_encoder([str(c) for c in true_captions])), np.float32)
    return np.einsum("ij,ij->i", left, right).astype(np.float64)


def plot_autointerp(scores: AutoInterpScores, ax=None, bins: int = 30):
    """The concept paper's score histogram: cos(CLIP(image), CLIP(text)) of the three texts."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    labels = {"caption": "true caption", "explanation": "concept explanations",
              "lorem": "lorem ipsum"}
    values = np.concatenate(list(scores.cosine.values()))
    edges = np.linspace(values.min(), values.max() + 1e-9, bins + 1)
    for kind in ("caption", "explanation", "lorem"):
        ax.hist(scores.cosine[kind], bins=edges, alpha=0.5, label=labels[kind])
    ax.set_xlabel("cosine similarity of CLIP image and text embeddings")
    ax.set_ylabel("images")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
