"""Which heads and MLPs write what: exact decompositions of a vision transformer's or a BERT's
output into per-head, per-MLP and initial components, per item or per token (needs the
``embed`` extra to run), their alignment to a CLIP
space (CompAlign), component scores for text-described features, and what they are used for
(retrieval by feature, token heat maps, removing a spurious cue)."""

from daskdict.decomposition.align import CompAlign
from daskdict.decomposition.applications import (
    ablate,
    plot_heatmap,
    retrieve_by_example,
    retrieve_by_text,
    token_heatmap,
)
from daskdict.decomposition.run import component_layers, decompose
from daskdict.decomposition.scores import (
    ComponentScores,
    component_scores,
    feature_vectors,
    ordering_agreement,
    proxy_scores,
)
from daskdict.decomposition.tokens import token_contributions

__all__ = [
    "CompAlign",
    "ComponentScores",
    "ablate",
    "component_layers",
    "component_scores",
    "decompose",
    "feature_vectors",
    "ordering_agreement",
    "plot_heatmap",
    "proxy_scores",
    "retrieve_by_example",
    "retrieve_by_text",
    "token_contributions",
    "token_heatmap",
]
