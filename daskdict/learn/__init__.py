"""Dictionary learning: numba kernels, block coding, out-of-core K-SVD and its estimators."""

from daskdict.learn.dictionary import KSVD, Codes, Dictionary, load
from daskdict.learn.planning import Plan, plan
from daskdict.learn.training import fit

__all__ = ["KSVD", "Codes", "Dictionary", "Plan", "fit", "load", "plan"]
