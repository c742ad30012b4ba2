"""Explaining concepts from captions: keywords, FALCON contrast, and language-model summaries."""

from daskdict.explanations.explain import explain
from daskdict.explanations.items import item_concepts
from daskdict.explanations.llm import LocalLM, OpenAIChat
from daskdict.explanations.table import Explanations

__all__ = ["Explanations", "LocalLM", "OpenAIChat", "explain", "item_concepts"]
