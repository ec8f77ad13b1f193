"""The ReLU family: ReLU, LeakyReLU, ABReLU, in closed form (the arc-cosine kernel).

For φ(x) = a·min(x, 0) + b·max(x, 0) and (u, v) ~ N(0, [[v1, c], [c, v2]]) with angle θ,
cos θ = c / sqrt(v1 v2), the arc-cosine kernel of Cho & Saul (2009) gives

    E[φ(u)φ(v)]   = (a²+b²)/2 · c + (a-b)²/(2π) · sqrt(v1 v2) · S(θ),  S(θ) = sin θ - θ cos θ
    E[φ'(u)φ'(v)] = (a²+b²)/2 - (a-b)²/(2π) · θ
    E[φ(u)²]      = (a²+b²)/2 · v
    E[(φ(u)-φ(v))²] = (a²+b²)/2 · E[(u-v)²] - (a-b)²/π · sqrt(v1 v2) · S(θ)

(ReLU: a=0, b=1 gives the familiar (sin θ + (π-θ) cos θ)/(2π) and (π-θ)/(2π).)

The maps, their edge conventions (zero variance: θ = π/2; |ρ| clamped and snapped to ±1
within 4 ulps; the precise path from the squared distance for nearly equal inputs) and the
drop-ins (torch fast path, native C++ block) are written once in ``ntkit.layers.relu_map``.

Deep chains (at least ``chord.DEEP_CHAIN`` ReLU-family layers, decided from the architecture)
take θ from the chord 2√(v1 v2)(1 - ρ) that their dense flat states carry (``ntkit.layers
.chord``; ``relu_map.chord_map``): correlations tend to 1 with depth, where the covariance
no longer holds 1 - ρ (float32, depth 1,000: the off-diagonal NTK was 7% off).
"""
from __future__ import annotations

from typing import Tuple

import torch

from . import chord, relu_map
from .activation import Activation
from .hyper import check_finite
from .state import KernelState


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
    homogeneous = True
    maps_chord = True
    name = "ABReLU"

    def __init__(self, a: float = 0.0, b: float = 1.0):
        self.a = check_finite(a, f"{type(self).__name__}: slope a")
        self.b = check_finite(b, f"{type(self).__name__}: slope b")

    @property
    def _coefs(self) -> Tuple[float, float]:
        return relu_map.coefs(self.a, self.b)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def var_moment(self, var: torch.Tensor) -> torch.Tensor:
        return var * self._coefs[0]

    def _map(self, state: KernelState) -> KernelState:
        state = chord.start(state)
        if state.chord is None:
            return super()._map(state)
        v1, v2 = state.broadcast_vars()
        nngp, dot, e = relu_map.chord_map(state.cov, v1, v2, *self._coefs, state.chord,
                                          state.ntk is not None)
        return self._assemble(state, nngp, dot, None).replace(chord=e)

    def pair_moments(self, cov, v1, v2, dist, need_dot):
        half_sum, diff2 = self._coefs
        if dist is not None:  # nearly equal inputs: the reference map, θ from the distance
            return relu_map.exact_map(cov, v1, v2, half_sum, diff2, dist, need_dot)
        if diff2 == 0.0:  # linear activation (a == b)
            dot = torch.full_like(cov, half_sum) if need_dot else None
            return cov.mul_(half_sum), dot, None
        r1, g1 = relu_map.rank_one_factors(v1)
        r2, g2 = relu_map.rank_one_factors(v2)
        if _native_dense(cov, v1, v2):  # the same map in one C++ pass (conv_native)
            from . import conv_native
            dot = conv_native.arccos_dense(cov, *(t.reshape(-1).contiguous()
                                                  for t in (r1, r2, g1, g2)),
                                           half_sum, diff2, need_dot)
            return cov, dot, None
        nngp, dot = relu_map.fast_map(cov, r1, r2, g1, g2, half_sum, diff2, need_dot,
                                      inplace=True)
        return nngp, dot, None


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
        self.negative_slope = check_finite(negative_slope, "LeakyReLU: negative_slope")
        super().__init__(self.negative_slope, 1.0)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"
