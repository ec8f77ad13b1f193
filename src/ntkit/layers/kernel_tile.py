"""One tile of an architecture's NNGP/NTK matrices: the tile function of the kernel engine.

``kernel_tile(arch, a, b, options, want_ntk=...)`` maps the tile's rows of x1 (``a``) and columns
of x2 (``b``, None for a diagonal tile of x1 against itself) to {"nngp": (ra, rb), "ntk":
(ra, rb)}. It depends on nothing but its arguments. The regime follows from what the layers
declare, never from their classes:

* flat inputs (n, d): a dense state of the tile; for architectures with a layer that is not
  smooth at equal inputs (``nonsmooth``: the ReLU family), pairs whose input correlation
  exceeds 1 - tol are recomputed on the precise float64 path that carries E[(u - v)²];
* images, no layer before the readout ``needs_pixel_pairs``: same-position covariances
  (O(H·W) per pair and layer), a dense state of the tile;
* images otherwise: pixel pairs (O((H·W)²) per pair and layer): a paired state of the tile's
  entries plus each input's pair with itself (which pooling reads its variances from, and
  which gives the diagonal of a diagonal tile).

The readout is the first layer whose output is flat (``out_shape`` of rank 1). Leading
[Conv2d, ReLU-family] chains run as one fused pass per layer (``conv_fused``), a
GlobalAvgPool2d right after them folded into the last pass. Pixel pairs on the CPU with the
native kernel: when a longer prefix qualifies (pooling, strided convolutions, residual blocks:
Myrtle, WideResNet), it runs pair by pair in native passes instead (``pair_program``), and
the tile keeps only each pair's output.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from .._inputs import as_input_pair
from ..engine.options import KernelOptions
from ..engine.run import compute_tiles
from . import conv_native
from ..engine.scale import (SCALE_KEY, in_true_units, safe_log2_bounds, scale_key,
                            variance_log2_range)
from .base import apply_chain
from .conv_fused import (folds_gap, fused_length, reuse_buffers, run_fused,
                         writes_input_in_place)
from .near_pairs import apply_precise, initial_differences
from .pair_program import program_for, run_program
from .image_state import (check_images, materialize, pixel_pair_plan, pixel_pair_state,
                          pixel_variances, precise_image_state, same_position_state)
from .state import KernelState, paired_input_state

# Pairs whose input correlation exceeds 1 - tol are recomputed on the precise (distance-carrying)
# float64 path: there the arccos of the correlation would lose digits (see ntkit.layers.relu).
NEAR_TOL = {torch.float32: 1e-2, torch.float64: 1e-5}
FLAT_TILE = 512
# Full-size tensors per pair that may be live at once on the layer-by-layer path (cov, ntk,
# padded copies, activation temporaries, allocator slack): measured peak growth ~19 per pair
# (tests/test_conv_memory.py).
EAGER_TENSORS_PER_PAIR = 20
# the fused prefix's outputs (Σ, Θ) and a stored input covariance, per pair
FUSED_TENSORS_PER_PAIR = 4
# padded single-pair buffers live at once in a pair_program (input, S and T of a branch and of
# a running residual sum, intermediates): a fixed cost of a tile
PROGRAM_BUFFERS = 10
# sub-block side of a same-position tile on CPU (``_same_position_tile``): a diagonal block
# computes both triangles, so smaller blocks do less work, until the per-block overhead wins;
# and a block's (r, r, H+2, W+2) buffers stay cache- and allocator-friendly (below glibc's
# 32 MiB mmap threshold: no fresh pages per call). Depth-5 vanilla CNTK of 32 x 32 images,
# n = 256, quiet 2 cores: blocks of 32 took 900 ms in float64 and 470 ms in float32, one
# 256-block 1428 and 854 ms, blocks of 24, 40 and 64 in between
SAME_POSITION_BLOCK = 32
# largest tile side for pixel pairs when the fused pass reduces them to scalars (GAP readout)
PIXEL_PAIR_TILE_MAX = 64


def readout_index(layers: Sequence, in_shape: Tuple[int, ...]) -> int:
    """Index of the first layer with a flat output (the readout), from the shapes alone."""
    shape = tuple(in_shape)
    for k, layer in enumerate(layers):
        shape = layer.out_shape(shape)
        if len(shape) == 1:
            return k
    raise ValueError("the architecture ends with an image-shaped output: add Flatten() or "
                     "GlobalAvgPool2d() (and usually a Linear readout) to get a kernel")


def regime(arch, in_shape: Tuple[int, ...]) -> str:
    """"flat", "same_position" or "pixel_pairs" for inputs of per-example shape ``in_shape``."""
    if len(in_shape) == 1:
        return "flat"
    layers = list(arch.layers)
    r = readout_index(layers, in_shape)
    if any(getattr(layer, "needs_pixel_pairs", False) for layer in layers[:r + 1]):
        return "pixel_pairs"
    return "same_position"


def run_layers(layers: Sequence, state: KernelState, options: KernelOptions) -> KernelState:
    """Apply ``layers`` to an input state: a qualifying leading chain fused (a [Conv2d, ReLU]
    chain by ``conv_fused``, or, for pixel pairs, a longer prefix with pooling and residual
    blocks by ``pair_program``), the rest one by one."""
    k = _within_range(layers, state, fused_length(layers, state, options))
    gap = folds_gap(layers, k, state) if k else False
    prog = program_for(layers, state, options)
    if prog is not None and prog.n_layers > k + (1 if gap else 0):
        state = run_program(prog, state)
        return apply_chain(layers[prog.n_layers:], state.renormalized(), first=prog.n_layers)
    if k:
        state = run_fused(layers[:k], state, options, gap)
        k += 1 if gap else 0
    else:
        state = materialize(state)
    return apply_chain(layers[k:], state.renormalized(), first=k)


def _within_range(layers: Sequence, state: KernelState, n_fused: int) -> int:
    """The longest prefix (whole [Conv2d, ABReLU] pairs, at most ``n_fused`` layers) whose
    values provably stay within the dtype's normal range, 2**20 of headroom each way: the
    fused pass carries no scale (``KernelState.log2_scale``); the layers after it do.

    Per pair, v' = h (W² C(v) + b²) with h = (a²+b²)/2, so log2 max(v, 1) grows by at most
    max(0, log2 h(W² + b²)) and log2 min v (positive entries) falls by at most log2 h W² (a
    bias keeps it above h b²)."""
    if not n_fused:
        return 0
    dtype = state.images[0].dtype if state.cov is None else state.cov.dtype
    bottom, top = safe_log2_bounds(dtype)
    span = variance_log2_range(state.var1, state.var2)
    if span is None:
        return n_fused
    hi, lo = span
    for n in range(0, n_fused, 2):
        conv, act = layers[n], layers[n + 1]
        h = act._coefs[0]
        w2, b2 = conv.W_std ** 2, (conv.b_std or 0.0) ** 2
        if h == 0.0 or w2 + b2 == 0.0:  # exact zeros from here on
            return n_fused
        hi += max(0.0, math.log2(h * (w2 + b2)))
        low_w = math.log2(h * w2) + lo if w2 > 0 else -math.inf
        lo = max(low_w, math.log2(h * b2) if b2 > 0 else -math.inf)
        if hi > top or lo < bottom:
            return n
    return n_fused


def check_kernel_inputs(arch, x1, x2=None):
    """(x1, x2) as validated tensors for ``arch``'s kernel (``_inputs.as_input_pair``; NCHW for
    images), the layer chain checked against their shape (``out_shape``)."""
    t1, t2 = as_input_pair(x1, x2)
    if t1.ndim > 2:
        check_images(t1, "x1")
        if t2 is not None:
            check_images(t2, "x2")
    arch.out_shape(tuple(t1.shape[1:]))  # validates the layer chain
    return t1, t2


def tile_side(arch, x: torch.Tensor, options: KernelOptions) -> int:
    """Rows (= columns) of a tile: ``options.tile_size`` if set, else from the memory budget."""
    if options.tile_size:
        return int(options.tile_size)
    kind = regime(arch, tuple(x.shape[1:]))
    if kind == "flat":
        return FLAT_TILE
    h, w = x.shape[-2:]
    if kind == "same_position":
        per_pair = h * w * x.element_size() * EAGER_TENSORS_PER_PAIR
        return max(1, min(1024, int(math.sqrt(options.memory_budget / per_pair))))
    layers = list(arch.layers)
    own = torch.zeros(1, dtype=torch.int64, device=x.device)
    v = pixel_variances(x[:1])
    probe = KernelState(cov=None, var1=v, var2=v, ntk=None, width=x.shape[1],
                        layout="paired", spatial="full", images=(x[:1], x[:1]),
                        self_index1=own, self_index2=own)
    n_fused = fused_length(layers, probe, options)
    esize = x.element_size()
    fixed = 0
    prog = program_for(layers, probe, options)
    if prog is not None and prog.n_layers > n_fused + (1 if folds_gap(layers, n_fused, probe)
                                                       else 0):
        # the program (run pair by pair) keeps the inputs and its outputs per pair
        out = 1 if prog.flat else (prog.out_shape[1] * prog.out_shape[2]) ** 2
        per_pair = 4 * x[0].numel() * esize + 2 * out * esize
        shape = prog.out_shape
        for layer in layers[prog.n_layers:]:
            nxt = layer.out_shape(shape)
            if len(shape) == 3:
                entries_out = (nxt[1] * nxt[2]) ** 2 if len(nxt) == 3 else 1
                per_pair = max(per_pair, EAGER_TENSORS_PER_PAIR * entries_out * esize)
            shape = nxt
        cap = PIXEL_PAIR_TILE_MAX if out <= 16 else 1024
        # the program's own padded buffers, one pair each, at most PROGRAM_BUFFERS live
        fixed = PROGRAM_BUFFERS * ((h + 2 * prog.pad) * (w + 2 * prog.pad)) ** 2 * esize
    elif folds_gap(layers, n_fused, probe):  # pairs reduce to scalars: the inputs dominate
        per_pair = 4 * x[0].numel() * esize
        if not writes_input_in_place(x.device, x.dtype, options):
            per_pair += 2 * (h * w) ** 2 * esize  # the input covariance, stored
        cap = PIXEL_PAIR_TILE_MAX
    else:
        # the largest stage: the fused prefix keeps its outputs (Σ, Θ) and at most a stored
        # input at the input resolution; a later layer holds its inputs (Σ, Θ) and up to
        # EAGER_TENSORS_PER_PAIR tensors at its output resolution (pooling shrinks them)
        per_pair = FUSED_TENSORS_PER_PAIR * (h * w) ** 2 * esize if n_fused else 0
        shape = tuple(x.shape[1:])
        for k, layer in enumerate(layers):
            out = layer.out_shape(shape)
            if k >= n_fused and len(shape) == 3:
                entries_in = (shape[1] * shape[2]) ** 2
                entries_out = (out[1] * out[2]) ** 2 if len(out) == 3 else 1
                per_pair = max(per_pair, FUSED_TENSORS_PER_PAIR * entries_in * esize,
                               EAGER_TENSORS_PER_PAIR * entries_out * esize)
            shape = out
        cap = 1024
    pairs = max(1, (options.memory_budget - fixed) // per_pair)
    # r x r entries plus 2r pairs of inputs with themselves
    side = int(math.sqrt(pairs + 1)) - 1
    return max(1, min(cap, side))


def kernel_tile(arch, a: torch.Tensor, b: Optional[torch.Tensor], options: KernelOptions, *,
                want_ntk: bool = True, normalize: bool = False) -> Dict[str, torch.Tensor]:
    """{"nngp", "ntk"} (ra, rb) of ``arch`` on a (ra, ...) against b (rb, ...) (b=None: a
    against itself); see the module doc. The NTK is zeros when nothing is trainable.

    The layers carry a power-of-two scale (``KernelState.log2_scale``). ``normalize=False``:
    the tile in true units, OverflowError when they are not representable in the dtype.
    ``normalize=True``: the stored values and "log2_scale" (0-dim int64 tensor e): the true
    tile is 2**e times them (``ntkit.engine.compute_tiles`` assembles such tiles)."""
    with conv_native.allowed(options.native):
        return _kernel_tile(arch, a, b, options, want_ntk, normalize)


def _kernel_tile(arch, a, b, options, want_ntk, normalize):
    kind = regime(arch, tuple(a.shape[1:]))
    if kind == "flat":
        cov, ntk, scale = _flat_tile(arch, a, b, want_ntk)
    else:
        check_images(a, "x1")
        with reuse_buffers():
            if kind == "same_position":
                cov, ntk, scale = _same_position_tile(arch, a, b, want_ntk, options)
            else:
                cov, ntk, scale = _pixel_pair_tile(arch, a, b, want_ntk, options)
        if arch.nonsmooth:
            _refine_near_images(arch, a, b, cov, ntk, want_ntk, kind, options, scale)
    out = {"nngp": cov}
    if want_ntk:
        out["ntk"] = torch.zeros_like(cov) if ntk is None else ntk
    return _in_units(out, scale, normalize)


def _in_units(out: Dict[str, torch.Tensor], scale: Tuple[int, int], normalize: bool
              ) -> Dict[str, torch.Tensor]:
    """The tile's matrices checked finite, then in true units (``normalize=False``) or with
    their scales (``normalize=True``: "log2_scale" for the NNGP, "ntk/log2_scale" for the
    NTK, ``engine.run.scale_key``)."""
    for name, t in out.items():
        if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            raise OverflowError(
                f"the {name} kernel has non-finite values: an overflow inside a layer (a "
                f"layer's map exceeded the dtype's range before the state could be rescaled); "
                f"use smaller W_std/b_std or fewer layers")
    exps = {"nngp": scale[0], "ntk": scale[1]}
    if normalize:
        out[SCALE_KEY] = torch.tensor(int(scale[0]), dtype=torch.int64)
        if "ntk" in out:
            out[scale_key("ntk")] = torch.tensor(int(scale[1]), dtype=torch.int64)
        return out
    return {name: in_true_units(t, exps[name], name) for name, t in out.items()}


# -- flat inputs --------------------------------------------------------------------------------
def _flat_tile(arch, a, b, want_ntk):
    d = a.shape[1]
    same = b is None
    sa = a * (d ** -0.5)
    va = (sa * sa).sum(1)
    sb, vb = (sa, va) if same else (b * (d ** -0.5), None)
    if not same:
        vb = (sb * sb).sum(1)
    cov = sa @ sb.T
    near = None
    if arch.nonsmooth:
        tol = NEAR_TOL.get(a.dtype, 1e-2)
        r1 = torch.where(va > 0, torch.rsqrt(va), torch.zeros_like(va))
        r2 = r1 if same else torch.where(vb > 0, torch.rsqrt(vb), torch.zeros_like(vb))
        near = torch.mul(cov, r1[:, None]).mul_(r2[None, :]) > 1.0 - tol
        if same:
            near = torch.triu(near)
    var1 = va.clone()
    state = KernelState(cov=cov, var1=var1, var2=var1 if same else vb.clone(), ntk=None,
                        width=d, same_inputs=same, track_ntk=want_ntk)
    out = arch.apply(state)
    nngp, ntk = out.cov, out.ntk
    if want_ntk and ntk is None:
        ntk = torch.zeros_like(nngp)
    if near is not None:
        ii, jj = torch.nonzero(near, as_tuple=True)
        if ii.numel():
            _refine_pairs(arch, a, a if same else b, ii, jj, nngp, ntk if want_ntk else None,
                          same, va, _scales(out))
    return nngp, ntk, _scales(out)


def _scales(out: KernelState) -> Tuple[int, int]:
    """(NNGP exponent, NTK exponent) of a final state: the true kernels are 2**e times it."""
    return out.log2_scale, out.ntk_log2_scale


def _refine_pairs(arch, x1, x2, ii, jj, nngp, ntk, symmetric: bool, var1, scale) -> None:
    """Recompute the selected pairs on the precise path, in float64, and write them back at
    the tile's scales (``scale`` = (NNGP, NTK) exponents).

    A pair of an input with itself (the diagonal when x2 is x1) needs no input rows: its
    distance is exactly 0 and its covariance is the input's variance ``var1``.
    """
    self_pair = (ii == jj) if symmetric else torch.zeros_like(ii, dtype=torch.bool)
    if bool(self_pair.any()):
        idx = ii[self_pair]
        v = var1[idx].double()
        state = KernelState(cov=v.clone(), var1=v, var2=v, ntk=None, width=x1.shape[1],
                            dist=torch.zeros_like(v), layout="paired", same_inputs=True,
                            track_ntk=ntk is not None)
        _write_pairs(arch.apply(state), idx, idx, nngp, ntk, False, scale)
        ii, jj = ii[~self_pair], jj[~self_pair]
    chunk = 1 << 14
    for s in range(0, ii.numel(), chunk):
        i, j = ii[s:s + chunk], jj[s:s + chunk]
        state = paired_input_state(x1[i].double(), x2[j].double())
        state.track_ntk = ntk is not None
        _write_pairs(arch.apply(state), i, j, nngp, ntk, symmetric, scale)


def _write_pairs(out: KernelState, i, j, nngp, ntk, symmetric: bool, scale) -> None:
    """Write a precise-path state's pairs into the tile, converted to its scales (NNGP, NTK)."""
    out = out.at_scales(*scale)
    values = out.cov.to(nngp.dtype)
    nngp[i, j] = values
    if symmetric:
        nngp[j, i] = values
    if ntk is not None:
        t = torch.zeros_like(values) if out.ntk is None else out.ntk.to(ntk.dtype)
        ntk[i, j] = t
        if symmetric:
            ntk[j, i] = t


