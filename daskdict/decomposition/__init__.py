"""Exact decompositions of an encoder's output into per-head, per-MLP and initial components
(needs the ``embed`` extra to run)."""

from daskdict.decomposition.run import component_layers, decompose

__all__ = ["component_layers", "decompose"]
