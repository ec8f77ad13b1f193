"""Fully-connected layer."""
from __future__ import annotations

import math

from typing import Optional, Tuple

import torch
from torch import nn

from . import chord as chord_
from .finite import NTKLinear
from .base import Layer, check_parameterization
from .hyper import check_optional_scale, check_scale, check_width
from .state import KernelState


def bias_constants(state: KernelState, b_std: Optional[float], standard_ntk: bool
                   ) -> Tuple[KernelState, float, float]:
    """(state, b_std², 1) in the state's stored units (``KernelState.scaled_constant``): the
    constants an affine layer adds to the NNGP (b_std²) and, in the standard parameterization,
    to the NTK (1 for the bias gradient; returned as 0 where it is not added). The state is rescaled first if they dominate it."""
    b2 = 0.0 if b_std is None else float(b_std) ** 2
    if state.log2_scale == 0 and b2 <= 1.0:
        return state, b2, 1.0
    one = 1.0 if standard_ntk and b_std is not None else 0.0
    state, _ = state.scaled_constant(max(b2, one))
    return state, math.ldexp(b2, -state.log2_scale), math.ldexp(one, -state.log2_scale)


def _affine_(t: torch.Tensor, w2: float, b2: float) -> torch.Tensor:
    """In place: t <- w2 * t + b2 (layers consume the state they are given)."""
    t.mul_(w2)
    return t.add_(b2) if b2 else t


class Linear(Layer):
    """Fully-connected layer ``Linear(out_features, W_std, b_std, parameterization, trainable)``.

    Kernel map (Jacot et al. 2018, Lee et al. 2019; the same as neural-tangents' ``stax.Dense``):

        NNGP:  Σ' = W_std^2 Σ + b_std^2                       (b_std=None counts as 0)
        NTK, "ntk" parameterization:       Θ' = W_std^2 Θ + Σ'
        NTK, "standard" parameterization:  Θ' = n_in Σ + W_std^2 Θ + [1 if a bias exists]
        trainable=False:                   Θ' = W_std^2 Θ  (frozen weights add no gradient)

    where n_in is the finite width of the layer's input: in the standard parameterization the
    NTK depends on widths, as in neural-tangents. ``out_features`` matters only to ``init``
    (and to the next layer's n_in in the standard parameterization).
    The squared distance E[(z - z')^2] maps as W_std^2 d (the bias cancels); the chord of deep
    ReLU-family chains by ``chord.affine_``.
    """

    has_params = True
    maps_chord = True

    def __init__(self, out_features: int, W_std: float = 1.0, b_std: Optional[float] = 0.0,
                 parameterization: str = "ntk", trainable: bool = True):
        self.out_features = check_width(out_features, "Linear: out_features")
        self.W_std = check_scale(W_std, "Linear: W_std")
        self.b_std = check_optional_scale(b_std, "Linear: b_std")
        self.parameterization = check_parameterization(parameterization)
        self.trainable = bool(trainable)

    def apply(self, state: KernelState) -> KernelState:
        if state.spatial != "none":
            raise ValueError("Linear after an image-shaped (N, C, H, W) layer: add Flatten() (or "
                             "GlobalAvgPool2d()) before the Linear layer")
        w2 = self.W_std ** 2
        trains = self.trainable and state.track_ntk
        state, b2, one = bias_constants(state, self.b_std, trains and
                                        self.parameterization == "standard")
        ntk, offset = state.ntk, state.ntk_log2_offset
        if trains and self.parameterization == "standard":
            # gradient w.r.t. W gives n_in Σ, w.r.t. b gives 1; backprop through W gives W_std² Θ
            own = state.cov * float(state.width)
            if self.b_std is not None:
                own.add_(one)
            ntk, offset = (own, 0) if ntk is None else state.ntk_add_(ntk, own, alpha=w2)
        chord = state.chord
        if chord is not None:  # before the variances change (in place)
            chord = chord_.affine_(chord, *state.broadcast_vars(), w2, b2)
        cov = _affine_(state.cov, w2, b2)
        var1 = _affine_(state.var1, w2, b2)
        var2 = var1 if state.same_inputs else _affine_(state.var2, w2, b2)
        if trains and self.parameterization == "ntk":
            # Θ' = W_std² Θ + Σ' (Σ' brought to the NTK's scale)
            ntk, offset = (cov.clone(), 0) if ntk is None else state.ntk_add_(ntk, cov, alpha=w2)
        elif not trains and ntk is not None:
            ntk.mul_(w2)
        dist = None if state.dist is None else state.dist.mul_(w2)
        return state.replace(cov=cov, var1=var1, var2=var2, ntk=ntk, dist=dist, chord=chord,
                             width=self.out_features, ntk_log2_offset=offset)

    def out_shape(self, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(in_shape) != 1:
            raise ValueError(f"Linear expects flat inputs (features,), got per-example shape "
                             f"{tuple(in_shape)}: add Flatten() before it")
        return (self.out_features,)

    def build(self, in_shape: Tuple[int, ...], generator: torch.Generator) -> nn.Module:
        self.out_shape(in_shape)  # validates that the input is flat
        fan_in = int(in_shape[0])
        return NTKLinear(fan_in, self.out_features, self.W_std, self.b_std, self.parameterization,
                         self.trainable, generator)
