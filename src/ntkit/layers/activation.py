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

from typing import Optional, Tuple

import torch
from torch import nn

from .finite import ElementwiseModule
from .base import Layer
from .state import KernelState


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

    def apply(self, state: KernelState) -> KernelState:
        if not self.homogeneous:
            state = state.unnormalized(repr(self))
        v1, v2 = state.broadcast_vars()
        need_dot = state.ntk is not None
        nngp, dot, dist = self.pair_moments(state.cov, v1, v2, state.dist, need_dot)
        var1 = self.var_moment(state.var1)
        var2 = var1 if state.same_inputs else self.var_moment(state.var2)
        ntk = state.ntk.mul_(dot) if need_dot else None
        if state.dist is not None and dist is None:
            w1, w2 = state.replace(var1=var1, var2=var2).broadcast_vars()
            dist = (w1 + w2 - 2 * nngp).clamp_(min=0)
        return state.replace(cov=nngp, var1=var1, var2=var2, ntk=ntk, dist=dist)

    def build(self, in_shape, generator) -> nn.Module:
        return ElementwiseModule(self.fn, repr(self))
