"""Exact kernels of elementwise activations through their Hermite expansions.

With the normalized (probabilists') Hermite polynomials h_k = He_k / √k!, orthonormal under
the standard Gaussian, expand φ at the scale s = √var of each input:

    φ(s z) = Σ_k a_k(s) h_k(z),        a_k(s) = E[φ(s Z) h_k(Z)],   Z ~ N(0, 1).

For (u, v) ~ N(0, [[v1, c], [c, v2]]) write u = s1 z1, v = s2 z2 with corr(z1, z2) = ρ = c/(s1 s2).
Mehler's formula E[h_j(z1) h_k(z2)] = δ_jk ρ^k gives the dual activation (O'Donnell 2014,
ch. 11; Daniely, Frostig & Singer 2016)

    E[φ(u) φ(v)]   = Σ_k a_k(s1) a_k(s2) ρ^k,
    E[φ'(u) φ'(v)] = Σ_k a'_k(s1) a'_k(s2) ρ^k,   a'_k(s) = E[φ'(s Z) h_k(Z)],
    E[φ(u)²]       = Σ_k a_k(s)²,

a power series in ρ evaluated by Horner's rule (K passes over the kernel block). It is smooth in
ρ up to ρ = ±1, so nearly equal inputs lose no digits, and the truncation error is bounded by
|ρ|^K (Σ_{k≥K} a_k(s1)²)^½ (Σ_{k≥K} a_k(s2)²)^½ (Cauchy–Schwarz): the tails of the
coefficients decide the accuracy, the diagonal (ρ = 1) included. A zero-variance input has
a_0 = φ(0) and no other coefficient; ρ is then taken as 0.

``HermiteSeries`` is the base activation: subclasses give the coefficients (``coefficients``);
``HermitePolynomial`` has a finite expansion, rescaled exactly:

    h_n(s z) = Σ_j s^(n-2j) (s²-1)^j √(n! (n-2j)!) / (j! (n-2j)! 2^j) · h_(n-2j)(z)

(the multiplication theorem of the Hermite polynomials), and h_n' = √n h_(n-1).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from .activation import Activation


def hermite_functions(z: torch.Tensor, count: int) -> torch.Tensor:
    """h_0(z), ..., h_(count-1)(z) stacked on a new last axis: shape z.shape + (count,).

    Three-term recurrence h_(k+1) = (z h_k - √k h_(k-1)) / √(k+1), h_0 = 1, h_1 = z.
    """
    out = torch.empty(z.shape + (count,), dtype=z.dtype, device=z.device)
    out[..., 0] = 1
    if count > 1:
        out[..., 1] = z
    for k in range(1, count - 1):
        out[..., k + 1] = (z * out[..., k] - math.sqrt(k) * out[..., k - 1]) / math.sqrt(k + 1)
    return out


def correlation(cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """ρ = c / √(v1 v2) clamped to [-1, 1]; 0 where a variance is 0."""
    prod = v1 * v2
    safe = torch.where(prod > 0, prod, torch.ones_like(prod))
    rho = (cov * torch.rsqrt(safe)).clamp_(-1.0, 1.0)
    return torch.where(prod > 0, rho, torch.zeros_like(rho))


def series(a: torch.Tensor, b: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Σ_k a[..., k] b[..., k] ρ^k by Horner's rule; a, b (..., K) broadcast against ρ."""
    count = a.shape[-1]
    at = a.movedim(-1, 0).to(rho.dtype)
    bt = b.movedim(-1, 0).to(rho.dtype)
    acc = torch.zeros(torch.broadcast_shapes(rho.shape, at.shape[1:], bt.shape[1:]),
                      dtype=rho.dtype, device=rho.device)
    for k in range(count - 1, -1, -1):
        acc.mul_(rho).addcmul_(at[k], bt[k])
    return acc


#: candidate correlation cut-offs of ``split_series`` and its truncation bound (rounding level:
#: the result does not depend on the cut chosen, hence not on the blocking)
_CUTS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
_SPLIT_TOL = 1e-16


def _relative_tails(c: torch.Tensor) -> torch.Tensor:
    """t (K+1,): the largest, over the rows of c (..., K), of Σ_{j≥k} c_j² / Σ_j c_j²."""
    sq = c.reshape(-1, c.shape[-1]).to(torch.float64) ** 2
    suffix = sq.flip(-1).cumsum(-1).flip(-1)
    total = suffix[:, :1].clamp(min=torch.finfo(torch.float64).tiny)
    return torch.cat([(suffix / total).amax(0), suffix.new_zeros(1)])


