"""Kernel states of image inputs and the driver that computes convolutional kernels in blocks.

Spatial states (see ``conv_ops`` for the two regimes) extend ``KernelState``:

* layout "dense":  cov (n1, n2) + S, var1 (n1, H, W), var2 (n2, H, W);
* layout "paired": cov (m,) + S for m selected pairs (x1[i_k], x2[j_k]), var1/var2 (m, H, W);

with S = (H, W) in the "diag" regime and (H, W, H, W) in the "full" one; var holds the
per-position variances E[z(x)_p²]. The input kernel is neural-tangents' (mean over channels):
Σ⁰[p, p'] = (1/C) Σ_c x_c[p] x'_c[p'].

``spatial_kernel`` (called by ``Sequential.kernel`` for image inputs) picks the regime from
the architecture: same-position covariances (O(H·W) per pair and layer) when no pooling comes
before the readout, pixel pairs (O((H·W)²)) otherwise; it walks blocks of pairs sized to a
memory budget, computes only one triangle when x2 is None, and uses the fused kernels of
``conv_fused`` for chains of [Conv2d, ReLU-family] layers. Per-position variances after
pooling layers need each input's full self-covariance; they are computed once per input (a
"self" pass whose results also fill the kernel's diagonal when x2 is None) and looked up
for every pair.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import torch

from .state import KernelState

_DEFAULT_BUDGET = int(float(os.environ.get("NTKIT_MEMORY_BUDGET", 1 << 30)))
_budget = [_DEFAULT_BUDGET]
# Full-size tensors per pair that may be live at once on the layer-by-layer path (cov, ntk,
# padded copies, activation temporaries, allocator slack): measured peak growth ~19 per pair
# (tests/test_conv_memory.py); the fused paths need far less (native: 4 padded arrays of one
# pair).
_EAGER_TENSORS_PER_PAIR = 20


def set_memory_budget(nbytes: int) -> int:
    """Set the memory budget (bytes) for the intermediates of convolutional kernels; returns
    the previous one. Default 1 GiB, or the environment variable NTKIT_MEMORY_BUDGET."""
    if int(nbytes) < 1:
        raise ValueError(f"memory budget must be a positive number of bytes, got {nbytes!r}")
    old = _budget[0]
    _budget[0] = int(nbytes)
    return old


def memory_budget() -> int:
    return _budget[0]


# -- hooks used by the core state / layers ----------------------------------------------------
def broadcast_spatial_vars(state: KernelState) -> Tuple[torch.Tensor, torch.Tensor]:
    """var1/var2 (…, H, W) shaped to broadcast against ``cov`` entry by entry."""
    v1, v2 = state.var1, state.var2
    if v1 is None or v2 is None:
        raise RuntimeError("per-position variances are missing after a pooling layer; compute "
                           "convolutional kernels through Sequential.kernel")
    if state.spatial == "diag":
        if state.layout == "paired":
            return v1, v2
        return v1[:, None], v2[None, :]
    if state.spatial == "full":
        if state.layout == "paired":
            return v1[:, :, :, None, None], v2[:, None, None, :, :]
        return v1[:, None, :, :, None, None], v2[None, :, None, None, :, :]
    raise ValueError(f"unknown spatial regime {state.spatial!r}")


def check_dense_after_spatial(state: KernelState) -> None:
    """Linear on an image-shaped state is a mistake: it needs Flatten or GlobalAvgPool2d."""
    raise ValueError("Linear after an image-shaped (N, C, H, W) layer: add Flatten() (or "
                     "GlobalAvgPool2d()) before the Linear layer")


# -- input states -----------------------------------------------------------------------------
def _pixel_var(x: torch.Tensor) -> torch.Tensor:
    return (x * x).mean(dim=1)


def dense_image_state(a: torch.Tensor, b: Optional[torch.Tensor], spatial: str) -> KernelState:
    """Input state of blocks a (n1, C, H, W) x b (n2, C, H, W) (b=None: a with itself)."""
    c = a.shape[1]
    other = a if b is None else b
    eq = "achw,bchw->abhw" if spatial == "diag" else "achw,bcxy->abhwxy"
    cov = torch.einsum(eq, a, other).div_(c)
    var1 = _pixel_var(a)
    var2 = var1 if b is None else _pixel_var(b)
    return KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=c, spatial=spatial,
                       symmetric=b is None)


def paired_image_state(a: torch.Tensor, b: torch.Tensor, spatial: str,
                       same: bool = False, lazy: bool = False) -> KernelState:
    """Input state of m pairs (a[k], b[k]); ``same`` marks pairs of an input with itself.
    ``lazy`` (pixel pairs only): leave cov to ``materialize_input`` (or to the fused path)."""
    c = a.shape[1]
    var1 = _pixel_var(a)
    var2 = var1 if same else _pixel_var(b)
    if lazy and spatial == "full":
        return KernelState(cov=None, var1=var1, var2=var2, ntk=None, width=c, spatial=spatial,
                           layout="paired", images=(a, b))
    eq = "kchw,kchw->khw" if spatial == "diag" else "kchw,kcxy->khwxy"
    cov = torch.einsum(eq, a, b).div_(c)
    return KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=c, spatial=spatial,
                       layout="paired")


def materialize_input(state: KernelState) -> KernelState:
    """The covariance of a lazy pixel-pair input state: Σ⁰[k, p, p'] = (1/C) Σ_c a_kc[p] b_kc[p']."""
    if state.cov is not None:
        return state
    a, b = state.images
    cov = torch.einsum("kchw,kcxy->khwxy", a, b).div_(a.shape[1])
    return state.replace(cov=cov, images=None)


# -- validation -------------------------------------------------------------------------------
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


def _split_readout(layers) -> int:
    from .pooling import Flatten, GlobalAvgPool2d
    for k, layer in enumerate(layers):
        if isinstance(layer, (Flatten, GlobalAvgPool2d)) or getattr(layer, "is_readout", False):
            return k
    raise ValueError("the architecture ends with an image-shaped output: add Flatten() or "
                     "GlobalAvgPool2d() (and usually a Linear readout) to get a kernel")


# -- the driver -------------------------------------------------------------------------------
def spatial_kernel(seq, t1: torch.Tensor, t2: Optional[torch.Tensor], want_ntk: bool,
                   batch_size: Optional[int]):
    """NNGP and NTK (n1, n2) of ``seq`` on NCHW images; see the module doc.

    ``batch_size``: rows and columns of each block in the same-position regime, pairs per
    chunk in the pixel-pair regime; by default both follow the memory budget
    (``set_memory_budget``, 1 GiB unless NTKIT_MEMORY_BUDGET says otherwise).
    """
    from .pooling import AvgPool2d, GlobalAvgPool2d
    check_images(t1, "x1")
    if t2 is not None:
        check_images(t2, "x2")
    seq.out_shape(tuple(t1.shape[1:]))  # validates the chain (Flatten before Linear, sizes)
    layers = list(seq.layers)
    r = _split_readout(layers)
    pool_at = [k for k, l in enumerate(layers[:r + 1]) if isinstance(l, (AvgPool2d, GlobalAvgPool2d)) or getattr(l, "needs_pixel_pairs", False)]
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    from .conv_fused import reuse_buffers
    with reuse_buffers():
        if not pool_at:
            return _diag_kernel(layers, t1, t2, want_ntk, batch_size)
        return _full_kernel(layers, pool_at, t1, t2, want_ntk, batch_size)


def _run(layers, state: KernelState, hook=None) -> KernelState:
    """Apply the layers (a fused prefix in one pass per layer when there is one; a
    GlobalAvgPool2d right after it is folded into that pass); ``hook(k, state)`` runs after
    layer k."""
    from .conv_fused import fused_prefix
    from .pooling import GlobalAvgPool2d
    k = 0
    n_fused, fused = fused_prefix(layers, state)
    if n_fused:
        gap = (state.spatial == "full" and n_fused < len(layers)
               and type(layers[n_fused]) is GlobalAvgPool2d)
        state = fused(state, gap)
        k = n_fused
        if gap:
            if hook is not None:
                state = hook(k, state)
            k += 1
    else:
        state = materialize_input(state)
    while k < len(layers):
        state = layers[k].apply(state)
        if hook is not None:
            state = hook(k, state)
        k += 1
    return state


def _diag_kernel(layers, x1, x2, want_ntk, batch_size):
    n1 = x1.shape[0]
    other = x1 if x2 is None else x2
    n2 = other.shape[0]
    h, w = x1.shape[-2:]
    if batch_size:
        block = int(batch_size)
    else:
        per_pair = h * w * x1.element_size() * _EAGER_TENSORS_PER_PAIR
        block = max(1, min(1024, int(math.sqrt(memory_budget() / per_pair))))
    nngp = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device)
    ntk = torch.zeros(n1, n2, dtype=x1.dtype, device=x1.device) if want_ntk else None
    for i0 in range(0, n1, block):
        i1 = min(i0 + block, n1)
        for j0 in range(i0 if x2 is None else 0, n2, block):
            j1 = min(j0 + block, n2)
            diag = x2 is None and i0 == j0
            state = dense_image_state(x1[i0:i1], None if diag else other[j0:j1], "diag")
            state.track_ntk = want_ntk
            out = _run(layers, state)
            nngp[i0:i1, j0:j1] = out.cov
            if want_ntk and out.ntk is not None:
                ntk[i0:i1, j0:j1] = out.ntk
            if x2 is None and not diag:
                nngp[j0:j1, i0:i1] = out.cov.T
                if want_ntk and out.ntk is not None:
                    ntk[j0:j1, i0:i1] = out.ntk.T
    return nngp, ntk


def _pairs_per_chunk(x: torch.Tensor, batch_size: Optional[int]) -> int:
    if batch_size:
        return int(batch_size)
    h, w = x.shape[-2:]
    per_pair = (h * w) ** 2 * x.element_size() * _EAGER_TENSORS_PER_PAIR
    return max(1, int(memory_budget() // per_pair))


def _self_pass(layers, pool_at, x, want_ntk, m):
    """Each input against itself: per-input variances after each pooling layer (the tape) and
    the kernel's diagonal entries."""
    from .conv_ops import full_diagonal
    n = x.shape[0]
    tape: Dict[int, List[torch.Tensor]] = {k: [] for k in pool_at}
    diag_nngp, diag_ntk = [], []
    for s in range(0, n, m):
        a = x[s:s + m]

        def hook(k, st):
            if k in tape:
                v = full_diagonal(st.cov) if st.spatial == "full" else st.cov.clone()
                tape[k].append(v.clone())  # later layers update var in place
                st = st.replace(var1=v, var2=v)
            return st

        state = paired_image_state(a, a, "full", same=True, lazy=True)
        state.track_ntk = want_ntk
        out = _run(layers, state, hook)
        diag_nngp.append(out.cov)
        if want_ntk and out.ntk is not None:
            diag_ntk.append(out.ntk)
    tapes = {k: torch.cat(v) for k, v in tape.items()}
    return tapes, torch.cat(diag_nngp), (torch.cat(diag_ntk) if diag_ntk else None)


