"""How good a dictionary and its explanations are: recovery, reconstruction, CLIP scores, and
concept quality against independent labels (purity, agreement, hierarchy, stability)."""

from daskdict.embedding.clip import clip_text_encoder
from daskdict.evaluation.compare import compare, plot_compare
from daskdict.evaluation.judged import (
    AgreementResult,
    best_and_worst,
    derangement,
    explanation_agreement,
)
from daskdict.evaluation.metrics import (
    autointerp_scores,
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
    "AgreementResult",
    "TagSets",
    "agreement",
    "autointerp_scores",
    "best_and_worst",
    "clip_text_encoder",
    "compare",
    "concept_quality",
    "derangement",
    "explanation_agreement",
    "geometry_alignment",
    "hierarchy_similarity",
    "max_coherence",
    "plot_autointerp",
    "plot_compare",
    "purity",
    "random_groups",
    "reconstruction_metrics",
    "recovered_fraction",
    "stability",
]
