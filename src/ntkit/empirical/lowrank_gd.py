"""Exact full-batch gradient descent for wide MLPs, with weight updates kept in low-rank form.

For a dense layer z = s_w W h + s_b b, the gradient of a loss over N training inputs is
∂L/∂W = s_w Σ_i g_iᵀ h_i, of rank ≤ N, with g_i = ∂L/∂z_i. After t steps

    W_t = W_0 + A_t B_tᵀ,      A_t = [-η s_w G_1ᵀ, ..., -η s_w G_tᵀ]  (o × tN),  B_t = [H_1, ..., H_t]ᵀ,

so a step only reads W_0 (forward and backward) and never writes an (o × a) matrix: for the
width-10,000 networks of Jacot et al.'s figure with N = 8 inputs and 200 steps, that is about a
third of the memory traffic of a dense SGD step. When the rank would exceed min(o, a)/4 (where
the factors start to cost as much as W itself) the factors are folded into W_0 (W_0 ← W_0 + A Bᵀ,
rank reset to 0). The result is the same network as plain gradient descent, up to rounding.

``LowRankDeltaLinear`` is registered as linear-in-weight (the registry of structured
derivatives): ∂f/∂W does not depend on how W is stored, so the empirical NTK of the trained
network is computed without ever forming W_t.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from ..layers.finite import NTKLinear
from .registry import LinearRule, _dense_outputs, _dense_patches, register_linear_module


class LowRankDeltaLinear(nn.Module):
    """z = s_w (W_0 + A Bᵀ) h + s_b b with W_0 the ``weight`` parameter and A, B buffers of
    capacity ``max_rank`` (rank used so far: ``rank``; folded into W_0 when full)."""

    def __init__(self, layer: NTKLinear, max_rank: int):
        super().__init__()
        if layer.parameterization != "ntk":
            raise ValueError("LowRankDeltaLinear supports the 'ntk' parameterization only")
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.s_w = float(layer.W_std) / math.sqrt(layer.in_features)
        self.s_b = 0.0 if layer.b_std is None else float(layer.b_std)
        o, a = self.weight.shape
        self.register_buffer("A", self.weight.new_zeros(o, max_rank))
        self.register_buffer("B", self.weight.new_zeros(a, max_rank))
        self.rank = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = h @ self.weight.T
        if self.rank:
            z = z + (h @ self.B[:, :self.rank]) @ self.A[:, :self.rank].T
        z = self.s_w * z
        return z if self.bias is None else z + self.s_b * self.bias

    def dense_weight(self) -> torch.Tensor:
        """W_0 + A Bᵀ (o × a), formed explicitly (for checks on small layers)."""
        return self.weight + self.A[:, :self.rank] @ self.B[:, :self.rank].T


register_linear_module(
    LowRankDeltaLinear,
    lambda m: LinearRule(m.s_w, m.s_b, _dense_patches, _dense_outputs))


def to_lowrank(net: nn.Sequential, steps: int, n_train: int) -> nn.Sequential:
    """A copy of ``net`` with every NTKLinear (NTK parameterization) replaced by a
    LowRankDeltaLinear for ``steps`` updates from ``n_train`` inputs (rank capacity
    min(steps·n_train, max(n_train, min(o, a)/4)))."""
    mods = []
    for m in net:
        if isinstance(m, NTKLinear):
            cap = min(steps * n_train, max(n_train, min(m.in_features, m.out_features) // 4))
            mods.append(LowRankDeltaLinear(m, cap))
        else:
            mods.append(m)
    return nn.Sequential(*mods)


@torch.no_grad()
def _apply_update(layer: LowRankDeltaLinear, h: torch.Tensor, g: torch.Tensor, lr: float) -> None:
    r, n = layer.rank, h.shape[0]
    if n > layer.A.shape[1]:
        raise RuntimeError(f"LowRankDeltaLinear: {n} training inputs exceed the rank capacity "
                           f"{layer.A.shape[1]}; build with to_lowrank(n_train={n})")
    if r + n > layer.A.shape[1]:  # fold the factors into W_0
        layer.weight.addmm_(layer.A[:, :r], layer.B[:, :r].T)
        r = 0
    layer.A[:, r:r + n] = (-lr * layer.s_w) * g.T
    layer.B[:, r:r + n] = h.T
    layer.rank = r + n
    if layer.bias is not None:
        layer.bias.sub_(lr * layer.s_b * g.sum(dim=0))


def gradient_descent(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, steps: int,
                     lr: float) -> List[float]:
    """Full-batch gradient descent, in place, on L = (1/2N) Σ_i ||f(x_i) - y_i||² (the mean over
    the N training inputs of half the squared error), θ ← θ - lr ∇L, for ``steps`` steps.

    ``net`` must be built by ``to_lowrank``; its LowRankDeltaLinear layers are the trainable
    ones. Returns the loss before each step and after the last one.
    """
    layers = [m for m in net if isinstance(m, LowRankDeltaLinear)]
    if not layers:
        raise ValueError("gradient_descent: no LowRankDeltaLinear layer; build net with to_lowrank")
    n = x.shape[0]
    losses: List[float] = []
    saved = {}

    def hook(module, inputs, output):
        probe = torch.zeros_like(output, requires_grad=True)
        saved[id(module)] = (inputs[0].detach(), probe)
        return output + probe

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        for _ in range(steps + 1):
            with torch.enable_grad():
                out = net(x)
                loss = 0.5 * ((out - y) ** 2).sum() / n
            losses.append(float(loss.detach()))
            if len(losses) > steps:
                break
            probes = [saved[id(m)][1] for m in layers]
            grads = torch.autograd.grad(loss, probes)
            for m, g in zip(layers, grads):
                _apply_update(m, saved[id(m)][0], g, lr)
    finally:
        for h in handles:
            h.remove()
    return losses