def _full_kernel(layers, pool_at, x1, x2, want_ntk, batch_size):
    n1 = x1.shape[0]
    other = x1 if x2 is None else x2
    n2 = other.shape[0]
    m = _pairs_per_chunk(x1, batch_size)
    dev = x1.device
    nngp = torch.empty(n1, n2, dtype=x1.dtype, device=dev)
    ntk = torch.zeros(n1, n2, dtype=x1.dtype, device=dev) if want_ntk else None
    tape1, d_nngp, d_ntk = _self_pass(layers, pool_at, x1, want_ntk and x2 is None, m)
    if x2 is None:
        idx = torch.arange(n1, device=dev)
        nngp[idx, idx] = d_nngp
        if want_ntk and d_ntk is not None:
            ntk[idx, idx] = d_ntk
        ii, jj = torch.triu_indices(n1, n1, offset=1, device=dev)
        tape2 = tape1
    else:
        tape2 = _self_pass(layers, pool_at, x2, False, m)[0]
        ii = torch.arange(n1, device=dev).repeat_interleave(n2)
        jj = torch.arange(n2, device=dev).repeat(n1)
    for s in range(0, ii.numel(), m):
        i, j = ii[s:s + m], jj[s:s + m]

        def hook(k, st, i=i, j=j):
            if k in tape1:
                st = st.replace(var1=tape1[k][i], var2=tape2[k][j])
            return st

        state = paired_image_state(x1[i], other[j], "full", lazy=True)
        state.track_ntk = want_ntk
        out = _run(layers, state, hook)
        nngp[i, j] = out.cov
        if x2 is None:
            nngp[j, i] = out.cov
        if want_ntk and out.ntk is not None:
            ntk[i, j] = out.ntk
            if x2 is None:
                ntk[j, i] = out.ntk
    return nngp, ntk
