"""Local average pooling readout ``LocalAvgPool2d(c, padding="circular")`` (LAP, Li et al. 2019,
"Enhanced Convolutional Neural Tangent Kernels", Sec. 4).

Finite layer: average pooling of the last feature map with a c x c window at stride 1 (so the
map keeps its H x W size; "circular" wraps around the image, "same" pads zeros that count in
the mean), then flattening to (C·H·W,). It replaces the ``Flatten()`` readout: c = 0 or 1 is
the vanilla CNTK (no pooling), c = H (= W) with circular padding is exactly global average
pooling; in between it averages the kernel over shifts of at most c - 1 pixels, the "local
translation augmentation" that lifts the CNTK on CIFAR-10 (Li et al., Table 2).

Kernel map. With P the (H x H) one-dimensional pooling matrix (P[o, i] = 1/c for each of the c
window members i of output o) and A = Pᵀ P, the same along the width:

    Σ' = 1/(H W) Σ_{h, w, h', w'} A_h[h, h'] A_w[w, w'] Σ[h, w, h', w']        Θ' likewise,

the mean over output positions of the pooled same-position covariance (the next Linear divides
by its fan-in C·H·W, as after ``Flatten``). For circular padding A[h, h'] depends on
(h' - h) mod H only: the weights of Li et al.'s LAP, triangular in the shift. The map is
separable: two small (H x H), (W x W) contractions; for a batch of at least 4 pairs the
Kronecker product A_h ⊗ A_w ((HW)² entries, at most a quarter of the batch's memory) turns it
into one matrix-vector pass, as fast as global average pooling. It needs pixel-pair
covariances (``needs_pixel_pairs``).

Verified against Li et al.'s definition (tests/test_layers_local_pool.py): LAP is local
translation augmentation, the vanilla kernel averaged over the c⁴ pairs of circular shifts
(g, g'), each within a c x c window, of its two inputs, K_LAP(x, x') = c⁻⁴ Σ_{g,g'}
K_vanilla(g x, g' x') (their Sec. 4, which assumes circular padding; brute force through a
circularly padded body, float64, 1e-12) — the triangular weights (c - |Δ|)/c² per axis of
A above; window c counts pixels (c = 0 and 1: no pooling, the vanilla CNTK; c = H: GAP, both
tested), and where a window starts (``lo``) does not matter for circular padding, only the
shift differences do. ``padding="same"`` (zeros that count in the mean) is an ntkit extension,
not in the paper.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

from .finite import AvgPool2dModule
from .base import Layer
from .conv import check_image_shape
from .state import KernelState

IntPair = Union[int, Tuple[int, int]]
_PADDINGS = ("circular", "same")
# from this many pairs on, the (HW)² Kronecker weights are small next to the input and one
# matrix-vector product is the fastest pass (benchmarks/local_pool.py)
_DENSE_MIN_PAIRS = 4


def _window_pair(c: IntPair) -> Tuple[int, int]:
    t = (c, c) if isinstance(c, int) else tuple(c)
    if len(t) != 2 or any(int(a) != a or int(a) < 0 for a in t):
        raise ValueError(f"LocalAvgPool2d: c must be a non-negative int or a pair of them, got {c!r}")
    return max(int(t[0]), 1), max(int(t[1]), 1)


def pooling_gram(n: int, c: int, padding: str, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """A = Pᵀ P for the (n x n) stride-1 pooling matrix P of window c (module doc)."""
    lo = (c - 1) // 2  # neural-tangents' / ntkit's SAME split: lo = total // 2
    out = torch.arange(n, device=device)[:, None]
    members = out - lo + torch.arange(c, device=device)[None, :]  # (n, c) input indices
    p = torch.zeros(n, n, dtype=dtype, device=device)
    vals = torch.full((n, c), 1.0 / c, dtype=dtype, device=device)
    if padding == "circular":
        p.scatter_add_(1, members % n, vals)
    else:  # zeros outside the image: those members add nothing
        inside = (members >= 0) & (members < n)
        p.scatter_add_(1, members.clamp(0, n - 1), vals * inside)
    return p.T @ p


class LocalAvgPool2d(Layer):
    """``LocalAvgPool2d(c, padding="circular")``: the LAP readout (module doc); output is flat
    (C·H·W,), like ``Flatten()``."""

    needs_pixel_pairs = True
    is_readout = True

    def __init__(self, c: IntPair, padding: str = "circular"):
        if padding not in _PADDINGS:
            raise ValueError(f"LocalAvgPool2d: padding must be one of {_PADDINGS}, got {padding!r}")
        self.c = c
        self.window = _window_pair(c)
        self.padding = padding

    def _check_window(self, h: int, w: int) -> None:
        if self.window[0] > h or self.window[1] > w:
            raise ValueError(f"LocalAvgPool2d: window {self.window} is larger than the feature map "
                             f"({h}, {w}); c = the map size is global average pooling")

    def pool_kernel(self, t: torch.Tensor) -> torch.Tensor:
        """Σ' of a pixel-pair tensor (..., H, W, H, W) -> (...)."""
        h, w = t.shape[-2:]
        self._check_window(h, w)
        a_h = pooling_gram(h, self.window[0], self.padding, t.dtype, t.device)
        a_w = pooling_gram(w, self.window[1], self.padding, t.dtype, t.device)
        lead = t.shape[:-4]
        pairs = t.numel() // (h * w) ** 2
        if pairs >= _DENSE_MIN_PAIRS and t.is_contiguous():
            # one matrix-vector pass over the pairs; the (HW)² weights (A_h ⊗ A_w) take at
            # most 1/_DENSE_MIN_PAIRS of the input's memory
            weights = (a_h[:, None, :, None] * a_w[None, :, None, :]).reshape(-1)
            return (t.reshape(pairs, -1) @ weights).reshape(lead).div_(h * w)
        rows = torch.einsum("...hwxy,hx->...wy", t, a_h)
        return torch.einsum("...wy,wy->...", rows, a_w).div_(h * w)

    def apply(self, state: KernelState) -> KernelState:
        if state.spatial != "full":
            raise ValueError("LocalAvgPool2d needs image states with pixel-pair covariances "
                             f"(spatial='full'), got spatial={state.spatial!r}")
        cov = self.pool_kernel(state.cov)
        ntk = None if state.ntk is None else self.pool_kernel(state.ntk)
        h, w = state.cov.shape[-2:]
        # the variances of the pooled outputs: each input's own pooled covariance
        own1, own2 = state.own_covariances(cov)
        var1 = own1.clone()
        var2 = var1 if state.same_inputs else own2.clone()
        return state.replace(cov=cov, ntk=ntk, var1=var1, var2=var2, dist=None, spatial="none",
                             width=state.width * h * w)

    def out_shape(self, in_shape) -> Tuple[int]:
        c, h, w = check_image_shape(in_shape, "LocalAvgPool2d")
        self._check_window(h, w)
        return (c * h * w,)

    def build(self, in_shape, generator) -> nn.Module:
        self.out_shape(in_shape)
        return nn.Sequential(AvgPool2dModule(self.window, (1, 1), self.padding), nn.Flatten(1))

    def __repr__(self) -> str:
        return f"LocalAvgPool2d(c={self.c!r}, padding={self.padding!r})"
