"""Dictionary learning: numba kernels, block coding, out-of-core K-SVD and its estimators.

Modules: :mod:`~daskdict.learn.kernels` (numba), :mod:`~daskdict.learn.coding` (validation of
rows, Gram matrix, codes), :mod:`~daskdict.learn.shares` (a worker's rows and the merge of
statistics), :mod:`~daskdict.learn.updates` (atom updates, replacement, initialisation),
:mod:`~daskdict.learn.params`, :mod:`~daskdict.learn.checkpoints`,
:mod:`~daskdict.learn.training` (:func:`fit`), :mod:`~daskdict.learn.dictionary`
(:class:`Dictionary`, :class:`Codes`), :mod:`~daskdict.learn.estimator` (:class:`KSVD`) and
:mod:`~daskdict.learn.planning` (:func:`plan`).
"""

from daskdict.io.formats import load
from daskdict.learn.coding import codes_to_coo, codes_to_csr, unit_rows
from daskdict.learn.dictionary import Codes, Dictionary
from daskdict.learn.estimator import KSVD
from daskdict.learn.layers import fit_layers, hidden_layers
from daskdict.learn.planning import Plan, plan
from daskdict.learn.training import fit

__all__ = ["KSVD", "Codes", "Dictionary", "Plan", "codes_to_coo", "codes_to_csr", "fit",
           "fit_layers", "hidden_layers", "load", "plan", "unit_rows"]
