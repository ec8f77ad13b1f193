"""Turn an ordinary torch ``nn.Sequential`` into the infinite-width architecture of its shape."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .layers import (GELU, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Tanh)
from .layers.base import Layer


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
    try:  # convolutional layers, when available
        from .layers.conv_from_torch import convert_spatial
    except ImportError:  # pragma: no cover
        convert_spatial = None
    if convert_spatial is not None:
        layer = convert_spatial(module, W_std, b_std, parameterization)
        if layer is not None:
            return layer
    raise ValueError(f"from_torch: unsupported layer {type(module).__name__} ({module!r}); "
                     f"supported: Linear, ReLU, LeakyReLU, Tanh, Sigmoid, GELU, Identity, Dropout"
                     f" and the convolutional layers of ntkit.layers")


def from_torch(module: nn.Module, W_std: float = 1.0, b_std: Optional[float] = 0.0,
               parameterization: str = "ntk") -> Sequential:
    """The infinite-width architecture with the layer types and widths of ``module``.

    ``module`` is an ``nn.Sequential`` (nested ones are flattened) or a single layer. Weight and
    bias scales are not read from the module's random initialization (torch's default uniform
    init has no infinite-width meaning); they are ``W_std``/``b_std`` for every affine layer, and
    a layer built with ``bias=False`` gets no bias (b_std=None). Frozen weights
    (``requires_grad=False``) give ``trainable=False``.
    """
    children = list(module) if isinstance(module, nn.Sequential) else [module]
    layers = []
    for child in children:
        if isinstance(child, nn.Sequential):
            layers.extend(from_torch(child, W_std, b_std, parameterization).layers)
        else:
            layers.append(_convert(child, W_std, b_std, parameterization))
    return Sequential(*layers)