def split_series(a: torch.Tensor, b: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``series`` with fewer terms where |ρ| is small: for a cut c, the entries with |ρ| ≤ c
    need only the first k terms with c^k t(k) ≤ 1e-16 (t the relative coefficient tails, the
    Cauchy–Schwarz bound of the module doc), the others (the diagonal, nearly equal inputs)
    are gathered and summed in full. The cut minimizing the work is chosen per call."""
    count = a.shape[-1]
    if count <= 64 or rho.numel() < 1024:
        return series(a, b, rho)
    tails = torch.maximum(_relative_tails(a), _relative_tails(b)).cpu()
    absr = rho.abs()
    ks = torch.arange(count + 1, dtype=torch.float64)
    best_cost, best = count * rho.numel(), None
    for cut in _CUTS:
        ok = torch.nonzero(cut ** ks * tails <= _SPLIT_TOL)
        k_eff = int(ok[0]) if ok.numel() else count
        high = int((absr > cut).sum())
        cost = k_eff * rho.numel() + 3 * count * high
        if cost < best_cost:
            best_cost, best = cost, (cut, max(k_eff, 1))
    if best is None:
        return series(a, b, rho)
    cut, k_eff = best
    out = series(a[..., :k_eff], b[..., :k_eff], rho)
    mask = absr > cut
    if bool(mask.any()):
        shape = out.shape
        out[mask] = series(torch.broadcast_to(a, shape + (count,))[mask],
                           torch.broadcast_to(b, shape + (count,))[mask],
                           torch.broadcast_to(rho, shape)[mask])
    return out


def unique_coefficients(fn, v1: torch.Tensor, v2: torch.Tensor):
    """``fn(variances (m,)) -> tuple of (m, K) tensors`` evaluated once per distinct variance
    of v1 and v2 (in float64), and gathered back to v1.shape + (K,) and v2.shape + (K,)."""
    flat = torch.cat([v1.reshape(-1), v2.reshape(-1)]).to(torch.float64)
    values, inverse = torch.unique(flat, return_inverse=True)
    coefs = fn(values)
    n1 = v1.numel()
    first = tuple(c[inverse[:n1]].reshape(tuple(v1.shape) + (c.shape[-1],)) for c in coefs)
    second = tuple(c[inverse[n1:]].reshape(tuple(v2.shape) + (c.shape[-1],)) for c in coefs)
    return first, second


class HermiteSeries(Activation):
    """Base class of activations whose kernel is the Hermite series of the module doc.

    Subclasses implement ``coefficients(var)``: for variances ``var`` (m,) in float64, the
    tensors (a, a') of shape (m, K) and (m, K') (normalized Hermite coefficients of φ(√var Z)
    and of φ'(√var Z)).
    """

    def coefficients(self, var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _memo_coefficients(self, values: torch.Tensor):
        """``coefficients(values)`` for sorted distinct ``values``, reusing the last call's
        result when it covers them (``Activation.apply`` asks for the pairs, then for the
        variances of the same inputs)."""
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0].device == values.device and memo[0].numel():
            known, coefs = memo
            idx = torch.searchsorted(known, values).clamp_(max=known.numel() - 1)
            if bool((known[idx] == values).all()):
                return tuple(c[idx] for c in coefs)
        coefs = self.coefficients(values)
        self._memo = (values, coefs)
        return coefs

    def var_moment(self, var: torch.Tensor) -> torch.Tensor:
        (a, _), _ = unique_coefficients(self._memo_coefficients, var, var[:0])
        return (a * a).sum(-1).to(var.dtype)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        (a1, d1), (a2, d2) = unique_coefficients(self._memo_coefficients, v1, v2)
        rho = correlation(cov, v1, v2)
        nngp = split_series(a1, a2, rho)
        dot = split_series(d1, d2, rho) if need_dot else None
        return nngp, dot, None


def rescale_matrix(degree: int, var: torch.Tensor) -> torch.Tensor:
    """T (m, degree+1, degree+1) with h_n(s z) = Σ_m T[n, m] h_m(z), s = √var (module doc)."""
    s = torch.sqrt(var.clamp(min=0))
    out = torch.zeros(var.shape + (degree + 1, degree + 1), dtype=var.dtype, device=var.device)
    for n in range(degree + 1):
        for j in range(n // 2 + 1):
            m = n - 2 * j
            const = math.sqrt(math.factorial(n) * math.factorial(m)) / (
                math.factorial(j) * math.factorial(m) * 2 ** j)
            out[..., n, m] = const * s ** m * (var - 1) ** j
    return out


class HermitePolynomial(HermiteSeries):
    """φ(x) = Σ_k c_k h_k(x), a finite series of normalized Hermite polynomials h_k = He_k/√k!;
    kernel exact at every variance (module doc). E.g. ``HermitePolynomial([0, 1])`` is the
    identity and ``HermitePolynomial([0, 0, 1])`` is (x² - 1)/√2.
    """

    name = "HermitePolynomial"

    def __init__(self, coefficients: Sequence[float]):
        c = [float(t) for t in coefficients]
        if not c or not all(math.isfinite(t) for t in c):
            raise ValueError(f"HermitePolynomial: coefficients must be a non-empty sequence of "
                             f"finite numbers, got {coefficients!r}")
        self.hermite_coefficients = tuple(c)

    @property
    def _derivative(self) -> Tuple[float, ...]:
        c = self.hermite_coefficients
        return tuple(math.sqrt(k) * c[k] for k in range(1, len(c))) or (0.0,)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(self.hermite_coefficients, dtype=x.dtype, device=x.device)
        return hermite_functions(x, len(c)) @ c

    def coefficients(self, var):
        out = []
        for c in (self.hermite_coefficients, self._derivative):
            ct = torch.tensor(c, dtype=var.dtype, device=var.device)
            out.append(torch.einsum("n,...nm->...m", ct, rescale_matrix(len(c) - 1, var)))
        return out[0], out[1]

    def __repr__(self):
        return f"{type(self).__name__}({list(self.hermite_coefficients)})"
