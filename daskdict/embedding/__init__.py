"""Embedding stores from images and a vision transformer, or texts and a text encoder (needs
the ``embed`` extra to run)."""

from daskdict.embedding.run import embed

__all__ = ["embed"]
