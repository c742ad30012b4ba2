"""Embedding stores from images and a vision transformer (needs the ``embed`` extra to run)."""

from daskdict.embedding.run import embed

__all__ = ["embed"]
