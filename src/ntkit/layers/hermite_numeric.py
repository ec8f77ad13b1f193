"""Hermite coefficients of any elementwise function, computed numerically to a tolerance.

a_k(s) = E[f(s Z) h_k(Z)] (h_k = He_k/√k!, see ``hermite``) by an N-point Gauss–Hermite rule
with N = 2K nodes: the rule integrates f·h_k exactly up to the aliasing of the coefficients of
index ≥ 2N - k ≥ 3K, far below the truncation. The functions are evaluated as
g_k(z_j) = √w_j h_k(z_j) (the same recurrence started from √w_j), which stays bounded where
h_k alone would overflow, so a_k = Σ_j √w_j f(s z_j) g_k(z_j).

K is chosen adaptively, doubling from 64 up to ``max_terms``: it is accepted when the
estimated squared tail T = Σ_{k ≥ K} a_k² (``tail_estimate``: the last quarter's mass continued
geometrically, times 10) is below ``tol`` times Σ_k a_k², for f and for f' at every scale. With
T ≤ tol·E[f²] at both scales the truncation error of an entry is at most
tol·(E[f(u)²] E[f(v)²])^½ (Cauchy–Schwarz, see ``hermite``): ``tol`` is the relative accuracy,
the diagonal included. Hermite coefficients of functions analytic in a strip |Im z| < τ/s decay
like exp(-(τ/s)√(2k)): tanh (τ = π/2) needs ~250 terms at variance 1.6 and thousands past
variance 5; entire functions (erf, sin, polynomials) need few. Smooth (analytic)
functions converge; functions with a kink (|x|, relu) do not within ``max_terms``, and a
``HermiteAccuracyWarning`` reports the estimated error.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Tuple

import numpy as np
import torch

from .hermite import hermite_functions

FIRST_TERMS = 64


class HermiteAccuracyWarning(UserWarning):
    """The Hermite series of an activation did not reach its tolerance within ``max_terms``."""


_RESCALE = 1e150


def _scaled_recurrence(z: np.ndarray, terms: int):
    """h_0(z)..h_(terms-1)(z) in scaled form: yields (k, p, log_scale) with h_k = p·exp(log_scale)
    (p rescaled by 1e-150 whenever it grows past 1e150, so nothing overflows at large |z|)."""
    p, q = np.ones_like(z), np.zeros_like(z)
    log_scale = np.zeros_like(z)
    for k in range(terms):
        yield k, p, log_scale
        p, q = (z * p - np.sqrt(k) * q) / np.sqrt(k + 1), p
        big = np.abs(p) > _RESCALE
        if big.any():
            p[big] /= _RESCALE
            q[big] /= _RESCALE
            log_scale = log_scale + big * np.log(_RESCALE)


@functools.lru_cache(maxsize=8)
def _rule(nodes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes z_j of the standard Gaussian and the log of their weights,
    log w_j = -log Σ_{k<nodes} h_k(z_j)² (Christoffel numbers; Σ_j w_j = 1), computed in scaled
    form so that weights far below the smallest double keep their logarithm."""
    from scipy.special import roots_hermitenorm

    z = roots_hermitenorm(nodes)[0]
    total = np.zeros_like(z)
    shift = np.zeros_like(z)            # total holds Σ h_k² · exp(-2 shift)
    for _, p, log_scale in _scaled_recurrence(z, nodes):
        grow = log_scale > shift
        total = np.where(grow, total * np.exp(-2 * (log_scale - shift)), total)
        shift = np.maximum(shift, log_scale)
        total = total + p * p * np.exp(2 * (log_scale - shift))
    return z, -(np.log(total) + 2 * shift)


@functools.lru_cache(maxsize=8)
def _weighted_functions(nodes: int, terms: int) -> np.ndarray:
    """G (nodes, terms) with G[j, k] = √w_j h_k(z_j) (bounded by ~1 for every j, k)."""
    z, log_w = _rule(nodes)
    g = np.empty((nodes, terms))
    for k, p, log_scale in _scaled_recurrence(z, terms):
        g[:, k] = p * np.exp(log_scale + log_w / 2)
    return g


