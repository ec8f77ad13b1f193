"""Activations without a closed form: ``Elementwise(fn)``, ``Tanh``, ``Sigmoid``.

By default their kernels are exact to a relative tolerance (1e-12 unless told otherwise; see ``hermite_numeric``):
the Hermite series of ``hermite`` with coefficients computed by ``hermite_numeric``. Given an
explicit ``degree``, they use instead the fixed product Gauss–Hermite rule below (ntkit's
earlier default, neural-tangents' method; kept for comparison, see
``benchmarks/activation_kernels.py``).

The fixed product rule:

For (u, v) ~ N(0, Λ), Λ = [[v1, c], [c, v2]] = Q diag(λ1, λ2) Qᵀ (closed-form 2x2 symmetric
eigendecomposition, Q a rotation by φ = atan2(c, (v1 - v2)/2) / 2), write
(u, v) = Q diag(√λ1, √λ2) (z1, z2) with z1, z2 independent standard normals, and apply a
degree-q probabilists' Gauss–Hermite rule on each axis:

    E[f(u) g(v)] ≈ Σ_i Σ_j w_i w_j f(u_ij) g(v_ij)

The eigen (rather than Cholesky) factorization makes the rule symmetric under exchanging the
two inputs, so kernel matrices come out exactly symmetric whatever the blocking. It costs 2q²
evaluations per kernel entry; entries are processed in chunks to bound memory.
Accuracy depends on the smoothness of φ: see docs/conventions.md (Tanh needs a higher degree
than Sigmoid; functions with a kink converge slowly: prefer the closed-form layers).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .hermite import HermiteSeries
from .hermite_numeric import FIRST_TERMS, numeric_coefficients
from .hyper import check_finite

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
    half_gap = (a - b) / 2
    radius = torch.sqrt(half_gap * half_gap + c * c)
    mean = (a + b) / 2
    root1 = torch.sqrt((mean + radius).clamp(min=0))
    root2 = torch.sqrt((mean - radius).clamp(min=0))
    phi = torch.atan2(c, half_gap) / 2
    cos, sin = torch.cos(phi), torch.sin(phi)
    out = torch.empty_like(c)
    step = max(1, _CHUNK_EVALS // (degree * degree))
    ww = w[:, None] * w[None, :]
    z1, z2 = x[:, None], x[None, :]
    for lo in range(0, c.numel(), step):
        hi = min(lo + step, c.numel())
        s1 = root1[lo:hi, None, None] * z1        # √λ1 z1, (E, q, 1)
        s2 = root2[lo:hi, None, None] * z2        # √λ2 z2, (E, 1, q)
        cs, sn = cos[lo:hi, None, None], sin[lo:hi, None, None]
        u = cs * s1 - sn * s2
        v = sn * s1 + cs * s2
        out[lo:hi] = torch.einsum("eij,eij,ij->e", f(u), g(v), ww)
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


class Elementwise(HermiteSeries):
    """Any elementwise function φ; its kernel exact to ``tol`` through its Hermite series
    (``ntkit.layers.hermite``), or by the fixed Gauss–Hermite rule (module doc) when ``degree``
    is given.

    Parameters
    ----------
    fn : callable mapping a torch tensor to a tensor of the same shape, elementwise.
    fn_prime : its derivative; by default obtained by autograd through ``fn``.
    degree : None (default) for the exact series; an integer >= 2 for the fixed product
        Gauss–Hermite rule of that degree per axis (cost 2·degree² evaluations per entry; even
        degrees keep nodes off 0, where functions with a kink have an ambiguous derivative).
    tol : relative accuracy of the series (the squared-coefficient tail, ``hermite_numeric``).
    max_terms : the most Hermite terms used; beyond, a ``HermiteAccuracyWarning`` says the
        estimated error (functions with a kink, or very large pre-activation variances).
    """

    name = "Elementwise"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 fn_prime: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 degree: Optional[int] = None, tol: float = 1e-12, max_terms: int = 1024):
        if not callable(fn):
            raise TypeError(f"Elementwise: fn must be callable, got {type(fn).__name__}")
        if fn_prime is not None and not callable(fn_prime):
            raise TypeError(f"Elementwise: fn_prime must be callable, got {type(fn_prime).__name__}")
        if degree is not None and (int(degree) != degree or int(degree) < 2):
            raise ValueError(f"Elementwise: degree must be None or an integer >= 2, got {degree}")
        tol = check_finite(tol, "Elementwise: tol")
        if not 0 < tol < 1:
            raise ValueError(f"Elementwise: tol must be in (0, 1), got {tol}")
        if int(max_terms) != max_terms or not 2 * FIRST_TERMS <= int(max_terms) <= 1 << 14:
            raise ValueError(f"Elementwise: max_terms must be an integer in [{2 * FIRST_TERMS}, "
                             f"16384], got {max_terms}")
        self._fn = fn
        self._fn_prime = fn_prime or autograd_derivative(fn)
        self.degree = None if degree is None else int(degree)
        self.tol, self.max_terms = float(tol), int(max_terms)

    def fn(self, x):
        return self._fn(x)

    def origin_values(self):
        z = torch.zeros(1, dtype=torch.float64)
        return float(self._fn(z)[0]), float(self._fn_prime(z)[0])

    def coefficients(self, var):
        return numeric_coefficients(self._fn, self._fn_prime, var, self.tol, self.max_terms,
                                    repr(self))

    def var_moment(self, var):
        if self.degree is None:
            return super().var_moment(var)
        return gaussian_expectation(lambda t: self._fn(t) ** 2, var, self.degree)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        if self.degree is None:
            return super().pair_moments(cov, v1, v2, dist, need_dot)
        nngp = gaussian_pair_expectation(self._fn, self._fn, cov, v1, v2, self.degree)
        dot = (gaussian_pair_expectation(self._fn_prime, self._fn_prime, cov, v1, v2, self.degree)
               if need_dot else None)
        return nngp, dot, None

    def _options(self) -> str:
        return "" if self.degree is None else f"degree={self.degree}"

    def __repr__(self):
        name = getattr(self._fn, "__name__", type(self._fn).__name__)
        opts = self._options()
        return f"Elementwise({name}{', ' + opts if opts else ''})"


class Tanh(Elementwise):
    """φ = tanh (no closed form): exact Hermite series by default, or Gauss–Hermite of
    ``degree``."""

    name = "Tanh"

    def __init__(self, degree: Optional[int] = None, tol: float = 1e-12):
        super().__init__(torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, degree, tol)

    def __repr__(self):
        return f"Tanh({self._options()})"


def _sigmoid_prime(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


class Sigmoid(Elementwise):
    """φ = logistic sigmoid 1/(1+e^{-x}) (no closed form): exact Hermite series by default, or
    Gauss–Hermite of ``degree``."""

    name = "Sigmoid"

    def __init__(self, degree: Optional[int] = None, tol: float = 1e-12):
        super().__init__(torch.sigmoid, _sigmoid_prime, degree, tol)

    def __repr__(self):
        return f"Sigmoid({self._options()})"
