"""Batch-OMP on a PyTorch device (a CUDA GPU), vectorised over the rows of a batch.

The same codes as the numba coders (:func:`daskdict.learn.kernels.batch_omp` and, with
``positive=True``, :func:`daskdict.learn.nonnegative.nonnegative_omp`), computed for all rows of
a batch at once with tensor operations, for accelerators where one thread per row is the wrong
shape. The method is Batch-OMP, Rubinstein, Zibulevsky & Elad (2008), "Efficient
Implementation of the K-SVD Algorithm using Batch Orthogonal Matching Pursuit": from the
correlations ``alpha0 = D y`` and the Gram matrix ``G = D D^T``, each step picks, for every
row still running, the atom of largest ``|alpha|``, appends it to the row's Cholesky factor
of ``G`` on its support, and shrinks ``alpha`` by the new orthonormalised direction's
correlations ``u_s = (G[j_s] - sum_t L[s, t] u_t) / L[s, s]`` (the numba kernel's recurrence,
which equals ``alpha = alpha0 - G[:, S] x_S``).

Each row stops as the numba coder's does: after ``n_nonzero`` atoms, once the squared residual
``|y|^2 - |z|^2`` is at most ``tol^2 |y|^2``, when the best atom is (nearly) linearly dependent
on the chosen ones (the Cholesky pivot below ``_DEPENDENCE_EPS`` of ``G_jj``), when every
correlation is zero (the residual is zero), and at once for an all-zero row. Rows that stop
are masked; the working set is compacted when a quarter of it has stopped.

Precision: every operation on ``(n_atoms,)`` vectors is elementwise float32, in the numba
kernel's order (a multiply, then a subtraction, each rounded), the small factors and
coefficients float64, as there: given the same correlations, the signed codes are the numba
coder's bit for bit. The one float32 matrix product is the correlations': on CUDA ``torch.mm``
with TF32 off (:func:`exact_float32`), on the CPU NumPy's GEMM, as
:func:`daskdict.learn.coding.code_block` makes them (torch's CPU float32 products follow a
process-wide oneDNN precision that :mod:`daskdict.learn.reduced` sets to bfloat16 at times).

``positive=True`` runs non-negative OMP (Bruckstein, Elad & Zibulevsky 2008, "On the
uniqueness of nonnegative sparse solutions to underdetermined systems of equations") with the
Lawson & Hanson (1974) active-set NNLS refit of the numba coder, batched: the coefficients of
all rows are refitted together on identity-padded ``(n_nonzero, n_nonzero)`` systems, each row
with its own support size and its own sweeps of the active set.

PyTorch is optional: it is imported when a coder runs, never when daskdict is imported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.learn.kernels import _DEPENDENCE_EPS
from daskdict.learn.nonnegative import STEP_FACTOR

TORCH_FIX = ("pip install 'daskdict[embed]' (the extra that carries PyTorch), or "
             "pip install torch")

# Memory for one batch's working state. The signed coder keeps (n_nonzero + 8) float32 vectors
# of n_atoms per row (the correlations, their copy, the cached directions and the temporaries
# of an update), the non-negative one 8; a compaction copies the state (a peak of at most twice
# this). On a GPU one GiB puts about ten million elements or more in every kernel at the
# dictionary sizes of a fit, enough to saturate its memory bandwidth and to amortise the few
# hundred kernel launches and host synchronisations of a batch, and leaves most of any CUDA
# device to the Gram matrix and to other work. On the CPU a sixteenth of that: each pass's
# (rows, n_atoms) operands stay in the last-level cache for the next pass, and the batches are
# still large enough to amortise torch's fixed cost per operation.
STATE_BYTES = 1 << 30
CPU_STATE_BYTES = 1 << 26
MIN_BATCH_ROWS = 64
MAX_BATCH_ROWS = 1 << 16

# Compact the working set once this share of its rows has stopped (each compaction copies the
# state once; this bounds the copies to a constant share of the work).
SHRINK_SHARE = 0.25


def require_torch() -> Any:
    """The torch module, or a named error saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise InvalidInputError(f"The device coder needs PyTorch: {TORCH_FIX}.") from exc
    return torch


