"""Finite-width torch modules with the parameterizations of the infinite-width layers.

NTK parameterization (Jacot et al. 2018; neural-tangents' default):
    z = (W_std / sqrt(fan_in)) W x + b_std b,      W, b ~ N(0, 1)
Standard parameterization (Sohl-Dickstein et al. 2020):
    z = W x + b,   W ~ N(0, W_std^2 / fan_in),  b ~ N(0, b_std^2)
Both give the same function at initialization in distribution; their gradients (and so their
NTKs) differ. ``b_std=None`` means no bias parameter at all. ``trainable=False`` keeps the
parameters out of ``.parameters()`` gradients (``requires_grad=False``).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn


class NTKLinear(nn.Module):
    """A fully-connected layer in the NTK or standard parameterization (see module doc).

    Input (..., in_features) -> output (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, W_std: float = 1.0,
                 b_std: Optional[float] = 0.0, parameterization: str = "ntk",
                 trainable: bool = True, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        w = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        b = None if b_std is None else torch.randn(out_features, generator=generator, dtype=dtype)
        if parameterization == "standard":
            w = w * (W_std / math.sqrt(in_features))
            b = None if b is None else b * b_std
        self.weight = nn.Parameter(w, requires_grad=trainable)
        self.bias = None if b is None else nn.Parameter(b, requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "ntk":
            out = (self.W_std / math.sqrt(self.in_features)) * (x @ self.weight.T)
            if self.bias is not None:
                out = out + self.b_std * self.bias
            return out
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, W_std={self.W_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")


class ElementwiseModule(nn.Module):
    """Applies an elementwise function; the finite counterpart of every activation layer."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "Elementwise"):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
