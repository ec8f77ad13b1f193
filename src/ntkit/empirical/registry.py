"""Registry of the modules whose weight enters linearly ("linear-in-weight" layers).

For such a layer, at each of T positions t (1 for a dense layer on flat inputs, the output
pixels for a convolution, the tokens for a Linear applied to a sequence), the output is

    z_t = s_w · W u_t + s_b · b,       W of shape (o, a),  u_t ∈ R^a the layer input at t,

with s_w, s_b fixed scales (1 for torch's layers; W_std/sqrt(fan_in) and b_std for ntkit's
NTK-parameterized layers). Then ∂f/∂W = s_w Σ_t g_t u_tᵀ and ∂f/∂b = s_b Σ_t g_t, with g_t the
backpropagated cotangent of z_t, so the layer's NTK contribution needs only u and g
(Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel", structured derivatives).

A rule tells, for one module, the scales and how to arrange its input into patches
(n, T, a) and an output cotangent (B, n, *out) into (B, n, T, o). Built in: nn.Linear, nn.Conv1d, nn.Conv2d (groups=1, any padding mode), ntkit.layers.finite's NTKLinear
and NTKConv2d (both parameterizations). Register new module types
with ``register_linear_module(cls, rule_fn)``; ``rule_fn(module)`` returns a ``LinearRule`` or
None when that instance is not supported (it then falls back to the generic path). Lookup is
by exact type: a subclass that overrides ``forward`` is never assumed linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import finite
from ..layers.finite import NTKLinear


@dataclass(frozen=True)
class LinearRule:
    """How one linear-in-weight module maps to (u, g): see the module docstring."""

    weight_scale: float
    bias_scale: float
    patches: Callable[[torch.Tensor], torch.Tensor]   # module input -> (n, T, a)
    outputs: Callable[[torch.Tensor], torch.Tensor]   # cotangent (B, n, *out) -> (B, n, T, o)


RuleFn = Callable[[nn.Module], Optional[LinearRule]]
_REGISTRY: Dict[Type[nn.Module], RuleFn] = {}


def register_linear_module(cls: Type[nn.Module], rule_fn: RuleFn) -> None:
    """Declare that modules of exact type ``cls`` are linear in their ``weight`` (and ``bias``)
    parameters, as described by ``rule_fn(module) -> LinearRule | None``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_linear_module: {cls!r} is not an nn.Module subclass")
    _REGISTRY[cls] = rule_fn


def rule_for(module: nn.Module) -> Optional[LinearRule]:
    fn = _REGISTRY.get(type(module))
    return None if fn is None else fn(module)


# -- dense layers ---------------------------------------------------------------------------------
def _dense_patches(u: torch.Tensor) -> torch.Tensor:
    return u.reshape(u.shape[0], -1, u.shape[-1])


def _dense_outputs(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])


def _torch_linear(m: nn.Linear) -> LinearRule:
    return LinearRule(1.0, 1.0, _dense_patches, _dense_outputs)


def _ntk_linear(m: NTKLinear) -> LinearRule:
    if m.parameterization == "ntk":
        b = 0.0 if m.b_std is None else float(m.b_std)
        return LinearRule(float(m.W_std) / math.sqrt(m.in_features), b, _dense_patches,
                          _dense_outputs)
    return LinearRule(1.0, 1.0, _dense_patches, _dense_outputs)


# -- convolutions ---------------------------------------------------------------------------------
def conv2d_patches(u: torch.Tensor, kernel_size, stride, dilation, pad, pad_mode: str) -> torch.Tensor:
    """(n, C, H, W) -> (n, P, C·kh·kw) input patches of a 2-d convolution (P output pixels).

    ``pad`` is F.pad's (left, right, top, bottom); ``pad_mode`` 'zeros' or an F.pad mode."""
    if any(pad):
        u = F.pad(u, tuple(pad), mode="constant" if pad_mode == "zeros" else pad_mode)
    cols = F.unfold(u, kernel_size, dilation=dilation, stride=stride)
    return cols.transpose(1, 2)


def conv_outputs(g: torch.Tensor) -> torch.Tensor:
    """Cotangent (B, n, O, *spatial) -> (B, n, P, O)."""
    return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)


def _torch_conv2d(m: nn.Conv2d) -> Optional[LinearRule]:
    if m.groups != 1:
        return None
    pad = tuple(m._reversed_padding_repeated_twice)

    def patches(u):
        return conv2d_patches(u, m.kernel_size, m.stride, m.dilation, pad, m.padding_mode)

    return LinearRule(1.0, 1.0, patches, conv_outputs)


def _torch_conv1d(m: nn.Conv1d) -> Optional[LinearRule]:
    if m.groups != 1:
        return None
    pad = tuple(m._reversed_padding_repeated_twice)

    def patches(u):
        if any(pad):
            u = F.pad(u, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        return conv2d_patches(u.unsqueeze(2), (1, m.kernel_size[0]), (1, m.stride[0]),
                              (1, m.dilation[0]), (0, 0, 0, 0), "zeros")

    return LinearRule(1.0, 1.0, patches, conv_outputs)


def _ntk_conv2d(m) -> LinearRule:
    """ntkit.layers.finite.NTKConv2d: neural-tangents' SAME/VALID/CIRCULAR padding, then conv2d."""

    def patches(u):
        u = finite.same_or_circular_pad(u, m.kernel_size, m.stride, m.padding)
        return F.unfold(u, m.kernel_size, stride=m.stride).transpose(1, 2)

    if m.parameterization == "ntk":
        b = 0.0 if m.b_std is None else float(m.b_std)
        return LinearRule(float(m.W_std) / math.sqrt(m.fan_in), b, patches, conv_outputs)
    return LinearRule(1.0, 1.0, patches, conv_outputs)


register_linear_module(nn.Linear, _torch_linear)
register_linear_module(NTKLinear, _ntk_linear)
register_linear_module(nn.Conv2d, _torch_conv2d)
register_linear_module(nn.Conv1d, _torch_conv1d)
if hasattr(finite, "NTKConv2d") and hasattr(finite, "same_or_circular_pad"):
    register_linear_module(finite.NTKConv2d, _ntk_conv2d)
