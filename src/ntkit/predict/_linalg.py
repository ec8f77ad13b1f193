"""Input checks and the symmetric linear algebra shared by the closed-form predictors.

Everything here works on a symmetric positive semi-definite train-train kernel K (n, n):
- ``regularize``: K + ρ I with ρ absolute or relative to the mean of K's diagonal (the latter is
  neural-tangents' ``diag_reg`` convention);
- ``Spectrum``: the symmetric eigendecomposition K = V diag(λ) V^T (torch.linalg.eigh), with the
  rank tolerance tol = n · eps · max|λ| used to decide when K^{-1} does not exist;
- ``cholesky_solver``: a Cholesky factor used for t = ∞ (kernel regression / GP posterior), with a
  clear ``SingularKernelError`` instead of silently returning garbage.
No explicit inverse is ever formed.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from .duplicates import describe, kernel_near_duplicates

ArrayLike = Union[torch.Tensor, np.ndarray, float, int]

_FIX = ("pass diag_reg > 0 (e.g. diag_reg=1e-6, relative to the mean of the kernel's diagonal in "
        "the neural-tangents convention), predict at a finite time t, or remove duplicate "
        "training inputs")


class SingularKernelError(ValueError):
    """The train-train kernel is singular to working precision where K^{-1} is needed."""


class SingularKernelWarning(UserWarning):
    """A singular train-train kernel was handled by the minimum-norm (pseudo-inverse) limit."""


def as_tensor(x: ArrayLike, name: str, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` (torch, numpy or Python number) as a floating torch tensor; NaN/Inf rejected.

    With ``like`` the result takes its dtype and device (targets may be integer labels).
    Without it, integer input becomes float64 and float32/float64 are kept.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, (np.ndarray, float, int, np.floating, np.integer, list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"{name}: object arrays are not supported")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor, numpy array or number, "
                        f"got {type(x).__name__}")
    if like is not None:
        t = t.to(dtype=like.dtype, device=like.device)
    elif not torch.is_floating_point(t) or t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float64)
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or Inf value(s)")
    return t


def as_kernel(k: ArrayLike, name: str, n_rows: Optional[int] = None,
              n_cols: Optional[int] = None, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A 2-D kernel matrix, with its shape checked against the expected numbers of points."""
    t = as_tensor(k, name, like)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D kernel matrix, got shape {tuple(t.shape)} "
                         f"(only the neural-tangents trace_axes=(-1,) layout is supported)")
    if n_rows is not None and t.shape[0] != n_rows:
        raise ValueError(f"{name}: has {t.shape[0]} rows, expected {n_rows}")
    if n_cols is not None and t.shape[1] != n_cols:
        raise ValueError(f"{name}: has {t.shape[1]} columns but there are {n_cols} training "
                         f"points (mismatched n)")
    return t


def check_train(k_train_train: ArrayLike, y_train: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validated (K (n, n), y (n,) or (n, k)) with y in K's dtype and device."""
    k = as_kernel(k_train_train, "k_train_train")
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"k_train_train must be square, got shape {tuple(k.shape)}")
    y = as_tensor(y_train, "y_train", like=k)
    if y.ndim not in (1, 2):
        raise ValueError(f"y_train: expected shape (n,) or (n, outputs), got {tuple(y.shape)}")
    if y.shape[0] != k.shape[0]:
        raise ValueError(f"y_train has {y.shape[0]} rows but k_train_train is {k.shape[0]} x "
                         f"{k.shape[1]} (mismatched n)")
    return k, y


def reg_value(k: torch.Tensor, diag_reg: float, relative: bool) -> float:
    """The absolute ridge ρ: ``diag_reg`` itself, or ``diag_reg * mean(diag K)`` if relative."""
    diag_reg = float(diag_reg)
    if not np.isfinite(diag_reg) or diag_reg < 0:
        raise ValueError(f"diag_reg must be a finite number >= 0, got {diag_reg}")
    if relative and diag_reg:
        return diag_reg * float(torch.diagonal(k).mean())
    return diag_reg


def regularize(k: torch.Tensor, rho: float) -> torch.Tensor:
    """K + ρ I, symmetrized ((K + K^T)/2) so eigh/Cholesky see an exactly symmetric matrix."""
    a = 0.5 * (k + k.T)
    if rho:
        a = a + rho * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    return a


