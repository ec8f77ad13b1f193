"""Turn an ordinary torch ``nn.Sequential`` into the infinite-width architecture of its shape."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .layers import (GELU, Identity, LayerNorm, LeakyReLU, Linear, ParallelSum, ReLU, Residual,
                     Sequential, Sigmoid, Tanh)
from .layers.base import Layer
from .layers.residual import BranchSum


def _convert_block(module: nn.Module, W_std: float, b_std: Optional[float],
                   parameterization: str) -> Optional[Layer]:
    """Residual blocks: a module with ``.branch`` and ``.shortcut`` (None or nn.Identity for
    the identity) computing shortcut(x) + branch(x), e.g. ``nk.ResidualBlock``; an
    ``nk``-built ``BranchSum`` of parallel branches. None if the module is neither."""
    def sub(m: Optional[nn.Module]) -> Optional[Layer]:
        if m is None or type(m) is nn.Identity:
            return None
        seq = from_torch(m, W_std, b_std, parameterization)
        return seq.layers[0] if len(seq) == 1 else seq

    if isinstance(module, BranchSum):
        return ParallelSum(*[sub(b) for b in module.branches])
    branch = getattr(module, "branch", None)
    if isinstance(branch, nn.Module) and hasattr(module, "shortcut"):
        shortcut = module.shortcut
        if shortcut is not None and not isinstance(shortcut, nn.Module):
            raise ValueError(f"from_torch: {type(module).__name__}.shortcut must be a module or "
                             f"None, got {type(shortcut).__name__}")
        return Residual(sub(branch), sub(shortcut))
    return None


def _convert_layernorm(module: nn.LayerNorm) -> Layer:
    if module.elementwise_affine:
        raise ValueError(f"from_torch: {module!r}: a LayerNorm with a learned scale and shift has "
                         f"no neural-tangents counterpart; use elementwise_affine=False")
    if len(module.normalized_shape) == 1:
        return LayerNorm(eps=module.eps)
    if len(module.normalized_shape) == 3:  # (C, H, W) of NCHW images: channels and positions
        return LayerNorm(axis="all", eps=module.eps)
    raise ValueError(f"from_torch: {module!r}: normalized_shape must be (features,) or (C, H, W)")


def _convert(module: nn.Module, W_std: float, b_std: Optional[float], parameterization: str) -> Layer:
    if isinstance(module, nn.Linear):
        return Linear(module.out_features, W_std=W_std,
                      b_std=(b_std if module.bias is not None else None),
                      parameterization=parameterization,
                      trainable=module.weight.requires_grad)
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, nn.LeakyReLU):
        return LeakyReLU(module.negative_slope)
    if isinstance(module, nn.Tanh):
        return Tanh()
    if isinstance(module, nn.Sigmoid):
        return Sigmoid()
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ValueError("from_torch: nn.GELU(approximate='tanh') has no exact kernel; use "
                             "approximate='none' or nk.Elementwise(fn)")
        return GELU()
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return Identity()
    if isinstance(module, nn.LayerNorm):
        return _convert_layernorm(module)
    block = _convert_block(module, W_std, b_std, parameterization)
    if block is not None:
        return block
    try:  # convolutional layers, when available
        from .layers.conv_from_torch import convert_spatial
    except ImportError:  # pragma: no cover
        convert_spatial = None
    if convert_spatial is not None:
        layer = convert_spatial(module, W_std, b_std, parameterization)
        if layer is not None:
            return layer
    raise ValueError(f"from_torch: unsupported layer {type(module).__name__} ({module!r}); "
                     f"supported: Linear, ReLU, LeakyReLU, Tanh, Sigmoid, GELU, Identity, Dropout, "
                     f"LayerNorm(elementwise_affine=False), the convolutional layers of ntkit.layers "
                     f"and residual blocks (a module with .branch and .shortcut, see from_torch)")


def from_torch(module: nn.Module, W_std: float = 1.0, b_std: Optional[float] = 0.0,
               parameterization: str = "ntk") -> Sequential:
    """The infinite-width architecture with the layer types and widths of ``module``.

    ``module`` is an ``nn.Sequential`` (nested ones are flattened) or a single layer. Weight and
    bias scales are not read from the module's random initialization (torch's default uniform
    init has no infinite-width meaning); they are ``W_std``/``b_std`` for every affine layer, and
    a layer built with ``bias=False`` gets no bias (b_std=None). Frozen weights
    (``requires_grad=False``) give ``trainable=False``.

    Residual blocks: a child module with attributes ``branch`` (a module) and ``shortcut`` (a
    module, or None / ``nn.Identity()`` for the identity) whose forward is
    ``shortcut(x) + branch(x)`` becomes ``nk.Residual(branch, shortcut)``; ``nk.ResidualBlock``
    is such a module, and ``nk.Residual(...).init(...)`` builds one. (Only the attributes are
    read: a forward that does anything else, e.g. a ReLU after the sum as in torchvision's
    BasicBlock, must be written as a block followed by ``nn.ReLU()``.)
    """
    children = list(module) if isinstance(module, nn.Sequential) else [module]
    layers = []
    for child in children:
        if isinstance(child, nn.Sequential):
            layers.extend(from_torch(child, W_std, b_std, parameterization).layers)
        else:
            layers.append(_convert(child, W_std, b_std, parameterization))
    return Sequential(*layers)
