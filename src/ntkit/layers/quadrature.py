"""Activations without a closed form: Gauss–Hermite quadrature of the Gaussian expectations.

For (u, v) ~ N(0, [[v1, c], [c, v2]]) write u = √v1 z1, v = (c/√v1) z1 + √(v2 - c²/v1) z2 with
z1, z2 independent standard normals, and apply a degree-q probabilists' Gauss–Hermite rule on
each axis (exact for polynomials of degree 2q-1 in each variable):

    E[f(u) g(v)] ≈ Σ_i Σ_j w_i w_j f(√v1 x_i) g((c/√v1) x_i + √(v2 - c²/v1) x_j)

This costs q² evaluations per kernel entry (q = 25 by default, as neural-tangents'
``ElementwiseNumerical``); entries are processed in chunks to bound memory.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .activation import Activation

_CHUNK_EVALS = 1 << 21  # evaluations per chunk (entries x q^2)


def _nodes(degree: int, like: torch.Tensor):
    x, w = np.polynomial.hermite_e.hermegauss(degree)
    w = w / np.sqrt(2 * np.pi)
    return (torch.as_tensor(x, dtype=like.dtype, device=like.device),
            torch.as_tensor(w, dtype=like.dtype, device=like.device))


def gaussian_pair_expectation(f: Callable, g: Callable, cov: torch.Tensor, v1: torch.Tensor,
                              v2: torch.Tensor, degree: int) -> torch.Tensor:
    """E[f(u) g(v)] entrywise for (u, v) ~ N(0, [[v1, c], [c, v2]]); shapes broadcast."""
    cov, v1, v2 = torch.broadcast_tensors(cov, v1, v2)
    shape = cov.shape
    c, a, b = cov.reshape(-1), v1.reshape(-1), v2.reshape(-1)
    x, w = _nodes(degree, c)
    sa = torch.sqrt(a.clamp(min=0))
    slope = torch.where(sa > 0, c / torch.where(sa > 0, sa, torch.ones_like(sa)), torch.zeros_like(c))
    resid = torch.sqrt((b - slope * slope).clamp(min=0))
    out = torch.empty_like(c)
    step = max(1, _CHUNK_EVALS // (degree * degree))
    ww = w[:, None] * w[None, :]
    for lo in range(0, c.numel(), step):
        hi = min(lo + step, c.numel())
        fu = f(sa[lo:hi, None] * x)                                    # (E, q)
        vv = slope[lo:hi, None, None] * x[None, :, None] + resid[lo:hi, None, None] * x[None, None, :]
        gv = g(vv)                                                     # (E, q, q)
        out[lo:hi] = torch.einsum("ei,eij,ij->e", fu, gv, ww)
    return out.reshape(shape)


def gaussian_expectation(f: Callable, var: torch.Tensor, degree: int) -> torch.Tensor:
    """E[f(u)] entrywise for u ~ N(0, var)."""
    x, w = _nodes(degree, var)
    s = torch.sqrt(var.clamp(min=0)).reshape(-1, 1)
    return (f(s * x) @ w).reshape(var.shape)


def autograd_derivative(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """The elementwise derivative of an elementwise torch function, by autograd."""

    def deriv(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xx).sum(), xx)
        return g

    return deriv


class Elementwise(Activation):
    """Any elementwise function φ, its kernel by Gauss–Hermite quadrature (module doc).

    Parameters
    ----------
    fn : callable mapping a torch tensor to a tensor of the same shape, elementwise.
    fn_prime : its derivative; by default obtained by autograd through ``fn``.
    degree : quadrature degree per axis (cost grows as degree²).
    """

    name = "Elementwise"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 fn_prime: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 degree: int = 25):
        if not callable(fn):
            raise TypeError(f"Elementwise: fn must be callable, got {type(fn).__name__}")
        if int(degree) < 2:
            raise ValueError(f"Elementwise: degree must be >= 2, got {degree}")
        self._fn = fn
        self._fn_prime = fn_prime or autograd_derivative(fn)
        self.degree = int(degree)

    def fn(self, x):
        return self._fn(x)

    def var_moment(self, var):
        return gaussian_expectation(lambda t: self._fn(t) ** 2, var, self.degree)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        nngp = gaussian_pair_expectation(self._fn, self._fn, cov, v1, v2, self.degree)
        dot = (gaussian_pair_expectation(self._fn_prime, self._fn_prime, cov, v1, v2, self.degree)
               if need_dot else None)
        return nngp, dot, None

    def __repr__(self):
        name = getattr(self._fn, "__name__", type(self._fn).__name__)
        return f"Elementwise({name}, degree={self.degree})"


class Tanh(Elementwise):
    """φ = tanh, by quadrature (no closed form)."""

    name = "Tanh"

    def __init__(self, degree: int = 25):
        super().__init__(torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, degree)

    def __repr__(self):
        return f"Tanh(degree={self.degree})"


class Sigmoid(Elementwise):
    """φ = logistic sigmoid 1/(1+e^{-x}), by quadrature (no closed form)."""

    name = "Sigmoid"

    def __init__(self, degree: int = 25):
        def d(x):
            s = torch.sigmoid(x)
            return s * (1 - s)
        super().__init__(torch.sigmoid, d, degree)

    def __repr__(self):
        return f"Sigmoid(degree={self.degree})"
