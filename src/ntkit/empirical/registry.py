"""Registry of the modules whose weight enters linearly ("linear-in-weight" layers).

For such a layer, at each of T positions t (1 for a dense layer on flat inputs, the output
pixels for a convolution, the tokens for a Linear applied to a sequence), the output is

    z_t = s_w · W u_t + s_b · b,       W of shape (o, a),  u_t ∈ R^a the layer input at t,

with s_w, s_b fixed scales (1 for torch's layers; W_std/sqrt(fan_in) and b_std for ntkit's
NTK-parameterized layers). Then ∂f/∂W = s_w Σ_t g_t u_tᵀ and ∂f/∂b = s_b Σ_t g_t, with g_t the
backpropagated cotangent of z_t, so the layer's NTK contribution needs only u and g
(Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel", structured derivatives).

A rule tells, for one module, the scales and how to arrange its input into patches
(n, T, a) and an output cotangent (B, n, *out) into (B, n, T, o). Built in: nn.Linear,
nn.Conv1d, nn.Conv2d (groups=1, any padding mode), ntkit.layers.finite's NTKLinear and NTKConv2d (both
parameterizations), nn.Embedding (one-hot inputs, never formed). Two further rule kinds:
``ElementwiseRule`` (nn.LayerNorm, eval-mode nn.BatchNorm1d/2d/3d: z = w ∘ v + b) and
``AttentionRule`` (the four linear maps inside nn.MultiheadAttention, hence inside
nn.TransformerEncoderLayer/DecoderLayer). Register new module types
with ``register_linear_module(cls, rule_fn)``; ``rule_fn(module)`` returns a ``LinearRule`` or
None when that instance is not supported (it then falls back to the generic path). Lookup is
by exact type: a subclass that overrides ``forward`` is never assumed linear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import finite
from ..layers.finite import NTKLinear


@dataclass(frozen=True)
class LinearRule:
    """How one linear-in-weight module maps to (u, g): see the module docstring.

    ``input_gram(ua, ub)``, when given, replaces the dot products u_it · u_js of the patches
    (flattened to (na·T, nb·S)); the layer's contribution is then computed only in the
    Gram-of-Grams form (nn.Embedding: u_t is the one-hot vector of token id_t, never formed,
    and u_it · u_js = [id_it = id_js])."""

    weight_scale: float
    bias_scale: float
    patches: Callable[[torch.Tensor], torch.Tensor]   # module input -> (n, T, a)
    outputs: Callable[[torch.Tensor], torch.Tensor]   # cotangent (B, n, *out) -> (B, n, T, o)
    input_gram: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    #: 2-d convolutions: the batch's 4-d inputs are passed channels-last (same values), on
    #: which torch's CPU convolutions and their backward run faster (Myrtle-5 of width 64:
    #: forward and 10 backward passes ~30% faster) and ``conv2d_patches`` needs no transpose
    channels_last: bool = False


@dataclass(frozen=True)
class ElementwiseRule:
    """An elementwise-affine module z_t = w ∘ v_t + b (LayerNorm; BatchNorm in eval mode), with
    v_t the normalized input at position t; then ∂f_c/∂w = Σ_t g^c_t ∘ v_t, ∂f_c/∂b = Σ_t g^c_t:
    per-example gradients of D numbers each, contracted directly.

    ``normalized(u)`` gives v from the module input, as (n, T, D); ``outputs`` arranges a
    cotangent (B, n, *out) as (B, n, T, D)."""

    normalized: Callable[[torch.Tensor], torch.Tensor]
    outputs: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttentionRule:
    """nn.MultiheadAttention: its four linear maps (q, k, v in-projections, out-projection)
    are linear-in-weight; their inputs and cotangents are recorded by ``attention``."""


Rule = Union[LinearRule, ElementwiseRule, AttentionRule]
RuleFn = Callable[[nn.Module], Optional[Rule]]
_REGISTRY: Dict[Type[nn.Module], RuleFn] = {}


def register_linear_module(cls: Type[nn.Module], rule_fn: RuleFn) -> None:
    """Declare that modules of exact type ``cls`` are linear in their ``weight`` (and ``bias``)
    parameters, as described by ``rule_fn(module) -> LinearRule | None``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_linear_module: {cls!r} is not an nn.Module subclass")
    _REGISTRY[cls] = rule_fn


