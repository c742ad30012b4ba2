"""How good a dictionary and its explanations are: recovery, reconstruction, CLIP scores, and
concept quality against independent labels (purity, agreement, hierarchy, stability)."""

from daskdict.evaluation.metrics import (
    autointerp_scores,
    clip_text_encoder,
    max_coherence,
    plot_autointerp,
    reconstruction_metrics,
    recovered_fraction,
)
from daskdict.evaluation.quality import (
    TagSets,
    agreement,
    concept_quality,
    geometry_alignment,
    hierarchy_similarity,
    purity,
    random_groups,
    stability,
)

__all__ = [
    "TagSets",
    "agreement",
    "autointerp_scores",
    "clip_text_encoder",
    "concept_quality",
    "geometry_alignment",
    "hierarchy_similarity",
    "max_coherence",
    "plot_autointerp",
    "purity",
    "random_groups",
    "reconstruction_metrics",
    "recovered_fraction",
    "stability",
]