def available_devices() -> list[str]:
    """The devices the device coder can run on here: ``"cuda:N"`` for each CUDA device torch
    sees, then ``"cpu"``; an empty list when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] + ["cpu"]


def resolve_device(device: Any, torch: Any) -> Any:
    """The ``torch.device`` for ``device`` ("cpu", "cuda" or "cuda:N"), or a named error."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"Expected device='cpu', 'cuda' or 'cuda:N' for the device coder. Got {device!r}."
        ) from exc
    if resolved.type not in ("cpu", "cuda"):
        raise InvalidInputError(
            f"The device coder runs on 'cpu' or 'cuda[:N]' (its small factors are float64). "
            f"Got device={device!r}.")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = torch.version.cuda or "none: a CPU-only build"
            raise InvalidInputError(
                f"device={device!r} was requested, but PyTorch {torch.__version__} sees no CUDA "
                f"device (torch.cuda.is_available() is False; CUDA in this build: {build}). "
                f"Use device='cpu' or install a CUDA build of PyTorch.")
        if resolved.index is not None and resolved.index >= count:
            raise InvalidInputError(
                f"device={device!r} was requested, but PyTorch sees {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}).")
    return resolved


def batch_rows(n_atoms: int, n_nonzero: int, positive: bool = False,
               device_type: str = "cuda") -> int:
    """Rows coded at once: as many as :data:`STATE_BYTES` of working state holds
    (:data:`CPU_STATE_BYTES` on the CPU).

    Parameters
    ----------
    n_atoms, n_nonzero : int
    positive : bool, default=False
    device_type : {"cuda", "cpu"}, default="cuda"

    Returns
    -------
    int, between :data:`MIN_BATCH_ROWS` and :data:`MAX_BATCH_ROWS`
    """
    vectors = 8 if positive else n_nonzero + 8
    budget = CPU_STATE_BYTES if device_type == "cpu" else STATE_BYTES
    rows = budget // (4 * max(1, n_atoms) * vectors)
    return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, rows)))


# cuBLAS's float32 precision is a process-wide torch setting: it is set to exact float32 while
# any device coder's product runs and put back after the last one.
_PRECISION_LOCK = threading.Lock()
_PRECISION_USERS: list[Any] = [0, None]  # [products running, the setting before the first]