def rule_for(module: nn.Module) -> Optional[Rule]:
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
def conv2d_patches(u: torch.Tensor, kernel_size, stride=(1, 1), dilation=(1, 1),
                   pad=(0, 0, 0, 0), pad_mode: str = "zeros") -> torch.Tensor:
    """(n, C, H, W) -> (n, P, kh·kw·C) input patches of a 2-d convolution (P output pixels).

    ``pad`` is F.pad's (left, right, top, bottom); ``pad_mode`` 'zeros' or an F.pad mode. The
    patch entries are in (kh, kw, C) order, a fixed permutation of the weight's (C, kh, kw)
    (the NTK sums over all entries, so any fixed order gives the same kernel). They are read
    from a channels-last copy of the padded input through one overlapping strided view, copied
    once: about 2.5x faster than F.unfold's (C, kh, kw) order on CPU."""
    if any(pad):
        u = F.pad(u, tuple(pad), mode="constant" if pad_mode == "zeros" else pad_mode)
    n, c, h, w = u.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    u = u.permute(0, 2, 3, 1).contiguous()  # (n, H, W, C); no copy when u is channels-last
    s0, s1, s2, _ = u.stride()
    view = u.as_strided((n, ho, wo, kh, kw, c), (s0, sh * s1, sw * s2, dh * s1, dw * s2, 1))
    return view.reshape(n, ho * wo, kh * kw * c)


def conv_outputs(g: torch.Tensor) -> torch.Tensor:
    """Cotangent (B, n, O, *spatial) -> (B, n, P, O)."""
    return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)


def _torch_conv2d(m: nn.Conv2d) -> Optional[LinearRule]:
    if m.groups != 1:
        return None
    pad = tuple(m._reversed_padding_repeated_twice)

    def patches(u):
        return conv2d_patches(u, m.kernel_size, m.stride, m.dilation, pad, m.padding_mode)

    return LinearRule(1.0, 1.0, patches, conv_outputs, channels_last=True)


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
        return conv2d_patches(u, m.kernel_size, m.stride)

    if m.parameterization == "ntk":
        b = 0.0 if m.b_std is None else float(m.b_std)
        return LinearRule(float(m.W_std) / math.sqrt(m.fan_in), b, patches, conv_outputs,
                          channels_last=True)
    return LinearRule(1.0, 1.0, patches, conv_outputs, channels_last=True)


# -- embeddings, normalizations, attention ----------------------------------------------------------
def _embedding(m: nn.Embedding) -> Optional[LinearRule]:
    """z_t = W[id_t]: linear in W with one-hot inputs. max_norm renormalizes W in place and
    scale_grad_by_freq/sparse change the gradient: those go to the generic path."""
    if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
        return None
    pad = m.padding_idx

    def patches(ids):  # (n, *) ids -> (n, T, 1), padding_idx (no gradient in torch) -> -1
        ids = ids.reshape(ids.shape[0], -1, 1)
        return ids if pad is None else ids.masked_fill(ids == pad, -1)

    return LinearRule(1.0, 0.0, patches, _dense_outputs, _token_gram)


def _token_gram(ua: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
    """[id_a = id_b] for flattened positions (na·T, nb·S), 0 at padding (id -1: b's padding
    becomes -2, so that it matches nothing, in one pass over the nb·S ids instead of a second
    pass over the Gram)."""
    a, b = ua.reshape(-1, 1), ub.reshape(1, -1)
    return a == b.masked_fill(b < 0, -2)


def _layer_norm(m: nn.LayerNorm) -> Optional[ElementwiseRule]:
    shape, eps = tuple(m.normalized_shape), m.eps
    d = math.prod(shape)

    def normalized(u):
        v = F.layer_norm(u, shape, None, None, eps)
        return v.reshape(v.shape[0], -1, d)

    def outputs(g):
        return g.reshape(g.shape[0], g.shape[1], -1, d)

    return ElementwiseRule(normalized, outputs)


def _batch_norm(m) -> Optional[ElementwiseRule]:
    """Eval-mode BatchNorm with running statistics (else it normalizes by batch statistics)."""
    if m.training or m.running_mean is None or m.running_var is None:
        return None
    mean, var, eps = m.running_mean, m.running_var, m.eps

    def normalized(u):  # (n, C, *spatial) -> (n, T, C)
        shape = (1, -1) + (1,) * (u.ndim - 2)
        v = (u - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
        return v.reshape(v.shape[0], v.shape[1], -1).transpose(1, 2)

    def outputs(g):  # (B, n, C, *spatial) -> (B, n, T, C)
        return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)

    return ElementwiseRule(normalized, outputs)


def _attention(m: nn.MultiheadAttention) -> Optional[AttentionRule]:
    return AttentionRule()


register_linear_module(nn.Linear, _torch_linear)
register_linear_module(NTKLinear, _ntk_linear)
register_linear_module(nn.Conv2d, _torch_conv2d)
register_linear_module(nn.Conv1d, _torch_conv1d)
register_linear_module(nn.Embedding, _embedding)
register_linear_module(nn.LayerNorm, _layer_norm)
for _bn in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
    register_linear_module(_bn, _batch_norm)
register_linear_module(nn.MultiheadAttention, _attention)
if hasattr(finite, "NTKConv2d") and hasattr(finite, "same_or_circular_pad"):
    register_linear_module(finite.NTKConv2d, _ntk_conv2d)
