"""Layer normalization: ``LayerNorm(axis="channels", eps=1e-12)``, neural-tangents'
``stax.LayerNorm`` (no learned scale or shift).

Finite layer (Ba et al. 2016): z' = (z - mean(z)) / sqrt(eps + var(z)), mean and (biased)
variance over the features of a flat input, or for images (NCHW) over the channels at each
position (``axis="channels"``, neural-tangents' ``LayerNorm(axis=channel)``) or over channels
and positions together (``axis="all"``, neural-tangents' ``LayerNorm(axis=(1, 2, 3))`` in
NHWC).

Kernel map (neural-tangents ``stax.LayerNorm``): over infinitely many channels of a zero-mean
Gaussian input the mean tends to 0 and the variance to its expectation v, so each entry is
divided by the square roots of the two members' variances:

    Σ'[p, p'] = Σ[p, p'] / sqrt((eps + v1[p]) (eps + v2[p']))      Θ' likewise
    v'[p]     = v[p] / (eps + v[p])                                 (= 1 when eps = 0)

with v[p] the per-position variance ("channels") or its mean over positions ("all"; flat
inputs have one position). The squared distance of the precise pairwise path maps exactly as
d' = (d - (a - b)² (1 + eps / (a b))) / (a b), a = sqrt(eps + v1), b = sqrt(eps + v2) (from
d' = v1' + v2' - 2Σ' and d = v1 + v2 - 2Σ), with (a - b) computed as (v1 - v2) / (a + b) so that
nearly equal inputs keep their digits.

Like neural-tangents (which raises on non-Gaussian inputs), the map assumes zero-mean
Gaussian inputs: put LayerNorm after a Linear/Conv2d (or pooling or a residual sum of those),
not after an activation, whose outputs have a nonzero mean over channels.
"""
from __future__ import annotations

import math

from typing import Tuple

import torch
from torch import nn

from .base import Layer
from .state import KernelState

_AXES = ("channels", "all")


class LayerNormModule(nn.Module):
    """(z - mean) / sqrt(eps + var) over dims ``dims`` (biased variance), no parameters."""

    def __init__(self, dims: Tuple[int, ...], eps: float):
        super().__init__()
        self.dims, self.eps = tuple(dims), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=self.dims, keepdim=True)
        var = (x - mean).square().mean(dim=self.dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, eps={self.eps}"


class LayerNorm(Layer):
    """``LayerNorm(axis="channels", eps=1e-12)``; see the module doc for the kernel map.

    ``axis`` only matters for images: "channels" normalizes each position over its channels,
    "all" over channels and positions together. Flat inputs are normalized over features.
    """

    def __init__(self, axis: str = "channels", eps: float = 1e-12):
        if axis not in _AXES:
            raise ValueError(f"LayerNorm: axis must be one of {_AXES}, got {axis!r}")
        eps = float(eps)
        if not eps >= 0.0:
            raise ValueError(f"LayerNorm: eps must be >= 0, got {eps!r}")
        self.axis = axis
        self.eps = eps

    def _scale_vars(self, v: torch.Tensor, spatial: str, eps: float) -> torch.Tensor:
        """eps + v per position, or its mean over positions (axis="all")."""
        if self.axis == "all" and spatial != "none":
            v = v.mean(dim=(-2, -1), keepdim=True).expand_as(v)
        return v + eps

    def apply(self, state: KernelState) -> KernelState:
        # homogeneous of degree 0 but for eps: map the stored values with eps in stored units
        # (clamped: an eps that dominates them by 2**64 already gives outputs of ~0); the
        # output is in true units (scale 0)
        eps = math.ldexp(self.eps, -max(state.log2_scale, -900)) if self.eps else 0.0
        eps = min(eps, 2.0 ** 100)
        s1 = self._scale_vars(state.var1, state.spatial, eps)
        same = state.same_inputs
        s2 = s1 if same else self._scale_vars(state.var2, state.spatial, eps)
        if bool((s1 <= 0).any()) or (not same and bool((s2 <= 0).any())):
            raise ValueError("LayerNorm with eps=0 of a unit with zero variance (e.g. a zero input "
                             "and no bias) is 0/0; use eps > 0")
        r1 = s1.sqrt()
        a1, a2 = state.replace(var1=r1, var2=r1 if same else s2.sqrt()).broadcast_vars()
        denom = a1 * a2
        cov = state.cov.div_(denom)
        ntk = None if state.ntk is None else state.ntk.div_(denom)
        dist = state.dist
        if dist is not None:
            b1, b2 = state.replace(var1=s1, var2=s2).broadcast_vars()
            gap = (b1 - b2) / (a1 + a2)
            dist = dist.sub_(gap * gap * (1.0 + eps / denom)).div_(denom).clamp_(min=0)
        var1 = state.var1.div_(s1)
        var2 = var1 if same else state.var2.div_(s2)
        return state.replace(cov=cov, ntk=ntk, dist=dist, var1=var1, var2=var2, log2_scale=0)

    def out_shape(self, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(in_shape) not in (1, 3):
            raise ValueError(f"LayerNorm expects flat (features,) or image (C, H, W) inputs, got "
                             f"per-example shape {tuple(in_shape)}")
        return tuple(in_shape)

    def build(self, in_shape, generator) -> nn.Module:
        self.out_shape(in_shape)
        if len(in_shape) == 1:
            dims: Tuple[int, ...] = (-1,)
        else:
            dims = (1,) if self.axis == "channels" else (1, 2, 3)
        return LayerNormModule(dims, self.eps)
