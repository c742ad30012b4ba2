"""The concept graph: links between the concepts of consecutive layers."""

from daskdict.graph.estimator import ConceptGraph, fit_layers

__all__ = ["ConceptGraph", "fit_layers"]
