"""Embedding stores from images and a vision transformer, or texts and a text encoder (needs
the ``embed`` extra to run); text and CLIP encoders for a few texts in memory."""

from daskdict.embedding.clip import CLIP, clip_text_encoder
from daskdict.embedding.run import embed
from daskdict.embedding.text import sentence_encoder

__all__ = ["CLIP", "clip_text_encoder", "embed", "sentence_encoder"]
