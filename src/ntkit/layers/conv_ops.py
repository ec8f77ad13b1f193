"""Tensor maps behind the convolutional kernel layers: padding and window sums on covariances.

Covariances of image-shaped layers are kept in one of two spatial regimes (Arora et al. 2019,
"On Exact Computation with an Infinitely Wide Neural Net", Sec. 4 and Appendix; Novak et al.
2019 for the same-position shortcut):

* ``"diag"``: same-position covariances only, trailing shape (H, W):
  Σ[p] = E[z(x)_p z(x')_p]. Enough when no layer mixes positions before a Flatten readout
  (the trace readout of CNTK-V), since a convolution's same-position output covariance only
  reads same-position input covariances.
* ``"full"``: all pixel pairs, trailing shape (H, W, H, W): Σ[p, p'] = E[z(x)_p z(x')_p'].
  Needed by pooling (AvgPool2d, GlobalAvgPool2d: the CNTK-GAP).

A q_h x q_w convolution with stride s maps (the seed's tr([K]_{D_{ij,i'j'}}) / q², the
normalization of neural-tangents' ``stax.Conv``):

    full:  Σ'[o, o'] = 1/(q_h q_w) Σ_{a, b} Σ[s o + (a, b), s o' + (a, b)]
    diag:  Σ'[o]     = 1/(q_h q_w) Σ_{a, b} Σ[s o + (a, b)]

i.e. a separable filter that is diagonal in each pair of axes (h, h') and (w, w') — one 1-D
window sum per pair of axes, shifting both members together. An average pool of window k sums
the two members independently (a box filter): Σ'[o, o'] = 1/k⁴ Σ_{a,a'} Σ[s o + a, s o' + a'].

Padding (per spatial axis of size n, window k, stride s): ``valid`` keeps (n - k)//s + 1
outputs; ``same`` keeps ceil(n/s) and pads zeros, lo = total//2, hi = total - lo with
total = max((out-1)s + k - n, 0) (zero pixels have zero covariance); ``circular`` pads by the
same amounts with the periodic continuation of the image (both members of a pair wrap).
All maps act on the trailing axes and accept any leading (batch) axes.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

PADDINGS = ("same", "valid", "circular")


def check_padding(padding: str) -> str:
    p = str(padding).lower()
    if p not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return p


def pad_amounts(n: int, k: int, s: int, padding: str) -> Tuple[int, int, int]:
    """(output size, low pad, high pad) of one spatial axis; see the module doc."""
    if padding == "valid":
        if n < k:
            raise ValueError(f"padding='valid': image size {n} is smaller than the window {k}")
        return (n - k) // s + 1, 0, 0
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def _pad_axis(x: torch.Tensor, dim: int, lo: int, hi: int, padding: str) -> torch.Tensor:
    if lo == 0 and hi == 0:
        return x
    n = x.shape[dim]
    if padding == "circular":
        idx = torch.arange(-lo, n + hi, device=x.device) % n
        return x.index_select(dim, idx)
    shape_lo = list(x.shape)
    shape_lo[dim] = lo
    shape_hi = list(x.shape)
    shape_hi[dim] = hi
    return torch.cat([x.new_zeros(shape_lo), x, x.new_zeros(shape_hi)], dim)


def window_sum(x: torch.Tensor, dims: Sequence[int], k: int, s: int, padding: str) -> torch.Tensor:
    """Σ_{a<k} x[s o + a] with the same shift a applied to every axis in ``dims`` at once.

    ``dims`` of length 1 is an ordinary 1-D window sum; of length 2 a diagonal filter on a
    pair of axes (h, h'). Axes in ``dims`` must have equal sizes. Returns a new tensor.
    """
    n = x.shape[dims[0]]
    out_n, lo, hi = pad_amounts(n, k, s, padding)
    for d in dims:
        x = _pad_axis(x, d, lo, hi, padding)
    stop = s * (out_n - 1) + 1
    out = None
    for a in range(k):
        idx = [slice(None)] * x.ndim
        for d in dims:
            idx[d] = slice(a, a + stop, s)
        view = x[tuple(idx)]
        out = view.clone() if out is None else out.add_(view)
    return out


def conv_map(t: torch.Tensor, spatial: str, kernel: Tuple[int, int], stride: Tuple[int, int],
             padding: str) -> torch.Tensor:
    """1/(q_h q_w) times the diagonal-filter window sums of a convolution (module doc)."""
    (kh, kw), (sh, sw) = kernel, stride
    if spatial == "diag":
        out = window_sum(window_sum(t, (-2,), kh, sh, padding), (-1,), kw, sw, padding)
    elif spatial == "full":
        out = window_sum(window_sum(t, (-4, -2), kh, sh, padding), (-3, -1), kw, sw, padding)
    else:
        raise ValueError(f"conv_map: unknown spatial regime {spatial!r}")
    return out.mul_(1.0 / (kh * kw))


def pool_map(t: torch.Tensor, kernel: Tuple[int, int], stride: Tuple[int, int],
             padding: str) -> torch.Tensor:
    """Average pooling of a full pixel-pair covariance: box filter on each member (module doc)."""
    (kh, kw), (sh, sw) = kernel, stride
    for dim, k, s in ((-4, kh, sh), (-2, kh, sh), (-3, kw, sw), (-1, kw, sw)):
        t = window_sum(t, (dim,), k, s, padding)
    return t.mul_(1.0 / (kh * kw) ** 2)


def full_diagonal(t: torch.Tensor) -> torch.Tensor:
    """Σ[p, p] of a full covariance (..., H, W, H, W) -> (..., H, W)."""
    h, w = t.shape[-2], t.shape[-1]
    flat = t.reshape(t.shape[:-4] + (h * w, h * w))
    return torch.diagonal(flat, dim1=-2, dim2=-1).reshape(t.shape[:-4] + (h, w))
