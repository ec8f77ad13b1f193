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


def _draw_parameters(module: nn.Module, weight_shape, fan_in: int, W_std: float,
                     b_std: Optional[float], parameterization: str, trainable: bool,
                     generator: Optional[torch.Generator], dtype: torch.dtype) -> None:
    """module.weight ~ N(0, 1) (NTK) or N(0, W_std²/fan_in) (standard), then module.bias
    (out,) ~ N(0, 1) or N(0, b_std²), None when b_std is None; drawn from ``generator`` in
    that order."""
    w = torch.randn(*weight_shape, generator=generator, dtype=dtype)
    b = None if b_std is None else torch.randn(weight_shape[0], generator=generator, dtype=dtype)
    if parameterization == "standard":
        w = w * (W_std / math.sqrt(fan_in))
        b = None if b is None else b * b_std
    module.weight = nn.Parameter(w, requires_grad=trainable)
    module.bias = None if b is None else nn.Parameter(b, requires_grad=trainable)


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
        _draw_parameters(self, (out_features, in_features), in_features, W_std, b_std,
                         parameterization, trainable, generator, dtype)

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


def same_or_circular_pad(x: torch.Tensor, kernel, stride, padding: str) -> torch.Tensor:
    """Pad an NCHW batch as neural-tangents' SAME / CIRCULAR convolutions do (lo = total//2)."""
    if padding == "valid":
        return x
    pads = []
    for n, k, s in ((x.shape[-1], kernel[1], stride[1]), (x.shape[-2], kernel[0], stride[0])):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return torch.nn.functional.pad(x, pads, mode="circular" if padding == "circular" else "constant")


class NTKConv2d(nn.Module):
    """A 2-D convolution in the NTK or standard parameterization, NCHW (see module doc).

    NTK: z = (W_std / sqrt(C_in q_h q_w)) W * x + b_std b with W, b ~ N(0, 1) (neural-tangents'
    ``stax.Conv``); standard: W ~ N(0, W_std² / (C_in q_h q_w)), b ~ N(0, b_std²).
    ``padding`` is "same", "valid" or "circular" (periodic).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(3, 3), stride=(1, 1),
                 padding: str = "same", W_std: float = 1.0, b_std: Optional[float] = 0.0,
                 parameterization: str = "ntk", trainable: bool = True,
                 generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.fan_in = fan_in
        _draw_parameters(self, (out_channels, in_channels, *self.kernel_size), fan_in, W_std,
                         b_std, parameterization, trainable, generator, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_or_circular_pad(x, self.kernel_size, self.stride, self.padding)
        out = torch.nn.functional.conv2d(x, self.weight, None, self.stride)
        if self.parameterization == "ntk":
            out = out * (self.W_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                out = out + self.b_std * self.bias[:, None, None]
            return out
        return out if self.bias is None else out + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding!r}, W_std={self.W_std}, "
                f"b_std={self.b_std}, parameterization={self.parameterization!r}")


class AvgPool2dModule(nn.Module):
    """Average pooling of NCHW inputs with "same" (zero, counted in the mean), "valid" or
    "circular" padding, dividing by the window size (neural-tangents' ``AvgPool``)."""

    def __init__(self, kernel_size, stride, padding: str = "valid"):
        super().__init__()
        self.kernel_size, self.stride, self.padding = tuple(kernel_size), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_or_circular_pad(x, self.kernel_size, self.stride, self.padding)
        return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class GlobalAvgPool2dModule(nn.Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))