def _swap_cuda_precision(torch: Any, value: Any) -> Any:
    """Set cuBLAS's float32 precision (``None``: exact); returns the previous setting."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # the newer API (mixing the two is an error)
        previous = matmul.fp32_precision
        matmul.fp32_precision = "ieee" if value is None else value
        return previous
    previous = matmul.allow_tf32
    matmul.allow_tf32 = False if value is None else value
    return previous


@contextlib.contextmanager
def exact_float32(torch: Any, device: Any) -> Iterator[None]:
    """While it is open, CUDA float32 products are exact float32 (no TF32); nothing changes
    for other devices."""
    if device.type != "cuda":
        yield
        return
    with _PRECISION_LOCK:
        if _PRECISION_USERS[0] == 0:
            _PRECISION_USERS[1] = _swap_cuda_precision(torch, None)
        _PRECISION_USERS[0] += 1
    try:
        yield
    finally:
        with _PRECISION_LOCK:
            _PRECISION_USERS[0] -= 1
            if _PRECISION_USERS[0] == 0:
                _swap_cuda_precision(torch, _PRECISION_USERS[1])


def _check_inputs(y: Any, atoms: Any, gram: Any, n_nonzero: Any, tol: Any,
                  rows_per_batch: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """The arrays (atoms and Gram matrix float32, C-contiguous), ``n_nonzero`` and ``tol``,
    or a named error."""
    y = np.asarray(y)
    atoms = np.ascontiguousarray(atoms, dtype=np.float32)
    gram = np.ascontiguousarray(gram, dtype=np.float32)
    if y.ndim != 2 or atoms.ndim != 2 or y.shape[1] != atoms.shape[1]:
        raise InvalidInputError(
            "Expected rows of shape (n_rows, n_features) and atoms of shape (n_atoms, "
            f"n_features). Got {y.shape} and {atoms.shape}.")
    if atoms.size == 0:
        raise InvalidInputError(f"Expected at least one atom. Got atoms of shape {atoms.shape}.")
    if gram.shape != (atoms.shape[0], atoms.shape[0]):
        raise InvalidInputError(
            f"Expected a Gram matrix of shape {(atoms.shape[0],) * 2}. Got {gram.shape}.")
    if isinstance(n_nonzero, bool) or not isinstance(n_nonzero, (int, np.integer)) \
            or n_nonzero < 0:
        raise InvalidInputError(f"Expected an integer n_nonzero >= 0. Got {n_nonzero!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not np.isfinite(tol) or tol < 0:
        raise InvalidInputError(f"Expected a finite tol >= 0. Got {tol!r}.")
    if rows_per_batch is not None and (isinstance(rows_per_batch, bool) or not isinstance(
            rows_per_batch, (int, np.integer)) or rows_per_batch < 1):
        raise InvalidInputError(f"Expected rows_per_batch >= 1. Got {rows_per_batch!r}.")
    for name, array in (("atoms", atoms), ("Gram matrix", gram)):
        if not np.isfinite(array).all():
            raise InvalidInputError(f"The {name} hold NaN or inf values.")
    for start in range(0, y.shape[0], MAX_BATCH_ROWS):  # no full-size temporary
        bad = np.flatnonzero(~np.isfinite(y[start:start + MAX_BATCH_ROWS]).all(axis=1))
        if bad.size:
            raise InvalidInputError(
                f"The rows hold NaN or inf values, the first at row {start + int(bad[0])}.")
    return y, atoms, gram, int(n_nonzero), float(tol)


def device_batch_omp(y: np.ndarray, atoms: np.ndarray, gram: np.ndarray, n_nonzero: int,
                     tol: float, device: Any = "cuda", positive: bool = False,
                     rows_per_batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batch-OMP codes of rows, computed on a PyTorch device (see the module docstring).

    Parameters
    ----------
    y : ndarray of shape (n_rows, n_features)
        The rows (coded in float32).
    atoms : ndarray of shape (n_atoms, n_features)
        Unit-norm atoms (float32).
    gram : ndarray of shape (n_atoms, n_atoms)
        ``atoms @ atoms.T`` (float32).
    n_nonzero : int
        Maximum number of atoms per row.
    tol : float
        Stop a row once ``|y - x D| <= tol * |y|``; 0 disables.
    device : str or torch.device, default="cuda"
        "cuda", "cuda:N" or "cpu".
    positive : bool, default=False
        Non-negative OMP with NNLS refits (the codes of
        :func:`daskdict.learn.nonnegative.nonnegative_omp`) instead of Batch-OMP (those of
        :func:`daskdict.learn.kernels.batch_omp`).
    rows_per_batch : int, optional
        Rows coded at once; default :func:`batch_rows` (bounds the device memory).

    Returns
    -------
    indices : ndarray of shape (n_rows, n_nonzero), int32
        The chosen atoms in the order of selection (with ``positive``, in the order the
        numba coder stores them), ``-1`` padded.
    values : ndarray of shape (n_rows, n_nonzero), float32
        Their coefficients, ``0`` padded.
    """
    y, atoms, gram, n_nonzero, tol = _check_inputs(y, atoms, gram, n_nonzero, tol,
                                                   rows_per_batch)
    torch = require_torch()
    dev = resolve_device(device, torch)
    n_rows = y.shape[0]
    indices = np.full((n_rows, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_rows, n_nonzero), dtype=np.float32)
    if n_rows == 0 or n_nonzero == 0:
        return indices, values
    step = rows_per_batch or batch_rows(atoms.shape[0], n_nonzero, positive, dev.type)
    coder = _positive_codes if positive else _signed_codes
    with torch.no_grad(), exact_float32(torch, dev):
        atoms_t = torch.from_numpy(atoms).to(dev)
        gram_t = torch.from_numpy(gram).to(dev)
        for start in range(0, n_rows, step):
            batch = np.ascontiguousarray(y[start:start + step], dtype=np.float32)
            # the squared norms as code_block makes them (the stopping rule compares them)
            sqnorms = torch.from_numpy(np.einsum("ij,ij->i", batch, batch)).to(dev)
            if dev.type == "cpu":
                corr = torch.from_numpy(np.matmul(batch, atoms.T))
            else:
                corr = device_correlations(torch, batch, atoms_t)
            idx, val = coder(torch, corr, gram_t, sqnorms, n_nonzero, tol)
            indices[start:start + step] = idx.cpu().numpy()
            values[start:start + step] = val.to(torch.float32).cpu().numpy()
    return indices, values


def device_correlations(torch: Any, rows: np.ndarray, atoms: Any) -> Any:
    """``rows @ atoms.T`` on the atoms' device (rows: (m, n_features) float32 ndarray; atoms:
    (n_atoms, n_features) tensor); exact float32 on CUDA inside :func:`exact_float32`."""
    return torch.mm(torch.from_numpy(rows).to(atoms.device), atoms.T)


