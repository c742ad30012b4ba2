"""daskdict: human-readable concepts in vision-transformer embeddings, by K-SVD out of core.

>>> import daskdict
>>> model = daskdict.fit("embeddings.zarr", n_atoms=3072, n_nonzero=10, n_iter=10)
>>> codes = model.encode("embeddings.zarr")

``daskdict.embed(images, "embeddings.zarr", model=...)`` writes such a store from images (needs
the ``embed`` extra: PyTorch, transformers, Pillow; imported only when it runs).
``daskdict.explain(codes, "embeddings.zarr")`` explains each concept from the captions.
"""

from ._llm import LocalLM, OpenAIChat
from ._version import __version__
from .cluster import cluster
from .embed import embed
from .errors import (
    CheckpointMismatchError,
    CorruptChunkError,
    DaskdictError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from .explain import Explanations, explain
from .graph import ConceptGraph, fit_layers
from .learn import fit
from .model import KSVD, Codes, Dictionary, load
from .plan import Plan, plan
from .store import EmbeddingStore, create_store, open_store

__all__ = [
    "KSVD",
    "CheckpointMismatchError",
    "Codes",
    "ConceptGraph",
    "CorruptChunkError",
    "DaskdictError",
    "Dictionary",
    "EmbeddingStore",
    "Explanations",
    "InvalidInputError",
    "LocalLM",
    "OpenAIChat",
    "OutputNotWritableError",
    "Plan",
    "StoreNotFoundError",
    "__version__",
    "cluster",
    "create_store",
    "embed",
    "explain",
    "fit",
    "fit_layers",
    "load",
    "open_store",
    "plan",
]
