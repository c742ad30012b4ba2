"""Hyper-parameters of a fit and of an encoding, validated at the boundary; random seeds.

Every random draw of a fit comes from one integer, its *seed* (:func:`base_seed`), and the
iteration's number (:func:`iteration_rng`), so that a resumed fit draws what the uninterrupted
one would have drawn.
"""

from __future__ import annotations

import importlib.util
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.learn import reduced
from daskdict.validation import check_choice, check_positive_int

CODER_NAMES = ("omp", "mp")
UPDATES = ("auto", "mod", "approx", "ksvd")
# "auto" takes the method of optimal directions up to this many atoms: its code Gram matrix
# (n_atoms^2 float64, 128 MiB at 4,096 atoms) is summed by every task beside the statistics of
# the approximate update (n_atoms x n_features), and solved on the driver (n_atoms^3 / 3).
MOD_MAX_ATOMS = 4096
INITS = ("data", "kmeans++", "random")
DTYPES = ("float32", "float64")
# the precision of the correlations Y_b D^T that choose each code's atoms ("auto" is resolved
# to one of the others once per fit, see check_correlation_dtype)
CORRELATION_DTYPES = ("float32", "bfloat16", "auto")


@dataclass(frozen=True)
class FitParams:
    """Hyper-parameters of a fit, validated; stored in models and checkpoints."""

    n_atoms: int
    n_nonzero: int
    n_iter: int
    coder: str = "omp"
    tol: float = 0.0
    update: str = "mod"
    atom_batch_size: int | None = None
    shuffle_atoms: bool = True
    replace_atoms: bool = True
    init: str = "data"
    dtype: str = "float32"
    positive: bool = False
    center: bool = False
    correlation_dtype: str = "float32"
    # why: "bfloat16 (auto: amx_bf16, torch 2.13)"; describes the choice, does not make it
    correlations: str = "float32"
    # why: "mod (auto: 128 atoms <= 4096)"; describes the choice, does not make it
    update_choice: str = ""
    # "cpu": the numba coders; "cuda" or "cuda:N": the device coder (PyTorch)
    device: str = "cpu"

    def to_dict(self) -> dict:
        """The parameters as a JSON-ready dict."""
        return dict(self.__dict__)

    @property
    def coder_key(self) -> str:
        """The coder's key in :data:`daskdict.learn.coding.CODERS` (with its sign rule)."""
        return coder_key(self.coder, self.positive, self.correlation_dtype, self.device)


def coder_key(coder: str, positive: bool, correlation_dtype: str = "float32",
              device: str = "cpu") -> str:
    """The key of ``coder`` in :data:`daskdict.learn.coding.CODERS`: ``"omp"``,
    ``"omp-positive"`` (non-negative codes), each with ``"-bf16"`` for correlations from
    bfloat16 inputs (``correlation_dtype="bfloat16"``, resolved: see
    :func:`check_correlation_dtype`); with ``"@<device>"`` after it for the device coder
    (``"omp@cuda"``, see :func:`check_device`)."""
    key = f"{coder}-positive" if positive else coder
    key = key + reduced.SUFFIX if correlation_dtype == "bfloat16" else key
    return key if device == "cpu" else f"{key}@{device}"


def check_device(device: Any, coder: str, dtype: str, correlation_dtype: str) -> str:
    """``device`` checked for a fit: ``"cpu"`` (the numba coders), ``"cuda"`` or ``"cuda:N"``
    (the device coder: Batch-OMP, float32, float32 correlations). Whether the workers see
    such a GPU is checked where they run (:func:`daskdict.learn.devices.prepare_workers`)."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit())):
        raise InvalidInputError(
            f"Expected device 'cpu' (the numba coders), 'cuda' or 'cuda:N'. Got {device!r:.100}.")
    if device == "cpu":
        return device
    for wrong, why in ((coder != "omp", f"coder={coder!r}; use coder='omp'"),
                       (dtype != "float32", f"dtype={dtype!r}; use dtype='float32'"),
                       (correlation_dtype != "float32",
                        f"correlation_dtype={correlation_dtype!r}; use 'float32'")):
        if wrong:
            raise InvalidInputError(f"device={device!r} runs Batch-OMP in float32, not {why}.")
    return device


def check_correlation_dtype(correlation_dtype: Any, coder: str, dtype: str
                            ) -> tuple[str, str]:
    """``correlation_dtype`` resolved once for a fit: ``("float32" or "bfloat16", why)``.

    ``"auto"`` picks bfloat16 only for Batch-OMP on float32 data, where torch is importable
    and the CPU reports bfloat16 units; ``"bfloat16"`` is refused, naming the fix, where it
    cannot be used.
    """
    check_choice("correlation_dtype", correlation_dtype, CORRELATION_DTYPES)
    return resolve_correlations(correlation_dtype, coder, dtype)


# CPU flags (Linux /proc/cpuinfo) of bfloat16 matrix or vector units.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    path = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not path.exists():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def torch_version() -> str | None:
    """The version of torch, or None when it cannot be imported (asked only where bfloat16
    correlations would be used, which import it anyway)."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__).split("+")[0]


