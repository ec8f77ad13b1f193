"""The arc-cosine map of the ReLU family, once: the reference, the fast drop-in, and the shared
constants of every implementation (torch here, C++ in ``native/fused_conv_relu.cpp``).

For φ(x) = a·min(x, 0) + b·max(x, 0) and (u, v) ~ N(0, [[v1, c], [c, v2]]) with angle θ,
cos θ = ρ = c / sqrt(v1 v2), the arc-cosine kernel of Cho & Saul (2009, eq. 6 with n = 1)
gives, with hs = (a²+b²)/2 and k = (a-b)²/(2π):

    E[φ(u)φ(v)]     = hs · c + k · sqrt(v1 v2) · S(θ),       S(θ) = sin θ - θ cos θ
    E[φ'(u)φ'(v)]   = hs - k · θ
    E[(φ(u)-φ(v))²] = hs · E[(u-v)²] - 2k · sqrt(v1 v2) · S(θ)

Edge conventions (the same in every implementation; tested at each edge in
tests/test_layers_relu_map.py):

* zero variance (v1 = 0 or v2 = 0, e.g. a zero input without bias): θ = π/2, i.e. the input
  is orthogonal to everything, which is the convention φ'(0) = (a+b)/2;
* ρ outside [-1, 1] (rounding) is clamped, and |ρ| within ``SNAP_ULPS`` ulps of 1 (of the
  dtype computed in) is set to ±1: rounding alone puts ρ = v·(1/√v)² that far from 1 for an
  input against itself, which would otherwise show as θ ≈ 1e-8 instead of 0;
* nearly equal inputs (the precise path): θ from the squared distance d = E[(u-v)²] instead
  of the correlation, sin²(θ/2) = (d - (√v1 - √v2)²) / (4 √(v1 v2)) clamped to [0, 1], and
  S(θ) by its Taylor series for small θ (arccos of 1 - O(ε) would lose half the digits);
* deep chains (``chord_map``): θ from the chord e = 2 √(v1 v2)(1 - ρ) = d - (√v1 - √v2)²
  carried itself (``ntkit.layers.chord``), sin²(θ/2) = e / (4 √(v1 v2)) clamped to [0, 1].
  With √(v1' v2') = hs √(v1 v2) after the map, the post-activation chord is

      e' = 2 (hs √(v1 v2) - E[φ(u)φ(v)]) = hs · e - 2k · √(v1 v2) · S(θ),

  a difference without cancellation for small θ (hs · e ≈ hs √(v1 v2) θ², the second term
  ≈ (2k/3) √(v1 v2) θ³), clamped at 0.

``exact_map`` is the reference (float64 via ``reference``; it is also the precise path of the
layers in their own dtype). ``fast_map`` is the drop-in of the fast paths (the fully-connected
fast path and the fused convolutional pass in torch, compiled or eager): rank-one factors
r = 1/√v, g = √v, and arccos by the library or by ``acos_poly``. The C++ kernels
(``conv_native``) are the same drop-in; they get the constants below from a header generated
at build time (``native_header``), never from a copy.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

# asin(y)/y = P(y²) on y ∈ [0, 1/2]: least-squares fits on 200 Chebyshev nodes of z = y² ∈
# [0, 1/4] in 50-digit arithmetic (mpmath). Degree 12 (max relative error 1.5e-17): the torch
# ``acos_poly`` and the C++ double kernels; degree 5 (4.6e-9): the C++ float kernels.
ASIN_COEFS_F64 = (1.0, 0.1666666666666484, 0.07500000000404858, 0.044642856791215726,
                  0.03038196027149515, 0.02237173660319574, 0.017359969965541983,
                  0.013883027829435166, 0.0121816790888421, 0.006480855348779324,
                  0.01964239671205795, -0.016384436448802192, 0.032011340323281685)
ASIN_COEFS_F32 = (0.9999999957384342, 0.16666787011719464, 0.07494534269355964,
                  0.045539009713168196, 0.02390936359009257, 0.04255359910635753)
# |ρ| > 1 - SNAP_ULPS·eps is set to ±1 (eps of the dtype computed in)
SNAP_ULPS = 4
_SERIES_MAX_THETA = 0.3
# S(θ) = Σ_{k≥1} (-1)^(k+1) 2k θ^(2k+1)/(2k+1)!: the coefficients of θ^17, θ^15, ..., θ^3
_S_SERIES = tuple((-1) ** (k + 1) * 2 * k / math.factorial(2 * k + 1) for k in range(8, 0, -1))


def coefs(a: float, b: float) -> Tuple[float, float]:
    """(hs, diff2) = ((a²+b²)/2, (a-b)²) of φ = a·min(x, 0) + b·max(x, 0); k = diff2/(2π)."""
    return (a * a + b * b) / 2, (a - b) ** 2


def snap_limit(dtype: torch.dtype) -> float:
    """1 - SNAP_ULPS·eps(dtype): correlations beyond it in absolute value are set to ±1."""
    return 1.0 - SNAP_ULPS * torch.finfo(dtype).eps


def snap_(rho: torch.Tensor) -> torch.Tensor:
    """In place: |ρ| > ``snap_limit`` (clamping included) becomes ±1; returns ``rho``."""
    lim = snap_limit(rho.dtype)
    return rho.masked_fill_(rho > lim, 1.0).masked_fill_(rho < -lim, -1.0)


def acos_poly(x: torch.Tensor) -> torch.Tensor:
    """arccos on [-1, 1] from one polynomial (vectorizes when compiled, unlike the library
    arccos on many CPUs): for |x| ≤ 1/2, π/2 - asin x; above, 2 asin(sqrt((1 - |x|)/2)) (exact
    in 1 - |x|, so accurate near ±1); asin y = y·P(y²), P of ``ASIN_COEFS_F64``; error ≲ 4e-16."""
    a = x.abs()
    big = a > 0.5
    z = torch.where(big, (1.0 - a) * 0.5, a * a)
    y = torch.where(big, torch.sqrt(z), a)
    p = torch.full_like(z, ASIN_COEFS_F64[-1])
    for c in ASIN_COEFS_F64[-2::-1]:
        p = p * z + c
    p = p * y
    r = torch.where(big, 2.0 * p, math.pi / 2 - torch.where(x < 0, -p, p))
    return torch.where(big & (x < 0), math.pi - r, r)


def sin_minus_theta_cos(theta: torch.Tensor) -> torch.Tensor:
    """S(θ) = sin θ - θ cos θ, accurate to a few ulps for every θ in [0, π] (the Taylor series
    Σ_{k≥1} (-1)^(k+1) 2k θ^(2k+1)/(2k+1)! up to θ^17 below θ = 0.3, where the difference
    cancels)."""
    small = theta < _SERIES_MAX_THETA
    if not bool(small.any()):
        return torch.sin(theta) - theta * torch.cos(theta)
    # the series everywhere (Horner, in place), then the direct form where θ is not small
    t2 = theta * theta
    series = torch.full_like(t2, _S_SERIES[0])
    for c in _S_SERIES[1:]:
        series.mul_(t2).add_(c)
    series.mul_(t2).mul_(theta)
    big = ~small
    if bool(big.any()):
        t = theta[big]
        series[big] = torch.sin(t) - t * torch.cos(t)
    return series


def exact_map(cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, half_sum: float,
              diff2: float, dist: Optional[torch.Tensor] = None, need_dot: bool = True
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The reference map (module doc, every edge convention), in the dtype of its inputs.

    cov: pre-activation covariances E[uv]; v1, v2: variances broadcasting against cov;
    dist: E[(u-v)²] (same shape as cov) for the precise path, or None (θ from the correlation).
    Returns (E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None, E[(φ(u)-φ(v))²] or None (None when dist is))."""
    k = diff2 / (2 * math.pi)
    sv = torch.sqrt(v1 * v2)
    zero = sv == 0
    safe = torch.where(zero, torch.ones_like(sv), sv)
    if dist is None:
        theta = torch.acos(snap_(cov / safe))
    else:
        gap = torch.sqrt(v1) - torch.sqrt(v2)
        theta = theta_from_chord(dist - gap * gap, safe)
    theta, s = _angle_terms(theta, zero, sv)
    nngp = half_sum * cov + k * s
    dot = half_sum - k * theta if need_dot else None
    new_dist = None if dist is None else (half_sum * dist - 2 * k * s).clamp(min=0.0)
    return nngp, dot, new_dist


