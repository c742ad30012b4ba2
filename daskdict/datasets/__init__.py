"""Planted data with a known answer: dictionaries, captions and stores for tests and demos."""

from daskdict.datasets.planted import (
    Planted,
    concept_names,
    make_planted,
    planted_atoms,
    planted_captions,
    planted_images,
    planted_text_encoder,
    write_named_planted_store,
    write_planted_store,
)

__all__ = [
    "Planted",
    "concept_names",
    "make_planted",
    "planted_atoms",
    "planted_captions",
    "planted_images",
    "planted_text_encoder",
    "write_named_planted_store",
    "write_planted_store",
]