def _positive_argmax(torch: Any, alpha: Any) -> Any:
    """Per row, the first index of the largest positive entry, or -1 when none is positive."""
    top, best = torch.max(alpha, dim=1)
    return torch.where(top > 0, best, torch.full_like(best, -1))


def _zero_at(alpha: Any, atoms: Any, valid: Any) -> None:
    """``alpha[i, atoms[i, t]] = 0`` where ``valid[i, t]`` (chosen atoms are not chosen
    again; each row's atoms are distinct, so the writes never collide)."""
    rows = valid.nonzero(as_tuple=True)[0]
    alpha[rows, atoms[valid]] = 0.0


def _shrink(state: dict, keep: Any) -> dict:
    """The state of the rows ``keep`` (every tensor has one row per working row)."""
    return {name: tensor[keep] for name, tensor in state.items()}


def _back_substitute(torch: Any, lower: Any, z: Any) -> Any:
    """``x = L^{-T} z`` per row, in the numba kernel's order (``lower``: (m, k, k) float64,
    identity past each row's support, where ``z`` is zero; x is zero there too)."""
    k = z.shape[1]
    x = torch.zeros_like(z)
    for r in range(k - 1, -1, -1):
        acc = z[:, r].clone()
        for c in range(r + 1, k):
            acc = acc - lower[:, c, r] * x[:, c]
        x[:, r] = acc / lower[:, r, r]
    return x


def _signed_codes(torch: Any, corr: Any, gram: Any, sqnorms: Any, n_nonzero: int,
                  tol: float) -> tuple[Any, Any]:
    """Batch-OMP of a batch on corr's device.

    corr : (m, K) float32 correlations; gram : (K, K); sqnorms : (m,) float32 ``|y|^2``.
    Returns indices (m, n_nonzero) int64 (-1 padded) and values (m, n_nonzero) float64.
    """
    n_rows, n_atoms = corr.shape
    dev, f64 = corr.device, torch.float64
    out_idx = torch.full((n_rows, n_nonzero), -1, dtype=torch.int64, device=dev)
    out_val = torch.zeros((n_rows, n_nonzero), dtype=f64, device=dev)
    sq = sqnorms.to(f64)
    state = {
        "rows": torch.arange(n_rows, device=dev), "alpha0": corr, "alpha": corr.clone(),
        "proj": torch.empty((n_rows, n_nonzero, n_atoms), dtype=corr.dtype, device=dev),
        "lower": torch.eye(n_nonzero, dtype=f64, device=dev).repeat(n_rows, 1, 1),
        "z": torch.zeros((n_rows, n_nonzero), dtype=f64, device=dev),
        "chosen": torch.full((n_rows, n_nonzero), -1, dtype=torch.int64, device=dev),
        "residual": sq.clone(), "tol_sq": tol * tol * sq,
    }
    active = (sq > state["tol_sq"]) & (sq != 0)
    best_val, best = torch.max(state["alpha"].abs(), dim=1)  # the first index of a tie
    for s in range(n_nonzero):
        active &= best_val > 0
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= (1 - SHRINK_SHARE) * active.shape[0]:
            _write_signed(torch, state, ~active, out_idx, out_val)
            state, best = _shrink(state, active), best[active]
            active = torch.ones_like(best, dtype=torch.bool)
        ok, diag, zs = _append_atom(torch, state, gram, best, active, s)
        active = ok & (state["residual"] > state["tol_sq"])
        if s + 1 == n_nonzero or not bool(active.any()):
            break
        _new_direction(torch, state, gram, best, diag, zs, s)
        _zero_at(state["alpha"], state["chosen"], state["chosen"] >= 0)
        best_val, best = torch.max(state["alpha"].abs(), dim=1)
    _write_signed(torch, state, slice(None), out_idx, out_val)
    return out_idx, out_val


def _write_signed(torch: Any, state: dict, done: Any, out_idx: Any, out_val: Any) -> None:
    """The codes of the working rows ``done`` into the batch's outputs."""
    rows = state["rows"][done]
    out_idx[rows] = state["chosen"][done]
    out_val[rows] = _back_substitute(torch, state["lower"][done], state["z"][done])


