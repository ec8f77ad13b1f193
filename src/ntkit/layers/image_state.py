"""Input kernel states of images (N, C, H, W) and their validation.

The input kernel is neural-tangents' (mean over channels): Σ⁰[p, p'] = (1/C) Σ_c x_c[p] x'_c[p'],
with per-position variances Var⁰[p] = (1/C) Σ_c x_c[p]². See ``state.py`` for the layouts.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .state import KernelState


#: up to this many input channels, the same-position input covariance is summed channel by
#: channel in place; einsum (a batched matmul over positions with a C-long inner dimension)
#: was 1.3-4x slower there (64 images of 32 x 32, C = 1..16, float32 and float64)
FEW_CHANNELS = 16


def check_images(t: torch.Tensor, name: str) -> None:
    """Image inputs must be NCHW; a channels-last array is reported when it is recognizable."""
    if t.ndim != 4:
        raise ValueError(f"{name}: image inputs must be NCHW (N, C, H, W), got shape "
                         f"{tuple(t.shape)}")
    n, c, h, w = t.shape
    if w in (1, 3, 4) and c > 4 and h > 4:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}, which looks channels-last (N, H, W, C); ntkit "
            f"expects NCHW images (N, C, H, W): use x.permute(0, 3, 1, 2) (torch) or "
            f"np.transpose(x, (0, 3, 1, 2)) (numpy)")


def pixel_variances(x: torch.Tensor) -> torch.Tensor:
    """Var⁰[p] = (1/C) Σ_c x_c[p]²: (n, C, H, W) -> (n, H, W)."""
    return (x * x).mean(dim=1)


def same_position_state(a: torch.Tensor, b: Optional[torch.Tensor]) -> KernelState:
    """Dense same-position state of a (n1, C, H, W) against b (n2, C, H, W) (b=None: a with
    itself): cov (n1, n2, H, W), var (n, H, W)."""
    c = a.shape[1]
    other = a if b is None else b
    if c <= FEW_CHANNELS:  # one broadcast multiply-add per channel, written in place
        cov = a[:, None, 0] * other[None, :, 0]
        for k in range(1, c):
            cov.addcmul_(a[:, None, k], other[None, :, k])
        cov.div_(c)
    else:
        cov = torch.einsum("achw,bchw->abhw", a, other).div_(c)
    var1 = pixel_variances(a)
    var2 = var1 if b is None else pixel_variances(b)
    return KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=c, spatial="diag",
                       same_inputs=b is None)


def pixel_pair_plan(na: int, nb: Optional[int], device) -> Tuple[torch.Tensor, ...]:
    """The pairs of a pixel-pair tile, with each input's pair with itself among them.

    For a tile of a (na inputs) against b (nb inputs), b=None meaning a against itself, returns
    (left, right, self_index1, self_index2, cross_i, cross_j, first_cross): pair k is
    (pool[left[k]], pool[right[k]]) where pool = cat(a, b) (or a), self_index1/2 are the rows of
    each pair's inputs with themselves, and pairs first_cross.. are the tile's entries
    (cross_i[k], cross_j[k]) in tile coordinates; for b=None the first na pairs are the
    diagonal and the cross pairs the strict upper triangle.
    """
    own_a = torch.arange(na, device=device)
    if nb is None:
        ii, jj = torch.triu_indices(na, na, offset=1, device=device)
        left = torch.cat([own_a, ii])
        right = torch.cat([own_a, jj])
        return left, right, left.clone(), right.clone(), ii, jj, na
    own_b = torch.arange(na, na + nb, device=device)
    ii = torch.arange(na, device=device).repeat_interleave(nb)
    jj = torch.arange(nb, device=device).repeat(na)
    left = torch.cat([own_a, own_b, ii])
    right = torch.cat([own_a, own_b, jj + na])
    self1 = left.clone()
    self2 = torch.cat([own_a, own_b, jj + na])
    return left, right, self1, self2, ii, jj, na + nb


def pixel_pair_state(pool: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                     self_index1: torch.Tensor, self_index2: torch.Tensor,
                     lazy: bool = True) -> KernelState:
    """Paired pixel-pair state of the pairs (pool[left[k]], pool[right[k]]), (m, H, W, H, W).

    ``lazy``: leave the covariance to ``materialize`` (or to the fused native pass, which writes
    it straight into its padded buffers)."""
    c = pool.shape[1]
    a, b = pool[left], pool[right]
    var_pool = pixel_variances(pool)
    state = KernelState(cov=None, var1=var_pool[left], var2=var_pool[right], ntk=None, width=c,
                        layout="paired", spatial="full", self_index1=self_index1,
                        self_index2=self_index2, images=(a, b))
    return state if lazy else materialize(state)


def materialize(state: KernelState) -> KernelState:
    """The covariance of a lazy pixel-pair input state: Σ⁰[k, p, p'] = (1/C) Σ_c a_kc[p] b_kc[p']."""
    if state.cov is not None:
        return state
    a, b = state.images
    cov = torch.einsum("kchw,kcxy->khwxy", a, b).div_(a.shape[1])
    return state.replace(cov=cov, images=None)


def precise_image_state(a: torch.Tensor, b: torch.Tensor, spatial: str) -> KernelState:
    """State of the K pairs (a[k], b[k]) that carries the squared distances exactly, for the
    precise path of nearly equal images (``relu``'s distance-based angle):
    D⁰[k, p, p'] = (1/C) Σ_c (a_kc[p] - b_kc[p'])².

    "diag": a paired same-position state (K, H, W). "full": a paired pixel-pair state of 3K
    pairs, (a[k], a[k]), (b[k], b[k]) and (a[k], b[k]) in that order, so that pooling finds each
    input's pair with itself (``self_index1/2``)."""
    c = a.shape[1]
    k = a.shape[0]
    if spatial == "diag":
        diff = a - b
        return KernelState(cov=(a * b).mean(dim=1), var1=pixel_variances(a),
                           var2=pixel_variances(b), ntk=None, width=c, layout="paired",
                           spatial="diag", dist=(diff * diff).mean(dim=1))
    idx = torch.arange(k, device=a.device)
    left = torch.cat([idx, idx + k, idx])
    right = torch.cat([idx, idx + k, idx + k])
    pool = torch.cat([a, b])
    state = materialize(pixel_pair_state(pool, left, right, left.clone(), right.clone()))
    x, y = pool[left], pool[right]
    dist = ((x[:, :, :, :, None, None] - y[:, :, None, None, :, :]) ** 2).mean(dim=1)
    return state.replace(dist=dist)
