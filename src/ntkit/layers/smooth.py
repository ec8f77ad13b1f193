"""Smooth activations with closed-form kernels: Erf, GELU, Sin, Identity.

Notation: (u, v) ~ N(0, [[v1, c], [c, v2]]).
"""
from __future__ import annotations

import math

import torch

from .activation import Activation
from .hyper import check_finite


class Identity(Activation):
    """φ(x) = x: Σ' = Σ, Σ̇ = 1."""

    name = "Identity"
    homogeneous = True

    def fn(self, x):
        return x

    def var_moment(self, var):
        return var

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        return cov, (torch.ones_like(cov) if need_dot else None), dist

    def __repr__(self):
        return "Identity()"


class Erf(Activation):
    """φ(x) = a·erf(b·x) + c (neural-tangents' ``Erf(a, b, c)``); Williams (1997):

        E[φ(u)φ(v)]   = a² (2/π) asin(2b²c / sqrt((1 + 2b²v1)(1 + 2b²v2))) + c²
        E[φ'(u)φ'(v)] = a² b² (4/π) / sqrt((1 + 2b²v1)(1 + 2b²v2) - 4b⁴c²)
    """

    name = "Erf"

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = (check_finite(t, f"{self.name}: {n}")
                                  for t, n in ((a, "a"), (b, "b"), (c, "c")))

    def fn(self, x):
        return self.a * torch.erf(self.b * x) + self.c

    def var_moment(self, var):
        s = 2 * self.b ** 2 * var
        return self.a ** 2 * (2 / math.pi) * torch.asin(s / (1 + s)) + self.c ** 2

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        b2 = self.b ** 2
        prod = (1 + 2 * b2 * v1) * (1 + 2 * b2 * v2)
        cc = cov * (2 * b2)
        nngp = torch.asin((cc * torch.rsqrt(prod)).clamp_(-1.0, 1.0)) * (self.a ** 2 * 2 / math.pi)
        if self.c:
            nngp.add_(self.c ** 2)
        dot = None
        if need_dot:
            dot = torch.rsqrt((prod - cc * cc).clamp_(min=torch.finfo(cov.dtype).tiny))
            dot.mul_(self.a ** 2 * b2 * 4 / math.pi)
        return nngp, dot, None


class GELU(Activation):
    """φ(x) = x Φ(x) (exact GELU, torch's ``nn.GELU()``); closed form of Tsuchida, Pearce,
    van der Heide, Roosta & Gallagher (2021), "Avoiding kernel fixed points: computing with ELU
    and GELU infinite networks", as used by neural-tangents' ``Gelu``. With
    δ² = (1+v1)(1+v2) - c², α = atan2(c, δ):

        E[φ(u)φ(v)]   = c/4 + [ (c² + v1 v2 δ²) / ((1+v1)(1+v2) δ) + c α ] / (2π)
        E[φ'(u)φ'(v)] = 1/4 + α/(2π) + c/(2π δ) [ 1/δ² + (1 - v1 v2)/((1+v1)(1+v2)) + 1 ]
    """

    name = "GELU"

    def fn(self, x):
        return torch.nn.functional.gelu(x)

    def var_moment(self, var):
        root = torch.sqrt(1 + 2 * var)
        out = var / ((var + 1) * root) + torch.atan2(var, root) / 2
        return var * (out / math.pi + 0.25)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        p1 = (1 + v1) * (1 + v2)
        prod = v1 * v2
        delta2 = (p1 - cov * cov).clamp_(min=torch.finfo(cov.dtype).tiny)
        delta = torch.sqrt(delta2)
        alpha = torch.atan2(cov, delta)
        nngp = (cov * cov + prod * delta2) / (p1 * delta) + cov * alpha
        nngp = nngp / (2 * math.pi) + 0.25 * cov
        dot = None
        if need_dot:
            first = (1 / delta2 + (1 - prod) / p1 + 1) * cov / delta / (2 * math.pi)
            dot = first + 0.25 + alpha / (2 * math.pi)
        return nngp, dot, None

    def __repr__(self):
        return "GELU()"


class Sin(Activation):
    """φ(x) = a·sin(b·x + c) (neural-tangents' ``Sin(a, b, c)``). With s = v1 + v2 and c_uv the
    covariance,

        E[φ(u)φ(v)]   = a² e^(-b²s/2) [sinh(b² c_uv) + sin²(c) e^(-b² c_uv)]
        E[φ'(u)φ'(v)] = a²b² e^(-b²s/2) [cosh(b² c_uv) - sin²(c) e^(-b² c_uv)]
        E[φ(u)²]      = a²/2 [-expm1(-2b²v) + 2 sin²(c) e^(-2b²v)]

    (= a²/2 [e^(-b²(s - 2c_uv)/2) ∓ cos(2c) e^(-b²(s + 2c_uv)/2)], written without the
    cancellation that form suffers at small variances: relative accuracy at every scale).
    """

    name = "Sin"

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        self.a, self.b, self.c = (check_finite(t, f"{self.name}: {n}")
                                  for t, n in ((a, "a"), (b, "b"), (c, "c")))

    def fn(self, x):
        return self.a * torch.sin(self.b * x + self.c)

    def var_moment(self, var):
        b2, sc2 = self.b ** 2, math.sin(self.c) ** 2
        out = torch.expm1(-2 * b2 * var).neg_()
        if sc2:
            out.add_(torch.exp(-2 * b2 * var) * (2 * sc2))
        return out.mul_(self.a ** 2 / 2)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        b2, sc2 = self.b ** 2, math.sin(self.c) ** 2
        damp = torch.exp(-b2 / 2 * (v1 + v2))
        x = cov * b2
        nngp = torch.sinh(x)
        tail = torch.exp(-x).mul_(sc2) if sc2 else None
        if tail is not None:
            nngp.add_(tail)
        nngp.mul_(damp).mul_(self.a ** 2)
        dot = None
        if need_dot:
            dot = torch.cosh(x)
            if tail is not None:
                dot.sub_(tail)
            dot.mul_(damp).mul_(self.a ** 2 * b2)
        return nngp, dot, None