def rank_tol(evals: torch.Tensor, n: int) -> float:
    """Eigenvalues at or below n · eps · max|λ| count as zero (numpy.linalg.matrix_rank's rule)."""
    eps = torch.finfo(evals.dtype).eps
    return float(n * eps * evals.abs().max()) if evals.numel() else 0.0


def singular_message(lmin: float, lmax: float, what: str = "k_train_train") -> str:
    return (f"{what} is singular to working precision (smallest eigenvalue {lmin:.3g}, largest "
            f"{lmax:.3g}): infinite-time predictions (kernel regression) need its inverse. "
            f"Fix: {_FIX}.")


class Spectrum:
    """Symmetric eigendecomposition A = V diag(λ) V^T of a regularized kernel A = K + ρ I.

    Attributes: ``evals`` (n,), ``evecs`` (n, n), ``rho`` (the ridge), ``tol`` (rank tolerance).
    Negative eigenvalues from round-off are clamped to 0 where the dynamics use them, as for a
    positive semi-definite matrix.
    """

    def __init__(self, k: torch.Tensor, rho: float = 0.0):
        a = regularize(k, rho)
        evals, evecs = torch.linalg.eigh(a)
        self.evals, self.evecs, self.rho = evals, evecs, float(rho)
        self.tol = rank_tol(evals, k.shape[0])

    @property
    def lambda_max(self) -> float:
        return float(self.evals[-1])

    @property
    def lambda_min(self) -> float:
        return float(self.evals[0])

    def check_invertible(self) -> None:
        if self.lambda_min <= self.tol:
            raise SingularKernelError(singular_message(self.lambda_min, self.lambda_max))

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """V^T x for x of shape (n, ...)."""
        return torch.tensordot(self.evecs.T, x, dims=1)


def cholesky_factor(k: torch.Tensor, rho: float = 0.0) -> torch.Tensor:
    """Lower Cholesky factor L of K + ρ I (L Lᵀ = K + ρ I).

    Raises ``SingularKernelError`` naming the fix when the factorization fails or when a pivot
    shows K + ρ I is singular to working precision: min_i L_ii² is an upper bound of λ_min, so
    min_i L_ii² <= n · eps · max_i A_ii proves near-singularity (duplicate inputs, rank-deficient
    kernels).
    """
    a = regularize(k, rho)
    n = a.shape[0]
    chol, info = torch.linalg.cholesky_ex(a)
    diag_max = float(torch.diagonal(a).abs().max()) if n else 0.0
    tol = n * torch.finfo(a.dtype).eps * diag_max
    if int(info) != 0 or float((torch.diagonal(chol) ** 2).min()) <= tol:
        evals = torch.linalg.eigvalsh(a)
        pairs = kernel_near_duplicates(a)
        extra = f" The kernel has {describe(pairs, 'kernel distance')}." if pairs else ""
        raise SingularKernelError(singular_message(float(evals[0]), float(evals[-1])) + extra)
    return chol


def cholesky_solver(k: torch.Tensor, rho: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function b (n, ...) -> (K + ρ I)^{-1} b through ``cholesky_factor`` (same errors)."""
    chol = cholesky_factor(k, rho)
    n = chol.shape[0]

    def solve(b: torch.Tensor) -> torch.Tensor:
        flat = b.reshape(n, -1)
        return torch.cholesky_solve(flat, chol).reshape(b.shape)

    return solve


def through_diag(left: torch.Tensor, g: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left diag(g_t) right for every row g_t of g: left (m, n), g (T, n), right (n, O) ->
    (T, m, O), as one matrix product left @ [g_1 ∘ right, ..., g_T ∘ right]."""
    t, n = g.shape
    coeff = (g[:, :, None] * right[None]).permute(1, 0, 2).reshape(n, -1)       # (n, T·O)
    return (left @ coeff).reshape(left.shape[0], t, -1).permute(1, 0, 2)


def sandwich_diag(left: torch.Tensor, g: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """left diag(g_t) otherᵀ for every row g_t: left (m, n), g (T, n), other (l, n) -> (T, m, l)."""
    return (left[None] * g[:, None, :]) @ other.T
