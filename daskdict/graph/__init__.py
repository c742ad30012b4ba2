"""The concept graph: links between the concepts of consecutive layers."""

from daskdict.graph.estimator import ConceptGraph

__all__ = ["ConceptGraph"]
