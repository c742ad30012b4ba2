"""daskdict: human-readable concepts in transformer embeddings, by K-SVD out of core.

>>> import daskdict
>>> model = daskdict.fit("embeddings.zarr", n_atoms=3072, n_nonzero=10, n_iter=10)
>>> codes = model.encode("embeddings.zarr")
>>> explanations = daskdict.explain(codes, "embeddings.zarr")

The pipeline's stages are packages, each importing only the ones before it:
:mod:`daskdict.io` (formats, stores, atomic writes) → :mod:`daskdict.compute` (runtimes,
clusters) → :mod:`daskdict.datasets` → :mod:`daskdict.learn` (kernels, coding, K-SVD, the
dictionary and estimator, plans) → :mod:`daskdict.embedding` → :mod:`daskdict.decomposition`
(a representation as the sum of its heads' and MLPs' contributions) → :mod:`daskdict.explanations` →
:mod:`daskdict.evaluation` → :mod:`daskdict.graph` → :mod:`daskdict.report` →
:mod:`daskdict.cli`. The names below are the public surface.
"""

from daskdict._version import __version__
from daskdict.compute import cluster
from daskdict.decomposition import CompAlign, component_scores, decompose
from daskdict.embedding import embed
from daskdict.errors import (
    CheckpointMismatchError,
    CorruptChunkError,
    DaskdictError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from daskdict.explanations import Explanations, LocalLM, OpenAIChat, explain
from daskdict.graph import ConceptGraph
from daskdict.io import EmbeddingStore, create_store, describe, load, open_store
from daskdict.learn import KSVD, Codes, Dictionary, Plan, fit, plan
from daskdict.learn.layers import fit_layers
from daskdict.report import write_report

__all__ = [
    "KSVD",
    "CheckpointMismatchError",
    "Codes",
    "CompAlign",
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
    "component_scores",
    "create_store",
    "decompose",
    "describe",
    "embed",
    "explain",
    "fit",
    "fit_layers",
    "load",
    "open_store",
    "plan",
    "write_report",
]