# -- images -------------------------------------------------------------------------------------
def _near_image_pairs(a: torch.Tensor, b: Optional[torch.Tensor]):
    """Entries (i, j) of a tile whose images are nearly equal: cosine of the flattened images
    above 1 - NEAR_TOL (strict upper triangle for a diagonal tile: the diagonal itself is an
    input with itself, exact on every path)."""
    fa = a.reshape(a.shape[0], -1)
    fb = fa if b is None else b.reshape(b.shape[0], -1)
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    ra = torch.where(na > 0, 1 / na, torch.zeros_like(na))
    rb = ra if b is None else torch.where(nb > 0, 1 / nb, torch.zeros_like(nb))
    near = (fa @ fb.T).mul_(ra[:, None]).mul_(rb[None, :]) > 1.0 - NEAR_TOL.get(a.dtype, 1e-2)
    if b is None:
        near = torch.triu(near, diagonal=1)
    return torch.nonzero(near, as_tuple=True)


def _refine_near_images(arch, a, b, cov, ntk, want_ntk, kind, options, scale) -> None:
    """Recompute the tile's entries of nearly equal images in float64, layer by layer, with
    the squared distances carried (``image_state.precise_image_state``; for pixel pairs also
    the difference covariances that pooling needs, ``near_pairs``), and write them back at
    the tile's scales ``scale`` = (NNGP, NTK) exponents."""
    ii, jj = _near_image_pairs(a, b)
    if not ii.numel():
        return
    other = a if b is None else b
    precise = options.replace(fused=False)
    chunk = 8
    for s in range(0, ii.numel(), chunk):
        i, j = ii[s:s + chunk], jj[s:s + chunk]
        k = i.numel()
        xa, xb = a[i].double(), other[j].double()
        state = precise_image_state(xa, xb, "diag" if kind == "same_position" else "full")
        state.track_ntk = want_ntk
        if kind == "same_position":
            out = run_layers(list(arch.layers), state, precise)
        else:  # pooling between nonlinearities: difference covariances carried
            out = apply_precise(list(arch.layers), state, *initial_differences(xa, xb))
        out = out.at_scales(*scale)
        first = 0 if kind == "same_position" else 2 * k
        cov[i, j] = out.cov[first:first + k].to(cov.dtype)
        if ntk is not None and out.ntk is not None:
            ntk[i, j] = out.ntk[first:first + k].to(ntk.dtype)
        if b is None:
            cov[j, i] = cov[i, j]
            if ntk is not None:
                ntk[j, i] = ntk[i, j]