def _append_atom(torch: Any, state: dict, gram: Any, best: Any, active: Any, s: int
                 ) -> tuple[Any, Any, Any]:
    """Append atom ``best`` as row ``s`` of the rows' Cholesky factors (the numba
    ``cholesky_append``, for the rows ``active``); returns the rows that took it, the new
    diagonal entries (1 where none) and the new entries of ``z`` (``L z = alpha0[chosen]``).

    The new row ``w`` of the factor is read from the cached directions, ``w_t = u_t[best]``.
    """
    f64 = torch.float64
    rows = torch.arange(best.shape[0], device=best.device)
    lower, z = state["lower"], state["z"]
    w = state["proj"][rows, :s, best].to(f64)  # (m, s)
    gram_bb = gram[best, best].to(f64)
    wsq = torch.zeros_like(gram_bb)
    acc = state["alpha0"][rows, best].to(f64)
    for t in range(s):  # sequential sums, as the numba kernel makes them
        wsq = wsq + w[:, t] * w[:, t]
        acc = acc - w[:, t] * z[:, t]
    pivot = gram_bb - wsq
    ok = active & (pivot > _DEPENDENCE_EPS * gram_bb)
    diag = torch.sqrt(torch.where(ok, pivot, torch.ones_like(pivot)))
    zs = acc / diag
    lower[:, s, :s] = torch.where(ok[:, None], w, lower[:, s, :s])
    lower[:, s, s] = diag
    z[:, s] = torch.where(ok, zs, torch.zeros_like(zs))
    state["chosen"][:, s] = torch.where(ok, best, torch.full_like(best, -1))
    state["residual"] = torch.where(ok, state["residual"] - zs * zs, state["residual"])
    return ok, diag, zs


def _new_direction(torch: Any, state: dict, gram: Any, best: Any, diag: Any, zs: Any,
                   s: int) -> None:
    """``u_s = (G[best] - sum_t L[s, t] u_t) / L[s, s]`` into ``proj[:, s]``, then
    ``alpha -= z_s u_s``: float32, one rounded multiply and one rounded subtraction per term,
    as the numba kernel computes them."""
    f32 = state["alpha"].dtype
    proj, lower = state["proj"], state["lower"]
    u = gram[best]  # a new (m, K) tensor
    term = torch.empty_like(u)
    for t in range(s):
        torch.mul(proj[:, t], lower[:, s, t].to(f32)[:, None], out=term)
        u.sub_(term)
    torch.mul(u, (1.0 / diag).to(f32)[:, None], out=proj[:, s])
    torch.mul(proj[:, s], zs.to(f32)[:, None], out=term)
    state["alpha"].sub_(term)


def _positive_codes(torch: Any, corr: Any, gram: Any, sqnorms: Any, n_nonzero: int,
                    tol: float) -> tuple[Any, Any]:
    """Non-negative OMP with NNLS refits of a batch (the numba ``_nn_row`` for every row).

    Same parameters and returns as :func:`_signed_codes`; every stored value is > 0 in
    float32, the indices in the numba coder's slot order.
    """
    n_rows, k = corr.shape[0], n_nonzero
    dev, f64 = corr.device, torch.float64
    out_idx = torch.full((n_rows, k), -1, dtype=torch.int64, device=dev)
    out_val = torch.zeros((n_rows, k), dtype=f64, device=dev)
    sq = sqnorms.to(f64)
    eye = torch.eye(k, dtype=f64, device=dev)
    state = {
        "rows": torch.arange(n_rows, device=dev), "alpha0": corr, "alpha": corr.clone(),
        "atoms": torch.zeros((n_rows, k), dtype=torch.int64, device=dev),
        "x": torch.zeros((n_rows, k), dtype=f64, device=dev),
        "rhs": torch.zeros((n_rows, k), dtype=f64, device=dev),
        "sub": eye.repeat(n_rows, 1, 1), "lower": eye.repeat(n_rows, 1, 1),
        "n": torch.zeros(n_rows, dtype=torch.int64, device=dev),
        "sq": sq, "tol_sq": tol * tol * sq,
    }
    active = (sq > state["tol_sq"]) & (sq != 0)
    best = _positive_argmax(torch, state["alpha"])
    for _ in range(STEP_FACTOR * k):
        active &= best >= 0
        n_active = int(active.sum())
        if n_active == 0:
            break
        if n_active <= (1 - SHRINK_SHARE) * active.shape[0]:
            _write_positive(torch, state, ~active, out_idx, out_val)
            state, best = _shrink(state, active), best[active]
            active = torch.ones_like(best, dtype=torch.bool)
        active = _positive_step(torch, state, gram, best, active)
        slots = torch.arange(k, device=dev)
        _zero_at(state["alpha"], state["atoms"], slots[None, :] < state["n"][:, None])
        best = _positive_argmax(torch, state["alpha"])
    _write_positive(torch, state, slice(None), out_idx, out_val)
    return out_idx, out_val