def theta_from_chord(chord: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
    """θ = 2 asin √h, h = sin²(θ/2) = (1 - ρ)/2 = chord / (4 sv) clamped to [0, 1] (sv =
    √(v1 v2) > 0): the angle to the relative precision of the chord (module doc)."""
    h = torch.div(chord, sv).mul_(0.25).clamp_(0.0, 1.0)
    return h.sqrt_().asin_().mul_(2.0)


def _angle_terms(theta: torch.Tensor, zero: Optional[torch.Tensor], sv: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(θ with π/2 where ``zero`` (a zero variance; None: none), √(v1 v2) · S(θ))."""
    if zero is not None:
        theta = torch.where(zero, torch.full_like(theta, math.pi / 2), theta)
    return theta, sin_minus_theta_cos(theta).mul_(sv)


def chord_map(cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, half_sum: float,
              diff2: float, chord: torch.Tensor, need_dot: bool
              ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """The map with θ from the chord e = 2 √(v1 v2)(1 - ρ) (module doc), in the dtype of its
    inputs; ``cov`` and ``chord`` (same shape) are consumed (overwritten). v1, v2 broadcast
    against cov. Returns (E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None, e' = hs·e - 2k·√(v1 v2)·S(θ))."""
    k = diff2 / (2 * math.pi)
    sv = torch.sqrt(v1 * v2)
    zero = sv == 0
    if bool(zero.any()):
        theta, s = _angle_terms(theta_from_chord(chord, torch.where(zero, 1.0, sv)), zero, sv)
    else:
        theta, s = _angle_terms(theta_from_chord(chord, sv), None, sv)
    nngp = cov.mul_(half_sum).add_(s, alpha=k)
    dot = theta.mul_(-k).add_(half_sum) if need_dot else None
    return nngp, dot, chord.mul_(half_sum).sub_(s, alpha=2 * k).clamp_(min=0.0)


def reference(cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, a: float, b: float,
              dist: Optional[torch.Tensor] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``exact_map`` of ABReLU(a, b) in float64 (the inputs are converted): the map every
    implementation is tested against. Returns (nngp, dot, dist or None)."""
    f64 = [None if t is None else torch.as_tensor(t, dtype=torch.float64)
           for t in (cov, v1, v2, dist)]
    return exact_map(f64[0], f64[1], f64[2], *coefs(a, b), dist=f64[3], need_dot=True)


def rank_one_factors(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(r, g) = (1/√v with 0 where v = 0, √v): the factors of ``fast_map`` (r = 0 gives ρ = 0,
    i.e. the zero-variance convention θ = π/2)."""
    return torch.where(v > 0, torch.rsqrt(v), torch.zeros_like(v)), torch.sqrt(v)


def fast_map(cov: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, g1: torch.Tensor,
             g2: torch.Tensor, half_sum: float, diff2: float, need_dot: bool,
             poly: bool = False, inplace: bool = False
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The drop-in of ``exact_map`` without a distance: ρ = c·r1·r2 (clamped and snapped),
    θ = arccos ρ (``acos_poly`` when ``poly``, else the library), S = sqrt(1-ρ²) - θρ.
    r, g from ``rank_one_factors``, broadcasting against cov. ``inplace``: cov is overwritten
    with the result (fewer temporaries). Returns (E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None)."""
    k = diff2 / (2 * math.pi)
    rho = snap_(torch.mul(cov, r1).mul_(r2))
    theta = acos_poly(rho) if poly else torch.acos(rho)
    s = torch.mul(rho, rho).neg_().add_(1.0).clamp_(min=0.0).sqrt_()
    s.addcmul_(theta, rho, value=-1.0).mul_(g1 * k).mul_(g2)
    nngp = (cov.mul_(half_sum) if inplace else cov * half_sum).add_(s)
    dot = theta.mul_(-k).add_(half_sum) if need_dot else None
    return nngp, dot