def _same_position_tile(arch, a, b, want_ntk, options):
    """(cov, ntk or None, scales) of a same-position tile. On CPU a tile wider than
    ``SAME_POSITION_BLOCK`` is computed as blocks of that side through the engine
    (``compute_tiles``: on the diagonal the upper triangle only, mirrored; the blocks brought
    to a common scale); elsewhere as one block. Deterministic for a given tile."""
    rows = a.shape[0]
    cols = rows if b is None else b.shape[0]
    if a.device.type != "cpu" or max(rows, cols) <= SAME_POSITION_BLOCK:
        return _same_position_block(arch, a, b, want_ntk, options)

    def block(sa, sb, opts):
        cov, ntk, (e_cov, e_ntk) = _same_position_block(arch, sa, sb, want_ntk, opts)
        out = {"nngp": cov, SCALE_KEY: torch.tensor(e_cov, dtype=torch.int64)}
        if ntk is not None:
            out["ntk"] = ntk
            out[scale_key("ntk")] = torch.tensor(e_ntk, dtype=torch.int64)
        return out

    out = compute_tiles(block, a, b, _even_side(rows), _even_side(cols), options=options)
    e_cov = int(out[SCALE_KEY])
    ntk = out.get("ntk")
    e_ntk = int(out[scale_key("ntk")]) if ntk is not None else e_cov
    return out["nngp"], ntk, (e_cov, e_ntk)