def resolve_correlations(correlation_dtype: str, coder: str = "omp", dtype: str = "float32"
                         ) -> tuple[str, str]:
    """The precision a fit's correlations use, and why, decided once per fit.

    Parameters
    ----------
    correlation_dtype : {"float32", "bfloat16", "auto"}
        Checked by the caller.
    coder, dtype : str
        The fit's coder and dtype: bfloat16 correlations serve Batch-OMP (signed or
        non-negative) on float32 data.

    Returns
    -------
    chosen : {"float32", "bfloat16"}
    note : str
        E.g. ``"bfloat16 (auto: amx_bf16, torch 2.13)"``.

    Raises
    ------
    InvalidInputError
        For ``"bfloat16"`` without torch, with coder ``"mp"`` or with dtype ``"float64"``.
    """
    if correlation_dtype == "float32":
        return "float32", "float32"
    forced = correlation_dtype == "bfloat16"
    why = None
    if coder != "omp":
        why = f"coder={coder!r} takes float32 correlations; use coder='omp'"
    elif dtype != "float32":
        why = f"dtype={dtype!r} keeps correlations in its own precision; use dtype='float32'"
    units = sorted(cpu_flags().intersection(BF16_FLAGS))
    if why is None and not forced and not units:
        why = "the CPU reports no bfloat16 units (amx_bf16, avx512_bf16)"
    version = torch_version() if why is None else None
    if why is None and version is None:
        why = f"torch is not installed: {reduced.TORCH_FIX}" if forced else "torch is not installed"
    if forced:
        if why is not None:
            raise InvalidInputError(f"correlation_dtype='bfloat16' cannot be used: {why}.")
        plain = "" if reduced.rounds_inputs() else "; torch computes them in float32 here"
        return "bfloat16", f"bfloat16 (forced, torch {version}{plain})"
    if why is None and not reduced.rounds_inputs():
        why = (f"torch {version} computes float32 products in float32 on this CPU, not from "
               "bfloat16 inputs")
    if why is not None:
        return "float32", f"float32 (auto: {why.partition(';')[0]})"
    return "bfloat16", f"bfloat16 (auto: {', '.join(units)}, torch {version})"


def check_positive(positive: Any, coder: str, update: str) -> bool:
    """``positive`` as a bool, refused where the coder or the update cannot keep codes
    non-negative."""
    if not isinstance(positive, (bool, np.bool_)):
        raise InvalidInputError(f"Expected positive True or False. Got {positive!r:.100}.")
    if positive and coder != "omp":
        raise InvalidInputError(f"positive=True needs coder='omp' (non-negative Batch-OMP); "
                                f"got coder={coder!r}.")
    if positive and update == "ksvd":
        raise InvalidInputError("positive=True needs update='approx', 'mod' or 'auto': the "
                                "exact update's singular vectors can turn coefficients "
                                "negative.")
    return bool(positive)