def _positive_step(torch: Any, state: dict, gram: Any, best: Any, active: Any) -> Any:
    """One addition for the rows ``active``: the new slot, the NNLS refit, the correlations'
    update and the slots' compaction; returns the rows that go on."""
    k = state["x"].shape[1]
    ok = _add_slot(torch, state, gram, best, active)
    x_old = state["x"].clone()
    accepted, inset, lower = _nnls_refit(torch, state, ok)
    x, sub = state["x"], state["sub"]
    residual = state["sq"] + (x * (torch.bmm(sub, x[:, :, None])[:, :, 0]
                                   - 2.0 * state["rhs"])).sum(dim=1)
    n_new = inset.sum(dim=1)
    go_on = accepted & (n_new < k) & (residual > state["tol_sq"])
    if bool(go_on.any()):
        _update_correlations(torch, state, gram, x_old, go_on)
    _compact_slots(torch, state, inset, lower, accepted)
    return go_on


def _write_positive(torch: Any, state: dict, done: Any, out_idx: Any, out_val: Any) -> None:
    """The codes of the working rows ``done``: their slots whose value is > 0 in float32
    (a positive float64 may round to 0), in slot order."""
    k = state["x"].shape[1]
    x, atoms, n = state["x"][done], state["atoms"][done], state["n"][done]
    slots = torch.arange(k, device=x.device)
    keep = (slots[None, :] < n[:, None]) & (x.to(torch.float32) > 0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    keep = keep.gather(1, order)
    rows = state["rows"][done]
    out_idx[rows] = torch.where(keep, atoms.gather(1, order), torch.full_like(atoms, -1))
    out_val[rows] = torch.where(keep, x.gather(1, order), torch.zeros_like(x))


def _add_slot(torch: Any, state: dict, gram: Any, best: Any, active: Any) -> Any:
    """Put atom ``best`` in slot ``n`` of the rows ``active`` whose Cholesky pivot shows it
    independent of their support (the numba ``_add_slot``); returns those rows."""
    f64 = torch.float64
    k = state["x"].shape[1]
    n = state["n"]
    slots = torch.arange(k, device=best.device)
    before = slots[None, :] < n[:, None]
    # G[atoms[t], best], as the numba coder reads it (D D^T may not be symmetric to the bit)
    g = torch.where(before, gram[state["atoms"], best[:, None]].to(f64), 0.0)
    gram_bb = gram[best, best].to(f64)
    w = torch.linalg.solve_triangular(state["lower"], g[:, :, None], upper=False)[:, :, 0]
    pivot = gram_bb - (w * w).sum(dim=1)
    ok = active & (pivot / gram_bb > _DEPENDENCE_EPS)
    rows = ok.nonzero(as_tuple=True)[0]
    slot, atom = n[rows], best[rows]
    state["atoms"][rows, slot] = atom
    state["rhs"][rows, slot] = state["alpha0"][rows, atom].to(f64)
    state["sub"][rows, slot, :] = g[rows]
    state["sub"][rows, :, slot] = g[rows]
    state["sub"][rows, slot, slot] = gram_bb[rows]
    w[rows, slot] = torch.sqrt(pivot[rows])
    state["lower"][rows, slot, :] = w[rows]
    return ok


def _padded_factor(torch: Any, sub: Any, inset: Any) -> Any:
    """Cholesky factors of ``sub`` on each row's slots ``inset``, identity elsewhere (the
    factor of the support's Gram matrix, in slot order, padded)."""
    k = sub.shape[-1]
    eye = torch.eye(k, dtype=sub.dtype, device=sub.device)
    padded = torch.where(inset[:, :, None] & inset[:, None, :], sub, eye)
    factor, info = torch.linalg.cholesky_ex(padded)
    failed = info != 0
    if bool(failed.any()):  # rounding alone: a subset of an accepted support is independent
        jitter = torch.diag_embed(_DEPENDENCE_EPS * torch.diagonal(padded, dim1=1, dim2=2))
        retry = torch.linalg.cholesky_ex(padded + jitter)[0]
        factor = torch.where(failed[:, None, None], retry, factor)
    return factor


def _nnls_refit(torch: Any, state: dict, ok: Any) -> tuple[Any, Any, Any]:
    """Lawson-Hanson refit of the rows ``ok`` after slot ``n`` joined (the numba
    ``_nnls_refit``): updates ``x`` of the rows whose new atom takes a positive coefficient,
    and returns those rows, their slots left (m, k) and the padded factor on those slots."""
    k = state["x"].shape[1]
    n, x, lower = state["n"], state["x"].clone(), state["lower"]
    slots = torch.arange(k, device=n.device)
    rows = torch.arange(n.shape[0], device=n.device)
    inset = (slots[None, :] <= n[:, None]) & ok[:, None]
    rhs = torch.where(inset, state["rhs"], 0.0)
    accepted, pending = ok.clone(), ok.clone()
    for sweep in range(k):  # a row makes at most n + 1 sweeps, each but the last drops a slot
        z = torch.cholesky_solve(rhs[:, :, None], lower)[:, :, 0]
        if sweep == 0:
            rejected = pending & (z[rows, n.clamp(max=k - 1)] <= 0)
            accepted &= ~rejected
            pending &= ~rejected
        # step from x towards z until the first coefficient reaches zero
        step = torch.where(inset & (z <= 0), x / (x - z), 2.0)
        step = torch.where(torch.isnan(step), 2.0, step)
        theta = step.min(dim=1).values
        moving = pending & (theta < 2.0)
        settled = pending & ~moving
        x = torch.where(settled[:, None] & inset, z, x)
        if bool(moving.any()):
            first = (step == theta[:, None]).to(torch.uint8).argmax(dim=1)
            x = torch.where(moving[:, None] & inset, x + theta[:, None] * (z - x), x)
            x[rows[moving], first[moving]] = 0.0
            dropped = moving[:, None] & inset & (x <= 0)
            inset = inset & ~dropped
            x = torch.where(dropped, 0.0, x)
            rhs = torch.where(inset, rhs, 0.0)
            lower = torch.where(moving[:, None, None], _padded_factor(torch, state["sub"], inset),
                                lower)
        pending = moving & (sweep + 1 < n + 1)
        if not bool(pending.any()):
            break
    state["x"] = torch.where(accepted[:, None], x, state["x"])
    return accepted, inset, lower


def _update_correlations(torch: Any, state: dict, gram: Any, x_old: Any, rows: Any) -> None:
    """``alpha -= (x_t - x_old_t) G[atoms_t]`` over the slots, for the rows ``rows`` (float32
    steps; a zero step leaves alpha as it is)."""
    alpha, atoms = state["alpha"], state["atoms"]
    step = torch.where(rows[:, None], state["x"] - x_old, 0.0).to(alpha.dtype)
    term = torch.empty_like(alpha)
    for t in torch.nonzero((step != 0).any(dim=0)).flatten().tolist():
        torch.mul(gram[atoms[:, t]], step[:, t:t + 1], out=term)
        alpha.sub_(term)


def _compact_slots(torch: Any, state: dict, inset: Any, lower: Any, rows: Any) -> None:
    """Move each of the rows ``rows``' slots left (``inset``) to its first slots, in order
    (the numba ``_compact``), with its factor; the slots after them are padding again."""
    k = inset.shape[1]
    order = torch.argsort((~inset).to(torch.int8), dim=1, stable=True)
    n_new = inset.sum(dim=1)
    slots = torch.arange(k, device=inset.device)
    kept = slots[None, :] < n_new[:, None]
    pair = kept[:, :, None] & kept[:, None, :]
    eye = torch.eye(k, dtype=lower.dtype, device=lower.device)

    def permuted(matrix):
        rows_first = matrix.gather(1, order[:, :, None].expand(-1, -1, k))
        return torch.where(pair, rows_first.gather(2, order[:, None, :].expand(-1, k, -1)), eye)

    new = {"atoms": torch.where(kept, state["atoms"].gather(1, order), 0),
           "x": torch.where(kept, state["x"].gather(1, order), 0.0),
           "rhs": torch.where(kept, state["rhs"].gather(1, order), 0.0),
           "sub": permuted(state["sub"]), "lower": permuted(lower), "n": n_new}
    for name, value in new.items():
        shape = (-1,) + (1,) * (value.dim() - 1)
        state[name] = torch.where(rows.view(shape), value, state[name])
