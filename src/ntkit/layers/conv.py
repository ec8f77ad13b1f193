"""2-D convolution layer on NCHW images (the CNN-GP / CNTK of Arora et al. 2019)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from .finite import NTKConv2d
from .base import Layer, check_parameterization
from .hyper import check_optional_scale, check_scale, check_width
from .dense import bias_constants
from .conv_ops import check_padding, conv_map, pad_amounts
from .state import KernelState

IntPair = Union[int, Tuple[int, int]]


def as_pair(v: IntPair, name: str) -> Tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or any(int(a) != a or int(a) < 1 for a in t):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def check_image_shape(in_shape, who: str) -> Tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"{who} expects images (channels, height, width) per example, got "
                         f"per-example shape {tuple(in_shape)}")
    return tuple(int(s) for s in in_shape)


class Conv2d(Layer):
    """Convolution ``Conv2d(out_channels, kernel_size, stride=1, padding="same", W_std=1.0,
    b_std=0.0, parameterization="ntk", trainable=True)`` on NCHW inputs.

    Kernel map (Arora et al. 2019, CNTK formula: Σ^(h) = tr([K^(h)]_{D_{ij,i'j'}}) with the
    c_σ/q² normalization; identical to neural-tangents' ``stax.Conv``), with C the q_h x q_w
    diagonal-filter map of ``conv_ops`` (1/(q_h q_w) times the sum over the patch pairs):

        NNGP:  Σ' = W_std² C(Σ) + b_std²              (b_std=None counts as 0)
        NTK, "ntk":       Θ' = W_std² C(Θ) + Σ'
        NTK, "standard":  Θ' = C_in q_h q_w C(Σ) + W_std² C(Θ) + [1 if a bias exists]
        trainable=False:  Θ' = W_std² C(Θ)

    Seed 001's CNTK: W_std = sqrt(c_σ) = sqrt(2) for ReLU, b_std=None, kernel_size=3,
    padding="same"; its fixed first/last layers are ``trainable=False``.
    Per-position variances map with the same-position filter, and the squared distances
    E[(z(x)_p - z(x')_p')²] of the precise path as W_std² C(D) (the bias cancels). ``out_channels`` only matters to
    ``init`` (and to the standard parameterization of the next layer).
    """

    has_params = True

    def __init__(self, out_channels: int, kernel_size: IntPair = 3, stride: IntPair = 1,
                 padding: str = "same", W_std: float = 1.0, b_std: Optional[float] = 0.0,
                 parameterization: str = "ntk", trainable: bool = True):
        self.out_channels = check_width(out_channels, "Conv2d: out_channels")
        self.kernel_size = as_pair(kernel_size, "Conv2d: kernel_size")
        self.stride = as_pair(stride, "Conv2d: stride")
        self.padding = check_padding(padding)
        self.W_std = check_scale(W_std, "Conv2d: W_std")
        self.b_std = check_optional_scale(b_std, "Conv2d: b_std")
        self.parameterization = check_parameterization(parameterization)
        self.trainable = bool(trainable)

    def _c(self, t: torch.Tensor, spatial: str) -> torch.Tensor:
        return conv_map(t, spatial, self.kernel_size, self.stride, self.padding)

    def apply(self, state: KernelState) -> KernelState:
        if state.spatial == "none":
            raise ValueError("Conv2d needs image inputs (N, C, H, W); it got a flat state "
                             "(after Flatten/GlobalAvgPool2d or on flat inputs)")
        w2 = self.W_std ** 2
        trains = self.trainable and state.track_ntk
        state, b2, one = bias_constants(state, self.b_std, trains and
                                        self.parameterization == "standard")
        cov_u = self._c(state.cov, state.spatial)
        ntk, offset = state.ntk, state.ntk_log2_offset
        if trains and self.parameterization == "standard":
            kh, kw = self.kernel_size
            own = cov_u * float(state.width * kh * kw)
            if self.b_std is not None:
                own.add_(one)
            ntk, offset = ((own, 0) if ntk is None else
                           state.ntk_add_(self._c(ntk, state.spatial), own, alpha=w2))
        elif ntk is not None:
            ntk = self._c(ntk, state.spatial).mul_(w2)
        cov = cov_u.mul_(w2).add_(b2)
        if trains and self.parameterization == "ntk":
            ntk, offset = (cov.clone(), 0) if ntk is None else state.ntk_add_(ntk, cov)
        var1 = self._c(state.var1, "diag").mul_(w2).add_(b2)
        var2 = var1 if state.same_inputs else self._c(state.var2, "diag").mul_(w2).add_(b2)
        dist = None if state.dist is None else self._dist(state, cov, var1, var2, w2)
        return state.replace(cov=cov, var1=var1, var2=var2, ntk=ntk, dist=dist,
                             width=self.out_channels, ntk_log2_offset=offset)

    def _dist(self, state: KernelState, cov, var1, var2, w2: float) -> torch.Tensor:
        """E[(z(x)_o - z(x')_o')²] after the layer: W_std² C(D) (the bias cancels) wherever
        both windows see the same padding, i.e. everywhere but for "same" zero padding at
        pixel pairs o ≠ o' (a zero-padded pixel against a real one is not a zero distance);
        there Var'(x)[o] + Var'(x')[o'] - 2 Σ'[o, o'], which is not small anyway."""
        dist = self._c(state.dist, state.spatial).mul_(w2)
        if state.spatial != "full" or self.padding != "same":
            return dist
        tmp = state.replace(cov=cov, var1=var1, var2=var2)
        v1, v2 = tmp.broadcast_vars()
        m, h, w = dist.shape[0], dist.shape[1], dist.shape[2]
        same_pos = dist.reshape(m, h * w, h * w).diagonal(dim1=1, dim2=2).clone()
        dist = (v1 + v2 - 2 * cov).clamp_(min=0.0)
        dist.reshape(m, h * w, h * w).diagonal(dim1=1, dim2=2).copy_(same_pos)
        return dist

    def out_shape(self, in_shape) -> Tuple[int, int, int]:
        _, h, w = check_image_shape(in_shape, "Conv2d")
        ho = pad_amounts(h, self.kernel_size[0], self.stride[0], self.padding)[0]
        wo = pad_amounts(w, self.kernel_size[1], self.stride[1], self.padding)[0]
        return (self.out_channels, ho, wo)

    def build(self, in_shape, generator: torch.Generator) -> nn.Module:
        c, _, _ = check_image_shape(in_shape, "Conv2d")
        self.out_shape(in_shape)
        return NTKConv2d(c, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.W_std, self.b_std, self.parameterization, self.trainable, generator)