def check_tol(tol: Any) -> float:
    """``tol`` as a float in [0, 1) (a relative residual), else a named error."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0.0 <= tol < 1.0:
        raise InvalidInputError(f"Expected 0 <= tol < 1 (relative residual). Got {tol!r}.")
    return float(tol)


def check_n_nonzero(n_nonzero: Any, n_atoms: int, n_features: int) -> int:
    """``n_nonzero`` as an int in [1, min(n_atoms, n_features)], else a named error."""
    n_nonzero = check_positive_int("n_nonzero", n_nonzero)
    if n_nonzero > n_features:
        raise InvalidInputError(
            f"n_nonzero={n_nonzero} exceeds the number of features (n_features={n_features}): a "
            f"sample cannot use more than {n_features} linearly independent atoms."
        )
    if n_nonzero > n_atoms:
        raise InvalidInputError(f"n_nonzero={n_nonzero} exceeds n_atoms={n_atoms}.")
    return n_nonzero


def check_init(init: Any, n_atoms: int, n_features: int) -> str:
    """The name of ``init`` (``"array"`` for an array of the atoms' shape), else an error."""
    if isinstance(init, str):
        return check_choice("init", init, INITS)
    if np.shape(init) != (n_atoms, n_features):
        raise InvalidInputError(
            f"Expected init of shape ({n_atoms}, {n_features}). Got {np.shape(init)}.")
    return "array"


def check_dtype(dtype: Any) -> str:
    """The name of ``dtype`` if it is float32 or float64, else a named error."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise InvalidInputError(f"Expected dtype float32 or float64. Got {dtype!r}.") from exc
    if name not in DTYPES:
        raise InvalidInputError(f"Expected dtype float32 or float64. Got {name}.")
    return name


def validate_params(n_atoms, n_nonzero, n_iter, coder, tol, update, atom_batch_size,
                    shuffle_atoms, replace_atoms, init, dtype, n_samples: int,
                    n_features: int, positive: bool = False, center: bool = False,
                    correlation_dtype: str = "float32", device: str = "cpu") -> FitParams:
    """Check every hyper-parameter against the data's shape; raise naming the problem.

    Parameters are those of :func:`daskdict.fit`; ``n_samples`` and ``n_features`` are the
    data's shape.

    Returns
    -------
    FitParams

    Raises
    ------
    InvalidInputError
        Naming the first parameter that cannot be used.
    """
    n_atoms = check_positive_int("n_atoms", n_atoms)
    n_iter = check_positive_int("n_iter", n_iter)
    n_nonzero = check_n_nonzero(n_nonzero, n_atoms, n_features)
    if n_atoms > n_samples:
        raise InvalidInputError(
            f"n_atoms={n_atoms} is larger than the number of samples ({n_samples}); a dictionary "
            "needs at least as many samples as atoms."
        )
    check_choice("coder", coder, CODER_NAMES)
    check_choice("update", update, UPDATES)
    update, update_choice = resolve_update(update, n_atoms)
    tol = check_tol(tol)
    atom_batch_size = check_positive_int("atom_batch_size", atom_batch_size, optional=True)
    init_name = check_init(init, n_atoms, n_features)
    positive = check_positive(positive, coder, update)
    if not isinstance(center, bool | np.bool_):
        raise InvalidInputError(f"Expected center to be True or False. Got {center!r:.100}.")
    dtype = check_dtype(dtype)
    check_device(device, coder, dtype, "float32")  # the name first: its errors say more
    if device != "cpu" and correlation_dtype == "auto":
        correlation_dtype, why = "float32", "float32 (auto: the device coder takes float32)"
    else:
        correlation_dtype, why = check_correlation_dtype(correlation_dtype, coder, dtype)
    device = check_device(device, coder, dtype, correlation_dtype)
    return FitParams(n_atoms, n_nonzero, n_iter, coder, tol, update, atom_batch_size,
                     bool(shuffle_atoms), bool(replace_atoms), init_name, dtype,
                     positive, bool(center), correlation_dtype, why, update_choice, device)


def resolve_update(update: str, n_atoms: int) -> tuple[str, str]:
    """The dictionary update a fit uses, and why: ``"auto"`` is the method of optimal
    directions up to :data:`MOD_MAX_ATOMS` atoms, the approximate K-SVD update beyond."""
    if update != "auto":
        return update, update
    if n_atoms <= MOD_MAX_ATOMS:
        return "mod", f"mod (auto: {n_atoms} atoms <= {MOD_MAX_ATOMS})"
    return "approx", (f"approx (auto: {n_atoms} atoms > {MOD_MAX_ATOMS}, a code Gram matrix "
                      "too large to sum per task)")


def base_seed(random_state: Any) -> int:
    """One integer (the fit's seed) from which every random draw of a fit is derived.

    Parameters
    ----------
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        None draws a fresh seed.

    Returns
    -------
    int
    """
    if random_state is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31))
    raise InvalidInputError(
        f"Expected random_state None, an int or a Generator. Got {random_state!r}.")


def iteration_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of one iteration of the fit with random ``seed`` (0: the initialisation)."""
    return np.random.default_rng([seed, iteration])