def _even_side(n: int) -> int:
    """The side of ceil(n / SAME_POSITION_BLOCK) blocks of nearly equal size covering n (no
    small remainder block: 114 rows are 4 blocks of 29, not 3 of 32 and one of 18)."""
    count = -(-n // SAME_POSITION_BLOCK)
    return -(-n // count)


def _same_position_block(arch, a, b, want_ntk, options):
    state = same_position_state(a, b)
    state.track_ntk = want_ntk
    out = run_layers(list(arch.layers), state, options)
    return out.cov, out.ntk, _scales(out)


def _pixel_pair_tile(arch, a, b, want_ntk, options):
    na = a.shape[0]
    nb = None if b is None else b.shape[0]
    pool = a if b is None else torch.cat([a, b])
    left, right, s1, s2, ii, jj, first = pixel_pair_plan(na, nb, a.device)
    state = pixel_pair_state(pool, left, right, s1, s2)
    state.track_ntk = want_ntk
    out = run_layers(list(arch.layers), state, options)
    rows, cols = na, (na if nb is None else nb)
    nngp = out.cov.new_empty((rows, cols))
    ntk = None if out.ntk is None else out.ntk.new_empty((rows, cols))
    cross = slice(first, None)
    nngp[ii, jj] = out.cov[cross]
    if ntk is not None:
        ntk[ii, jj] = out.ntk[cross]
    if nb is None:  # the diagonal and the mirrored lower triangle
        idx = torch.arange(na, device=a.device)
        nngp[idx, idx] = out.cov[:na]
        nngp[jj, ii] = out.cov[cross]
        if ntk is not None:
            ntk[idx, idx] = out.ntk[:na]
            ntk[jj, ii] = out.ntk[cross]
    return nngp, ntk, _scales(out)
