"""Explaining concepts from captions: keywords, FALCON contrast, and language-model summaries."""

from daskdict.explanations.explain import Explanations, explain
from daskdict.explanations.llm import LocalLM, OpenAIChat

__all__ = ["Explanations", "LocalLM", "OpenAIChat", "explain"]
