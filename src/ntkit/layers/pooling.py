"""Pooling and flattening layers of image states: AvgPool2d, GlobalAvgPool2d, Flatten.

Maps (Arora et al. 2019, Sec. 4: the CNTK-V trace readout and the CNTK-GAP readout;
identical to neural-tangents' ``stax.AvgPool`` / ``GlobalAvgPool`` / ``Flatten``):

    AvgPool2d (window k, stride s):  Σ'[o, o'] = 1/k⁴ Σ_{a, a'} Σ[s o + a, s o' + a']
    GlobalAvgPool2d:                 Σ' = 1/(HW)² Σ_{p, p'} Σ[p, p']        (flat output)
    Flatten:                         Σ' = 1/(HW) Σ_p Σ[p, p]                (flat output)

and the same for Θ. Flatten divides by H·W because the next Linear normalizes by its fan-in
C·H·W. The pooling layers need pixel-pair covariances (the "full" regime, declared by
``needs_pixel_pairs``); the variances of their outputs are the pooled covariances of each
input with itself (``KernelState.own_covariances``): Var'[o] = Σ'_xx[o, o] for AvgPool2d,
Var' = Σ'_xx for GlobalAvgPool2d.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import nn

from .finite import AvgPool2dModule, GlobalAvgPool2dModule
from .base import Layer
from .conv import IntPair, as_pair, check_image_shape
from .conv_ops import check_padding, full_diagonal, pad_amounts, pool_map
from .fixed_sum import fixed_order_mean
from .state import KernelState


def _need_full(state: KernelState, who: str) -> None:
    if state.spatial == "none":
        raise ValueError(f"{who} needs image inputs (N, C, H, W); it got a flat state")
    if state.spatial != "full":
        raise ValueError(f"{who} needs pixel-pair covariances (spatial='full'); the state keeps "
                         f"only same-position ones ({state.spatial!r})")


class AvgPool2d(Layer):
    """Average pooling ``AvgPool2d(kernel_size, stride=None, padding="valid")``.

    As in torch, ``stride=None`` means stride = kernel_size (neural-tangents' default is 1:
    pass it explicitly when porting). "same" pads zeros that count in the mean (the window
    size divides, neural-tangents' ``normalize_edges=False``); "circular" wraps around.
    """

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None,
                 padding: str = "valid"):
        self.kernel_size = as_pair(kernel_size, "AvgPool2d: kernel_size")
        self.stride = self.kernel_size if stride is None else as_pair(stride, "AvgPool2d: stride")
        self.padding = check_padding(padding)

    needs_pixel_pairs = True

    def apply(self, state: KernelState) -> KernelState:
        _need_full(state, "AvgPool2d")
        cov = pool_map(state.cov, self.kernel_size, self.stride, self.padding)
        ntk = None if state.ntk is None else pool_map(state.ntk, self.kernel_size, self.stride,
                                                        self.padding)
        own1, own2 = state.own_covariances(cov)
        var1 = full_diagonal(own1)
        var2 = var1 if state.same_inputs else full_diagonal(own2)
        return state.replace(cov=cov, ntk=ntk, var1=var1, var2=var2, dist=None)

    def out_shape(self, in_shape) -> Tuple[int, int, int]:
        c, h, w = check_image_shape(in_shape, "AvgPool2d")
        ho = pad_amounts(h, self.kernel_size[0], self.stride[0], self.padding)[0]
        wo = pad_amounts(w, self.kernel_size[1], self.stride[1], self.padding)[0]
        return (c, ho, wo)

    def build(self, in_shape, generator) -> nn.Module:
        self.out_shape(in_shape)
        return AvgPool2dModule(self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Layer):
    """Global average pooling: (N, C, H, W) -> (N, C), the CNTK-GAP readout."""

    needs_pixel_pairs = True

    def apply(self, state: KernelState) -> KernelState:
        _need_full(state, "GlobalAvgPool2d")
        # a fixed summation order: the same bits whatever the thread count
        cov = fixed_order_mean(state.cov, 4)
        ntk = None if state.ntk is None else fixed_order_mean(state.ntk, 4)
        own1, own2 = state.own_covariances(cov)
        var1 = own1.clone()
        var2 = var1 if state.same_inputs else own2.clone()
        return state.replace(cov=cov, ntk=ntk, var1=var1, var2=var2, dist=None, spatial="none")

    def out_shape(self, in_shape) -> Tuple[int]:
        c, _, _ = check_image_shape(in_shape, "GlobalAvgPool2d")
        return (c,)

    def build(self, in_shape, generator) -> nn.Module:
        self.out_shape(in_shape)
        return GlobalAvgPool2dModule()

    def __repr__(self) -> str:
        return "GlobalAvgPool2d()"


class Flatten(Layer):
    """Flatten (N, C, H, W) -> (N, C·H·W): the trace readout of CNTK-V (mean over positions of
    the same-position covariance). A no-op on flat states."""

    def apply(self, state: KernelState) -> KernelState:
        if state.spatial == "none":
            return state
        if state.spatial == "diag":
            cov = state.cov.mean(dim=(-2, -1))
            ntk = None if state.ntk is None else state.ntk.mean(dim=(-2, -1))
        else:
            cov = full_diagonal(state.cov).mean(dim=(-2, -1))
            ntk = None if state.ntk is None else full_diagonal(state.ntk).mean(dim=(-2, -1))
        h, w = state.var1.shape[-2:]
        var1 = state.var1.mean(dim=(-2, -1))
        var2 = var1 if state.same_inputs else state.var2.mean(dim=(-2, -1))
        return state.replace(cov=cov, ntk=ntk, var1=var1, var2=var2, dist=None, spatial="none",
                             width=state.width * h * w)

    def out_shape(self, in_shape) -> Tuple[int]:
        n = 1
        for s in in_shape:
            n *= int(s)
        return (n,)

    def build(self, in_shape, generator) -> nn.Module:
        return nn.Flatten(1)

    def __repr__(self) -> str:
        return "Flatten()"
