"""Dropout: ``Dropout(p, mode="train"|"test")`` with torch's p (the probability of dropping a
unit; neural-tangents' ``stax.Dropout(rate)`` keeps with probability ``rate``: p = 1 - rate).

Finite layer: z' = m ⊙ z / (1 - p), m_i ~ Bernoulli(1 - p) drawn afresh at every forward
pass (torch's ``nn.Dropout`` in training mode); in mode "test" the identity.

Kernel map (neural-tangents ``stax.Dropout``): mode "test" is the identity. In mode "train"
two different inputs see independent masks, E[m m'] / (1 - p)² = 1, so their covariance is
unchanged; a unit with itself (same input, same position) has E[m²] / (1 - p)² = 1 / (1 - p):

    Σ'[x, p; x', p'] = Σ[x, p; x', p'] · (1 / (1 - p) if x = x' and p = p' else 1)
    Θ' likewise;  v' = v / (1 - p).

Where this kernel exists, and where not:
* "same input" is known to ntkit only for an input with itself: the diagonal of
  ``kernel(x)`` (x2=None). ``kernel(x1, x2)`` treats every pair as two different inputs, even
  if x2 holds the same images (neural-tangents compares the arrays instead).
* fully-connected networks with ReLU-family activations recompute nearly equal pairs on a
  precise pairwise path that cannot tell an input with itself from a near duplicate: there
  mode "train" raises NotImplementedError (use mode "test", or a smooth activation).
* after Dropout(train) the outputs are no longer Gaussian: an activation right after it is not
  exact (neural-tangents marks the kernel non-Gaussian).
* as in neural-tangents, it cannot act on the raw inputs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .base import Layer
from .state import KernelState

_MODES = ("train", "test")


def _same_unit_mask(state: KernelState, factor: float) -> Optional[torch.Tensor]:
    """1 + (factor - 1)·[same input and same position], broadcastable to ``cov``; None where
    no entry is a unit with itself."""
    cov = state.cov
    self_rows = state.self_pair_rows()
    if self_rows is not None:  # pixel pairs of a tile: the rows of inputs with themselves
        shape = (-1,) + (1,) * (cov.dim() - 1)
        ind = self_rows.to(cov.dtype).reshape(shape)
        if state.spatial == "full":
            h, w = cov.shape[-2:]
            ind = ind * torch.eye(h * w, dtype=cov.dtype, device=cov.device).reshape(h, w, h, w)
        return ind.mul(factor - 1.0).add_(1.0)
    if not state.same_inputs:
        return None
    spatial_eye = None
    if state.spatial == "full":
        h, w = cov.shape[-2:]
        spatial_eye = torch.eye(h * w, dtype=cov.dtype, device=cov.device).reshape(h, w, h, w)
    if state.layout == "paired":
        ind = spatial_eye if spatial_eye is not None else torch.ones((), dtype=cov.dtype,
                                                                     device=cov.device)
    else:
        n = cov.shape[0]
        ind = torch.eye(n, dtype=cov.dtype, device=cov.device)
        extra = cov.dim() - 2
        ind = ind.reshape(n, n, *([1] * extra))
        if spatial_eye is not None:
            ind = ind * spatial_eye
    return ind.mul(factor - 1.0).add_(1.0)


class Dropout(Layer):
    """``Dropout(p, mode="train")``: see the module doc for the kernel map and its limits."""

    def __init__(self, p: float = 0.5, mode: str = "train"):
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p (the drop probability) must be in [0, 1), got {p!r}")
        if mode not in _MODES:
            raise ValueError(f"Dropout: mode must be 'train' or 'test', got {mode!r}")
        self.p = p
        self.mode = mode

    def apply(self, state: KernelState) -> KernelState:
        if self.mode == "test" or self.p == 0.0:
            return state
        same = state.same_inputs
        if state.layout == "paired" and not same and state.dist is not None:
            raise NotImplementedError(
                "Dropout(mode='train') in a fully-connected network with ReLU-family activations: "
                "the precise path for nearly equal inputs cannot tell an input with itself from a "
                "near duplicate; use mode='test' or a smooth activation")
        factor = 1.0 / (1.0 - self.p)
        mask = _same_unit_mask(state, factor)
        cov, ntk = state.cov, state.ntk
        if mask is not None:
            cov = cov.mul_(mask)
            ntk = None if ntk is None else ntk.mul_(mask)
        var1 = None if state.var1 is None else state.var1.mul_(factor)
        var2 = var1 if same else (None if state.var2 is None else state.var2.mul_(factor))
        dist = None if same else state.dist
        return state.replace(cov=cov, ntk=ntk, var1=var1, var2=var2, dist=dist)

    def build(self, in_shape, generator) -> nn.Module:
        return nn.Dropout(self.p) if self.mode == "train" else nn.Identity()
