"""daskdict: human-readable concepts in vision-transformer embeddings, by K-SVD out of core.

>>> import daskdict
>>> model = daskdict.fit("embeddings.zarr", n_atoms=3072, n_nonzero=10, n_iter=10)
>>> codes = model.encode("embeddings.zarr")

``daskdict.embed(images, "embeddings.zarr", model=...)`` writes such a store from images (needs
the ``embed`` extra: PyTorch, transformers, Pillow; imported only when it runs).
``daskdict.explain(codes, "embeddings.zarr")`` explains each concept from the captions.
"""

from daskdict._version import __version__
from daskdict.compute.clusters import cluster
from daskdict.embedding.run import embed
from daskdict.errors import (
    CheckpointMismatchError,
    CorruptChunkError,
    DaskdictError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from daskdict.explanations.explain import Explanations, explain
from daskdict.explanations.llm import LocalLM, OpenAIChat
from daskdict.graph.estimator import ConceptGraph, fit_layers
from daskdict.io.store import EmbeddingStore, create_store, open_store
from daskdict.learn.dictionary import KSVD, Codes, Dictionary, load
from daskdict.learn.planning import Plan, plan
from daskdict.learn.training import fit

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
