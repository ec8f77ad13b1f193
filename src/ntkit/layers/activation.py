"""The shared machinery of elementwise activations.

An activation φ maps the Gaussian law of pre-activations (u, v) ~ N(0, [[v1, c], [c, v2]]) to

    Σ'  = E[φ(u) φ(v)]                  (the NNGP of the post-activations)
    Σ̇   = E[φ'(u) φ'(v)]                (multiplies the NTK: Θ' = Θ · Σ̇)
    v'  = E[φ(u)^2]                      (per-input variances)

(Jacot et al. 2018; Lee et al. 2018; Arora et al. 2019). Every activation implements only
``pair_moments`` and ``var_moment``; this base class applies them to any kernel layout (dense,
paired, convolutional), so the fully-connected and convolutional paths share the same maps.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .finite import ElementwiseModule
from .base import Layer
from ..engine.scale import log2_floor, mantissa_bits
from .state import KernelState


def small_variance_log2(dtype: torch.dtype) -> float:
    """Below a true pre-activation variance of 2**this, non-homogeneous activations use their
    small-variance map (``Activation.small_variance_map``): the dtype's smallest normal number
    times 2**mantissa (2**-969 in float64, 2**-102 in float32), where true values would start to
    lose digits to subnormals and the map is linear to far below rounding."""
    return log2_floor(dtype) + mantissa_bits(dtype)


def pin_self_covariances_(state: KernelState) -> None:
    """In place: the entries of ``state.cov`` that pair an input with itself set to its variance
    (dense states of inputs against themselves, flat or same-position). The pair map computes
    them at correlation exactly 1, but in the chaotic phase (χ₁ = W² E[φ'(u)²] > 1, Poole et
    al. 2016) correlation 1 is an unstable fixed point of the correlation map: a rounding error
    there grows like χ₁^L and, left alone, drifts the diagonal away from the variances within
    ~100 layers (Erf, W_std = 3)."""
    if state.layout != "dense" or not state.same_inputs or state.spatial not in ("none", "diag"):
        return
    diag = torch.diagonal(state.cov, 0, 0, 1)  # (n,) or (H, W, n)
    var = state.var1 if state.spatial == "none" else state.var1.permute(1, 2, 0)
    diag.copy_(var)


def check_no_underflow(before: KernelState, after: KernelState, who: str) -> None:
    """OverflowError when a map computed in true units left positive variances below the dtype's
    normal range (a variance that falls like q² per layer, e.g. φ = x² without a bias, leaps
    past the small-variance regime in one step): 0 or a subnormal would be silently wrong."""
    tiny = torch.finfo(after.var1.dtype).tiny
    for v0, v in ((before.var1, after.var1), (before.var2, after.var2)):
        if v.numel() and bool(((v < tiny) & (v0 > 0)).any()):
            k = before.true_variance_log2()
            raise OverflowError(
                f"{who}: maps a pre-activation variance of 2^{k:.1f} to below the smallest "
                f"normal {str(v.dtype).replace('torch.', '')} number; its map is not homogeneous "
                f"and shrinks faster than linearly there (φ'(0) = 0?), which no power-of-two "
                f"scale of the state carries; use a bias (b_std > 0), a larger W_std, or fewer "
                f"layers")


class Activation(Layer):
    """Base class: subclasses define ``fn`` (the finite function), ``pair_moments`` and
    ``var_moment``."""

    name = "Activation"
    #: True when φ is positively homogeneous of degree 1 (φ(λx) = λφ(x), λ > 0: the ReLU
    #: family, Identity): its maps then commute with the state's scale (``state.log2_scale``)
    #: and apply to the stored values as they are; other activations need true values.
    homogeneous: bool = False

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def pair_moments(self, cov: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor,
                     dist: Optional[torch.Tensor], need_dot: bool
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Return (E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None, E[(φ(u)-φ(v))^2] or None).

        ``cov`` may be consumed (overwritten). v1, v2 broadcast against cov. ``dist`` is
        E[(u - v)^2] when the caller carries it (precise pairwise layout), else None.
        The third output may be None: the caller then derives it as v1' + v2' - 2 Σ'.
        """
        raise NotImplementedError  # pragma: no cover

    def var_moment(self, var: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """E[φ(u)^2] for u ~ N(0, var), elementwise."""
        raise NotImplementedError

    def origin_values(self) -> Tuple[float, float]:
        """(φ(0), φ'(0)) in float64 (φ' by autograd through ``fn``), for the small-variance
        map (``small_variance_map``)."""
        x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            y = self.fn(x)
            (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        return float(y.detach()[0]), 0.0 if g is None else float(g[0])

    def small_variance_map(self, state: KernelState) -> KernelState:
        """The activation's map for pre-activation variances q below ``small_variance_log2``,
        applied to the stored (scaled) values. With f₀ = φ(0), f₁ = φ'(0) and Taylor's
        theorem, for (u, v) ~ N(0, [[q₁, c], [c, q₂]]):

            E[φ(u)φ(v)]   = f₀² + f₁² c + f₀ φ''(0) (q₁ + q₂)/2 + O(q²)
            E[φ'(u)φ'(v)] = f₁² + O(q)

        The third term is below f₀²·q (and below f₁²·√q·c when f₀² < f₁² q), so at q < 2**-102
        (float32) or 2**-969 (float64) these are Σ' = f₀² + f₁² Σ, Σ̇ = f₁², D' = f₁² D to
        rounding, for any φ whose Taylor coefficients at 0 are below ~2**40 relative to f₁ (the
        O(q) terms are then < 2**-60 relative): an affine map with a constant, which commutes
        with the state's scale like a bias does. φ'(0) = 0 (e.g. φ = x²) is refused: Σ and Σ̇
        then fall like q² and q per layer, which no power-of-two scale of the state carries."""
        f0, f1 = self.origin_values()
        if f1 == 0.0 or not math.isfinite(f1) or not math.isfinite(f0):
            k = state.true_variance_log2()
            raise OverflowError(
                f"{self!r}: the pre-activation variance is 2^{k:.1f}, below the range where "
                f"true values can be used, and φ'(0) = {f1}: the small-variance expansion of "
                f"the kernel map starts at order q² (Σ and Σ̇ then shrink doubly exponentially "
                f"with depth), which ntkit does not represent; use a bias (b_std > 0), a larger "
                f"W_std, or fewer layers")
        a = f1 * f1
        state, c = state.scaled_constant(f0 * f0)
        cov = state.cov.mul_(a)
        var1 = state.var1.mul_(a)
        var2 = var1 if state.var2 is state.var1 else state.var2.mul_(a)
        if c:
            cov.add_(c)
            var1.add_(c)
            if var2 is not var1:
                var2.add_(c)
        ntk = None if state.ntk is None else state.ntk.mul_(a)
        dist = None if state.dist is None else state.dist.mul_(a)
        return state.replace(cov=cov, var1=var1, var2=var2, ntk=ntk, dist=dist)

    def apply(self, state: KernelState) -> KernelState:
        if not self.homogeneous:
            k = state.true_variance_log2()
            if k is not None and k < small_variance_log2(state.var1.dtype):
                return self.small_variance_map(state)
            state = state.unnormalized(repr(self))
        out = self._map(state)
        if not self.homogeneous:
            check_no_underflow(state, out, repr(self))
        return out

    def _map(self, state: KernelState) -> KernelState:
        v1, v2 = state.broadcast_vars()
        need_dot = state.ntk is not None
        nngp, dot, dist = self.pair_moments(state.cov, v1, v2, state.dist, need_dot)
        return self._assemble(state, nngp, dot, dist)

    def _assemble(self, state: KernelState, nngp: torch.Tensor, dot: Optional[torch.Tensor],
                  dist: Optional[torch.Tensor]) -> KernelState:
        """The state after the layer from its pair moments (``pair_moments``' outputs): the
        variances mapped, Θ' = Θ·Σ̇, self-covariances pinned, the distance derived if the
        map gave none."""
        var1 = self.var_moment(state.var1)
        var2 = var1 if state.same_inputs else self.var_moment(state.var2)
        ntk = state.ntk.mul_(dot) if state.ntk is not None else None
        pin_self_covariances_(state.replace(cov=nngp, var1=var1, var2=var2))
        if state.dist is not None and dist is None:
            w1, w2 = state.replace(var1=var1, var2=var2).broadcast_vars()
            dist = (w1 + w2 - 2 * nngp).clamp_(min=0)
        return state.replace(cov=nngp, var1=var1, var2=var2, ntk=ntk, dist=dist)

    def build(self, in_shape, generator) -> nn.Module:
        return ElementwiseModule(self.fn, repr(self))
