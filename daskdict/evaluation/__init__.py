"""How good a dictionary and its explanations are: recovery, reconstruction, CLIP scores."""

from daskdict.evaluation.metrics import (
    autointerp_scores,
    max_coherence,
    reconstruction_metrics,
    recovered_fraction,
)

__all__ = ["autointerp_scores", "max_coherence", "reconstruction_metrics", "recovered_fraction"]