@functools.lru_cache(maxsize=16)
def _tables(terms: int, device: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, √w, G) on ``device`` for 2·terms nodes, restricted to the nodes where some
    √w_j h_k(z_j) is representable (the others contribute nothing)."""
    nodes = 2 * terms
    z, log_w = _rule(nodes)
    g_all = _weighted_functions(nodes, terms)
    keep = np.abs(g_all).max(1) > 0
    as_t = functools.partial(torch.as_tensor, dtype=torch.float64, device=device)
    return as_t(z[keep]), as_t(np.exp(log_w[keep] / 2)), as_t(g_all[keep])


def _project(f: Callable, scales: torch.Tensor, terms: int, name: str) -> torch.Tensor:
    """(m, terms) coefficients a_k(s) of f at the scales s (m,) with 2·terms nodes."""
    zt, swt, g = _tables(terms, str(scales.device))
    x = scales[:, None] * zt[None, :]
    with torch.no_grad():
        values = f(x).to(torch.float64)
    if values.shape != x.shape:
        raise ValueError(f"{name}: the function must be elementwise (input shape {tuple(x.shape)}"
                         f", output shape {tuple(values.shape)})")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name}: the function is not finite at some Gaussian quadrature node "
                         f"(|x| <= {float(x.abs().max()):.3g}); its Gaussian moments may not exist")
    return (values * swt) @ g


#: squared coefficients below this fraction of Σ a_k² are rounding noise (coefficients carry
#: absolute errors ~ eps √N (Σ a_k²)^½, i.e. ~1e-29 relative when squared)
_NOISE = 1e-24


def tail_estimate(a: torch.Tensor) -> torch.Tensor:
    """Estimated Σ_{k ≥ K} a_k² / Σ_k a_k² per row of a (m, K): the last quarter's squared mass
    q4 continued geometrically with the ratio r = q4/q3 to the quarter before, times a safety
    factor 10: 10 q4 r/(1 - r) (r ≥ 1 gives infinity: not decaying yet); 0 when q4 is at the
    rounding floor."""
    quarter = a.shape[-1] // 4
    sq = a * a
    total = sq.sum(-1)
    q3 = sq[:, 2 * quarter:3 * quarter].sum(-1)
    q4 = sq[:, 3 * quarter:].sum(-1)
    r = torch.where(q3 > 0, q4 / torch.where(q3 > 0, q3, torch.ones_like(q3)),
                    torch.where(q4 > 0, torch.full_like(q4, float("inf")), torch.zeros_like(q4)))
    est = torch.where(r < 1, 10 * q4 * r / (1 - r.clamp(max=1 - 1e-16)),
                      torch.full_like(r, float("inf")))
    # at or below the rounding floor of the computed coefficients: nothing left to resolve
    est = torch.where(q4 <= _NOISE * total, torch.zeros_like(est), est)
    return torch.where(total > 0, est / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(est))


def numeric_coefficients(f: Callable, f_prime: Callable, var: torch.Tensor, tol: float,
                         max_terms: int, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, a') of shape (m, K): the Hermite coefficients of f(√var Z) and f'(√var Z), K
    adaptive (module doc). ``var`` (m,) float64."""
    scales = torch.sqrt(var.clamp(min=0))
    terms = FIRST_TERMS
    chosen = torch.zeros(var.shape[0], dtype=torch.long, device=var.device)  # K per scale
    while True:
        a = _project(f, scales, terms, name)
        d = _project(f_prime, scales, terms, name)
        est = torch.maximum(tail_estimate(a), tail_estimate(d))
        chosen = torch.where((chosen == 0) & (est <= tol), torch.full_like(chosen, terms), chosen)
        if bool((chosen > 0).all()) or terms >= max_terms:
            break
        terms *= 2
    if not bool((chosen > 0).all()):
        worst = float(est[chosen == 0].max())
        warnings.warn(f"{name}: the Hermite series did not converge in {terms} terms (variance up "
                      f"to {float(var.max()):.3g}); estimated relative error of the kernel "
                      f"{worst:.1e}. Functions with a kink converge slowly: use the closed-form "
                      f"layers (ReLU family) for them, or raise max_terms.",
                      HermiteAccuracyWarning, stacklevel=4)
        chosen = torch.where(chosen == 0, torch.full_like(chosen, terms), chosen)
    # each scale keeps the terms it needed, whatever the other scales of the batch: an entry's
    # value depends on its own two variances only (kernels independent of the blocking)
    keep = torch.arange(terms, device=var.device)[None, :] < chosen[:, None]
    return a * keep, d * keep


def hermite_transform_check(terms: int) -> float:
    """max |G^T G - I| of the weighted functions with 2·terms nodes (discrete orthonormality
    of h_0..h_(terms-1); exact in exact arithmetic since 2·(terms-1) < 2·nodes)."""
    g = torch.from_numpy(_weighted_functions(2 * terms, terms))
    return float((g.T @ g - torch.eye(terms, dtype=g.dtype)).abs().max())


__all__ = ["numeric_coefficients", "HermiteAccuracyWarning", "hermite_functions",
           "hermite_transform_check"]
