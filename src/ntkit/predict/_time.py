"""Spectral time factors of MSE gradient flow and gradient descent.

For a kernel eigenvalue λ ≥ 0 and a rate c = learning_rate / N (N = 1 for the summed loss
½ Σ (f − y)², N = y.size for the mean loss), the residual along an eigenvector decays as

    flow (continuous time):   d(t) = exp(−c λ t)
    gradient descent (steps): d(t) = (1 − c λ)^t,     t = 0, 1, 2, ...

and the factor that carries the residual to other points is φ_t(λ)/λ with φ = 1 − d
(Lee et al. 2019, "Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
Descent", section 2.2; discrete form as in seed 000). Computed without cancellation:
−expm1(t·log1p(−cλ))/λ, with the limit c·t at λ = 0 and 1/λ at t = ∞.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ._linalg import SingularKernelError, singular_message


def as_times(t, like: torch.Tensor, discrete: bool) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Times as a flat tensor (T,) in ``like``'s dtype and device, and their original shape.

    ``None`` means t = ∞ (a scalar). Times must be ≥ 0; for gradient descent, whole numbers of
    steps (or ∞).
    """
    if t is None:
        t = float("inf")
    if isinstance(t, torch.Tensor):
        arr = t.detach().to(dtype=torch.float64, device="cpu").numpy()
    else:
        arr = np.asarray(t, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError("t: contains NaN")
    if (arr < 0).any():
        raise ValueError(f"t: times must be >= 0, got min {arr.min()}")
    if discrete:
        finite = arr[np.isfinite(arr)]
        if (finite != np.round(finite)).any():
            raise ValueError("t: gradient descent (discrete=True) takes whole numbers of steps")
    shape = tuple(arr.shape)
    return torch.as_tensor(arr.reshape(-1), dtype=like.dtype, device=like.device), shape


def decay(evals: torch.Tensor, t: torch.Tensor, c: float, discrete: bool) -> torch.Tensor:
    """d(t) of every eigenvalue at every time: shape (T, n). Negative λ (round-off) count as 0."""
    lam = evals.clamp(min=0)[None, :]
    tt = t[:, None]
    if not discrete:
        out = torch.exp(-c * lam * tt)
    else:
        base = 1 - c * lam
        pos = torch.exp(tt * torch.log1p(-(c * lam).clamp(max=1.0)))
        out = torch.where(base > 0, pos, torch.pow(base, tt))
    return torch.where(torch.isinf(tt) & (lam == 0), torch.ones_like(out), out)


def phi_over_lambda(evals: torch.Tensor, t: torch.Tensor, c: float, discrete: bool,
                    tol: float, singular: str = "raise") -> torch.Tensor:
    """(1 − d(t))/λ for every eigenvalue and time, shape (T, n).

    At λ = 0 this is its limit c·t (finite t). At t = ∞ it is 1/λ, which needs every λ above
    the rank tolerance ``tol``; otherwise ``singular='raise'`` raises SingularKernelError (with
    the fix) and ``singular='pinv'`` drops those directions (factor 0): the limit of gradient
    flow started at 0, the minimum-norm interpolant (a pseudo-inverse). For gradient descent at
    t = ∞ the learning rate must also be stable (c·λ_max < 2).
    """
    lam = evals.clamp(min=0)[None, :]
    tt = t[:, None]
    has_inf = bool(torch.isinf(t).any())
    if has_inf and float(evals.min()) <= tol and singular == "raise":
        raise SingularKernelError(singular_message(float(evals.min()), float(evals.max())))
    if discrete and has_inf and float(c * evals.max()) >= 2:
        raise ValueError(
            f"gradient descent diverges: learning_rate/N * lambda_max = "
            f"{float(c * evals.max()):.4g}"
            f" >= 2; use a learning rate below the largest stable one, 2 N / lambda_max")
    safe = torch.where(lam > tol, lam, torch.ones_like(lam))
    if not discrete:
        num = -torch.expm1(-c * lam * tt)
    else:
        base = 1 - c * lam
        logb = torch.log1p(-(c * lam).clamp(max=1.0))
        num = torch.where(base > 0, -torch.expm1(tt * logb), 1 - torch.pow(base, tt))
    finite_t = torch.where(torch.isinf(tt), torch.zeros_like(tt), tt)
    small = torch.where(lam > 0, num / torch.where(lam > 0, lam, torch.ones_like(lam)),
                        c * finite_t * torch.ones_like(lam))
    inf_value = torch.where(lam > tol, 1.0 / safe, torch.zeros_like(lam)) * torch.ones_like(small)
    return torch.where(torch.isinf(tt), inf_value, small)


def scale(learning_rate: float, loss: str, y_size: int) -> float:
    """c = learning_rate / N with N = 1 ('sum': ½ Σ (f − y)²) or y.size ('mean')."""
    lr = float(learning_rate)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if loss == "sum":
        return lr
    if loss == "mean":
        return lr / y_size
    raise ValueError(f"loss must be 'sum' (L = 1/2 sum (f-y)^2) or 'mean' "
                     f"(L = 1/(2 N) sum (f-y)^2, N = y.size, neural-tangents), got {loss!r}")
