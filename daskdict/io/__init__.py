"""On-disk formats: embedding stores, atomic writes, and reads of every supported source."""

from daskdict.io.store import EmbeddingStore, create_store, open_store

__all__ = ["EmbeddingStore", "create_store", "open_store"]
