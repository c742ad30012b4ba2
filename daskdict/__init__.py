"""daskdict: human-readable concepts in vision-transformer embeddings, by K-SVD out of core.

>>> import daskdict
>>> model = daskdict.fit("embeddings.zarr", n_atoms=3072, n_nonzero=10, n_iter=10)
>>> codes = model.encode("embeddings.zarr")
"""

from ._version import __version__
from .errors import (
    CheckpointMismatchError,
    CorruptChunkError,
    DaskdictError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from .learn import fit
from .model import KSVD, Codes, Dictionary, load
from .store import EmbeddingStore, create_store, open_store

__all__ = [
    "KSVD",
    "CheckpointMismatchError",
    "Codes",
    "CorruptChunkError",
    "DaskdictError",
    "Dictionary",
    "EmbeddingStore",
    "InvalidInputError",
    "OutputNotWritableError",
    "StoreNotFoundError",
    "__version__",
    "create_store",
    "fit",
    "load",
    "open_store",
]
