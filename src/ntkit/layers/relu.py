"""The ReLU family: ReLU, LeakyReLU, ABReLU, in closed form (the arc-cosine kernel).

For φ(x) = a·min(x, 0) + b·max(x, 0) and (u, v) ~ N(0, [[v1, c], [c, v2]]) with angle θ,
cos θ = c / sqrt(v1 v2), the arc-cosine kernel of Cho & Saul (2009) gives

    E[φ(u)φ(v)]   = (a²+b²)/2 · c + (a-b)²/(2π) · sqrt(v1 v2) · S(θ),  S(θ) = sin θ - θ cos θ
    E[φ'(u)φ'(v)] = (a²+b²)/2 - (a-b)²/(2π) · θ
    E[φ(u)²]      = (a²+b²)/2 · v
    E[(φ(u)-φ(v))²] = (a²+b²)/2 · E[(u-v)²] - (a-b)²/π · sqrt(v1 v2) · S(θ)

(ReLU: a=0, b=1 gives the familiar (sin θ + (π-θ) cos θ)/(2π) and (π-θ)/(2π).)

Numerics. With nearly equal inputs the correlation is 1 - O(ε) and arccos loses half the
digits; the precise path therefore takes θ from the squared distance d = E[(u-v)²]:
sin²(θ/2) = (d - (√v1 - √v2)²) / (4 √(v1 v2)), θ = 2 asin(√·), and S(θ) by its Taylor series
for small θ (S = θ³/3 - θ⁵/30 + θ⁷/840 - ...). A zero-variance input (a zero input row without
bias) is treated as orthogonal to everything (θ = π/2), i.e. the convention φ'(0) = (a+b)/2.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .activation import Activation

_SERIES_MAX_THETA = 0.3


def _sin_minus_theta_cos(theta: torch.Tensor) -> torch.Tensor:
    """S(θ) = sin θ - θ cos θ, accurate to a few ulps for every θ in [0, π]."""
    direct = torch.sin(theta) - theta * torch.cos(theta)
    small = theta < _SERIES_MAX_THETA
    if not bool(small.any()):
        return direct
    t = torch.where(small, theta, torch.zeros_like(theta))
    t2 = t * t
    # sum_{k>=1} (-1)^(k+1) 2k θ^(2k+1) / (2k+1)!, Horner in θ², up to θ^17
    series = torch.zeros_like(t)
    for k in range(8, 0, -1):
        coef = (-1) ** (k + 1) * 2 * k / math.factorial(2 * k + 1)
        series = series * t2 + coef
    series = series * t2 * t
    return torch.where(small, series, direct)


def _native_dense(cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor) -> bool:
    """A dense CPU block (n1, n2) with row variances (n1, 1) and column variances (1, n2), and
    the native kernel available: the fast path runs in C++."""
    if (cov.device.type != "cpu" or cov.dtype not in (torch.float32, torch.float64)
            or cov.dim() != 2 or not cov.is_contiguous() or cov.numel() < 4096):
        return False
    n1, n2 = cov.shape
    if tuple(v1.shape) != (n1, 1) or tuple(v2.shape) != (1, n2):
        return False
    from . import conv_native
    return conv_native.available()


class ABReLU(Activation):
    """φ(x) = a·min(x, 0) + b·max(x, 0) (neural-tangents' ``ABRelu(a, b)``); kernel in module doc."""

    nonsmooth = True
    name = "ABReLU"

    def __init__(self, a: float = 0.0, b: float = 1.0):
        self.a, self.b = float(a), float(b)

    @property
    def _coefs(self) -> Tuple[float, float]:
        return (self.a ** 2 + self.b ** 2) / 2, (self.a - self.b) ** 2

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def var_moment(self, var: torch.Tensor) -> torch.Tensor:
        return var * self._coefs[0]

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        half_sum, diff2 = self._coefs
        if dist is not None:
            return self._precise(cov, v1, v2, dist, need_dot)
        # fast path: θ = arccos(c / sqrt(v1 v2)); r = 1/sqrt(v) with r = 0 for zero variance.
        # Written to make few passes over the (n1, n2) block and few temporaries.
        r1 = torch.where(v1 > 0, torch.rsqrt(v1), torch.zeros_like(v1))
        r2 = torch.where(v2 > 0, torch.rsqrt(v2), torch.zeros_like(v2))
        if diff2 == 0.0:  # linear activation (a == b)
            dot = torch.full_like(cov, half_sum) if need_dot else None
            return cov.mul_(half_sum), dot, None
        if _native_dense(cov, v1, v2):  # the same maps in one C++ pass (conv_native)
            from . import conv_native
            a1, a2 = v1.reshape(-1), v2.reshape(-1)
            dot = conv_native.arccos_dense(cov, r1.reshape(-1).contiguous(),
                                           r2.reshape(-1).contiguous(), torch.sqrt(a1),
                                           torch.sqrt(a2), half_sum, diff2, need_dot)
            return cov, dot, None
        rho = torch.mul(cov, r1).mul_(r2).clamp_(-1.0, 1.0)
        # within 4 ulps of ±1 is ±1: rounding alone puts an input against itself that far
        # (as in the fused paths, conv_fused)
        eps4 = 4.0 * torch.finfo(rho.dtype).eps
        rho = torch.where(rho.abs() > 1.0 - eps4, torch.sign(rho), rho)
        theta = torch.acos(rho)
        # S(θ) = sin θ - θ cos θ, scaled by sqrt(v1 v2) (a rank-one factor) and (a-b)²/2π
        s = torch.sin(theta).addcmul_(theta, rho, value=-1.0)
        s.mul_(torch.sqrt(v1) * (diff2 / (2 * math.pi))).mul_(torch.sqrt(v2))
        nngp = cov.mul_(half_sum).add_(s)
        dot = theta.mul_(-diff2 / (2 * math.pi)).add_(half_sum) if need_dot else None
        return nngp, dot, None

    def _precise(self, cov, v1, v2, dist, need_dot):
        half_sum, diff2 = self._coefs
        sv = torch.sqrt(v1 * v2)
        zero = sv == 0
        safe = torch.where(zero, torch.ones_like(sv), sv)
        gap = torch.sqrt(v1) - torch.sqrt(v2)
        h = ((dist - gap * gap) / (4 * safe)).clamp(0.0, 1.0)  # sin²(θ/2)
        theta = 2 * torch.asin(torch.sqrt(h))
        theta = torch.where(zero, torch.full_like(theta, math.pi / 2), theta)
        s = _sin_minus_theta_cos(theta) * sv
        nngp = half_sum * cov + diff2 / (2 * math.pi) * s
        new_dist = (half_sum * dist - diff2 / math.pi * s).clamp(min=0.0)
        dot = half_sum - diff2 / (2 * math.pi) * theta if need_dot else None
        return nngp, dot, new_dist


class ReLU(ABReLU):
    """φ(x) = max(x, 0): the arc-cosine kernel of degree 1 (Cho & Saul 2009).

    Σ' = sqrt(v1 v2) (sin θ + (π - θ) cos θ) / (2π),  Σ̇ = (π - θ) / (2π).
    """

    name = "ReLU"

    def __init__(self):
        super().__init__(0.0, 1.0)

    def fn(self, x):
        return torch.relu(x)

    def __repr__(self):
        return "ReLU()"


class LeakyReLU(ABReLU):
    """φ(x) = max(x, 0) + negative_slope·min(x, 0), i.e. ABReLU(negative_slope, 1)."""

    name = "LeakyReLU"

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)
        super().__init__(self.negative_slope, 1.0)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"
