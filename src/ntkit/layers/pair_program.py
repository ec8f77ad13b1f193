"""Pixel-pair states through convolutions, ReLUs, pooling and residual blocks, one pair at a
time: the native pass of whole image networks (Myrtle, WideResNet, CNTK with pooling).

A pixel-pair state holds, per pair of images (x, x'), Σ[p, p'] = E[z(x)_p z(x')_p'] (and Θ),
(H, W, H, W) per pair. Layer by layer, each layer is a few passes of torch over the whole
(m, H, W, H, W) block. Here the leading layers that qualify are compiled into a small program
(``compile_program``) that runs per pair on zero-bordered buffers (H+2P, W+2P, H+2P, W+2P) of
that pair alone, the layer maps being those of the layers themselves:

* Conv2d (stride 1, odd kernel, "same", NTK parameterization), with the ABReLU that follows
  it or alone: one pass of ``conv_native``'s C++ kernel (``conv_fused``'s module doc states the
  math); an ABReLU alone is the same pass with a 1x1 window;
* Conv2d with a stride, an even kernel or "valid" padding, and AvgPool2d ("same" or
  "valid"): ``conv_native.window_sums``, the strided window sums of ``conv_ops`` (a
  convolution's diagonal filter, pooling's box filter of each member) read from the buffer's
  zero border (no padding copies);
* GlobalAvgPool2d: the fixed-order mean (``fixed_sum``), which ends the program;
* ParallelSum / Residual whose branches are such layers (or the identity): the branches run
  on the same input buffers and their outputs add (``residual``'s module doc); a branch that
  ends with a stride-1 convolution adds the running sum inside that pass;
* LayerNorm: its own map (``LayerNorm.apply``) on the pair's state alone;
* the identity activation: nothing.

The ReLU-family map (and LayerNorm) needs each member's per-position variance at its input,
v[p] = Σ_xx[p, p]. The pairs of each input with itself (``KernelState.self_index1/2``) run
first; at every activation their pre-activation diagonal is read from the buffer (a
convolution followed by an activation then runs as the convolution alone, the diagonal read,
then the activation alone), so every later pair finds v for both of its members, after any
pooling. The output is the state after the covered layers: (m, h, w, h, w) pixel pairs with
their variances (``KernelState.own_covariances``), or flat after a GlobalAvgPool2d. A tile
thus keeps only each pair's inputs and outputs, so its tiles can be large and the pairs of
inputs with themselves a small share of its work (``kernel_tile.tile_side``).

Pairs run in parallel, one per worker thread (``run_program``); every value is computed by
one thread in a fixed order, so the bits do not depend on the thread count.

The program runs in the stored units of its input (no ``log2_scale`` of its own): it is used
only when a bound on the variances (``_in_range``) keeps them 2**20 inside the dtype's normal
range; otherwise, and when the native kernel is unavailable, the layers run one by one (the
torch implementation), with the same results to rounding.
"""
from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..engine.options import KernelOptions
from ..engine.scale import safe_log2_bounds, variance_log2_range
from . import conv_native, relu_map
from .conv_ops import full_diagonal, pad_amounts
from .fixed_sum import fixed_order_mean
from .state import KernelState


@dataclass
class Op:
    """One step of a program: ``kind`` in conv, conv_relu, relu, pool, gap, sum, map;
    ``layer`` (conv, pool, LayerNorm), ``act`` (ABReLU), ``stage`` (the activation's index in the variance table),
    ``branches`` (sum: one op list per branch, [] for the identity), ``hw`` the input
    resolution and ``out_hw`` the output one."""
    kind: str
    hw: Tuple[int, int]
    out_hw: Tuple[int, int]
    layer: object = None
    act: object = None
    stage: int = -1
    branches: List[List["Op"]] = field(default_factory=list)


@dataclass
class Program:
    """``ops`` applied to the first ``n_layers`` layers; ``pad`` the buffers' border; ``flat``
    when it ends with GlobalAvgPool2d; ``out_shape`` the per-example shape after it."""
    ops: List[Op]
    n_layers: int
    pad: int
    stages: int
    flat: bool
    out_shape: Tuple[int, ...]


# -- compiling layers into ops ------------------------------------------------------------------
def _relu(layer) -> bool:
    from .relu import ABReLU
    return isinstance(layer, ABReLU) and type(layer).pair_moments is ABReLU.pair_moments


def _native_conv(layer) -> bool:
    from .conv import Conv2d
    return (isinstance(layer, Conv2d) and layer.stride == (1, 1) and layer.padding == "same"
            and layer.kernel_size[0] % 2 == 1 and layer.kernel_size[1] % 2 == 1
            and layer.parameterization == "ntk")


class _Compiler:
    def __init__(self):
        self.pad = 0
        self.stages = 0

    def _stage(self) -> int:
        self.stages += 1
        return self.stages - 1

    def _border(self, h: int, w: int, kernel, stride, padding) -> Optional[Tuple[int, int]]:
        """Output size of a window op, the border it needs noted; None if it is not covered."""
        if padding not in ("same", "valid"):
            return None
        oh, lo_h, hi_h = pad_amounts(h, kernel[0], stride[0], padding)
        ow, lo_w, hi_w = pad_amounts(w, kernel[1], stride[1], padding)
        self.pad = max(self.pad, lo_h, hi_h, lo_w, hi_w)
        return oh, ow

    def layers(self, layers: Sequence, shape: Tuple[int, ...]
               ) -> Tuple[List[Op], int, Tuple[int, ...], bool]:
        """(ops, how many leading layers they cover, the shape after them, whether they end
        flat) for per-example input shape ``shape``."""
        from .conv import Conv2d
        from .normalization import LayerNorm
        from .pooling import AvgPool2d, GlobalAvgPool2d
        from .residual import ParallelSum
        from .sequential import Sequential
        from .smooth import Identity
        ops: List[Op] = []
        n = 0
        while n < len(layers) and len(shape) == 3:
            layer = layers[n]
            c, h, w = shape
            nxt = layers[n + 1] if n + 1 < len(layers) else None
            used = 1
            if _native_conv(layer):
                self.pad = max(self.pad, (layer.kernel_size[0] - 1) // 2,
                               (layer.kernel_size[1] - 1) // 2)
                if nxt is not None and _relu(nxt):
                    ops.append(Op("conv_relu", (h, w), (h, w), layer, nxt, self._stage()))
                    used = 2
                else:
                    ops.append(Op("conv", (h, w), (h, w), layer))
            elif isinstance(layer, Conv2d) and layer.parameterization == "ntk":
                out = self._border(h, w, layer.kernel_size, layer.stride, layer.padding)
                if out is None:
                    break
                ops.append(Op("conv", (h, w), out, layer))
            elif _relu(layer):
                ops.append(Op("relu", (h, w), (h, w), act=layer, stage=self._stage()))
            elif type(layer) is Identity:
                pass
            elif type(layer) is LayerNorm:
                ops.append(Op("map", (h, w), (h, w), layer, stage=self._stage()))
            elif type(layer) is AvgPool2d:
                out = self._border(h, w, layer.kernel_size, layer.stride, layer.padding)
                if out is None:
                    break
                ops.append(Op("pool", (h, w), out, layer))
            elif type(layer) is GlobalAvgPool2d:
                ops.append(Op("gap", (h, w), (1, 1)))
                return ops, n + 1, (c,), True
            elif isinstance(layer, ParallelSum):
                branches: Optional[List[List[Op]]] = []
                for b in layer.branches:
                    if b is None:
                        branches.append([])
                        continue
                    inner = b.layers if isinstance(b, Sequential) else [b]
                    sub, k, _, flat = self.layers(inner, shape)
                    if k < len(inner) or flat:
                        branches = None
                        break
                    branches.append(sub)
                if branches is None:
                    break
                ops.append(Op("sum", (h, w), tuple(layer.out_shape(shape)[1:]),
                              branches=branches))
            else:
                break
            for done in layers[n:n + used]:
                shape = tuple(done.out_shape(shape))
            n += used
        return ops, n, shape, False


def compile_program(layers: Sequence, in_shape: Tuple[int, ...]) -> Optional[Program]:
    """The program of the longest qualifying prefix of ``layers`` for per-example image shape
    ``in_shape`` (C, H, W), or None when not even one layer qualifies (module doc)."""
    comp = _Compiler()
    ops, n, shape, flat = comp.layers(list(layers), tuple(in_shape))
    if not n:
        return None
    return Program(ops, n, comp.pad, comp.stages, flat, shape)


# -- the range check ----------------------------------------------------------------------------
def _bound(ops: List[Op], hi: float, lo: float) -> Tuple[float, float, bool]:
    """Bounds on log2 of the largest and of the smallest positive variance after ``ops``
    (v' = W² C(v) + b² for a convolution, (a²+b²)/2 v for an activation, sums of branches add;
    pooling is taken not to shrink the smallest variance: an average of positions is as large
    as its terms but for anticorrelated pixels), and whether they stay finite."""
    for op in ops:
        if op.kind in ("conv", "conv_relu"):
            w2 = op.layer.W_std ** 2
            b2 = (op.layer.b_std or 0.0) ** 2
            if w2 + b2 == 0.0:
                return hi, lo, False
            hi += max(0.0, math.log2(w2 + b2))
            lo = max(math.log2(w2) + lo if w2 > 0 else -math.inf,
                     math.log2(b2) if b2 > 0 else -math.inf)
        if op.kind in ("relu", "conv_relu"):
            h = op.act._coefs[0]
            if h == 0.0:
                return hi, lo, False
            hi += max(0.0, math.log2(h))
            lo += math.log2(h)
        if op.kind == "map":  # LayerNorm: v' = v / (eps + v), in (0, 1], increasing in v
            eps = op.layer.eps
            hi = 0.0
            lo = 0.0 if eps == 0.0 else min(0.0, lo - math.log2(eps + 2.0 ** max(lo, -1074)))
        if op.kind == "sum":
            his, los = [], []
            for branch in op.branches:
                bh, bl, ok = _bound(branch, hi, lo)
                if not ok:
                    return hi, lo, False
                his.append(bh)
                los.append(bl)
            hi = max(his) + math.log2(len(his))
            lo = max(los)
    return hi, lo, True


def _in_range(prog: Program, state: KernelState, dtype: torch.dtype) -> bool:
    span = variance_log2_range(state.var1, state.var2)
    if span is None:
        return False
    hi, lo, ok = _bound(prog.ops, *span)
    bottom, top = safe_log2_bounds(dtype)
    return ok and hi <= top and lo >= bottom


def program_for(layers: Sequence, state: KernelState, options: KernelOptions
                ) -> Optional[Program]:
    """The program to run on this input state, or None: a paired pixel-pair CPU state of
    float32/float64 with its self pairs, fused and native passes allowed and available, and
    values that stay in range (module doc)."""
    if (not options.fused or not options.native or state.spatial != "full"
            or state.layout != "paired" or state.ntk is not None or state.dist is not None
            or state.self_index1 is None or state.self_index2 is None):
        return None
    ref = state.cov if state.cov is not None else state.images[0]
    if ref.device.type != "cpu" or ref.dtype not in (torch.float32, torch.float64):
        return None
    if not conv_native.available():
        return None
    h, w = state.var1.shape[-2:]
    in_shape = (state.width, int(h), int(w))
    prog = compile_program(layers, in_shape)
    if prog is None or not _in_range(prog, state, ref.dtype):
        return None
    return prog


# -- running one pair ---------------------------------------------------------------------------
class _Buffers:
    """Zero-bordered (H+2P, W+2P, H+2P, W+2P) buffers per resolution, reused: only their
    interiors are ever written, so their borders stay zero."""

    def __init__(self, like: torch.Tensor, pad: int):
        self.like, self.pad = like, pad
        self.free: Dict[Tuple[int, int], List[torch.Tensor]] = {}

    def get(self, hw: Tuple[int, int]) -> torch.Tensor:
        stack = self.free.get(hw)
        if stack:
            return stack.pop()
        h, w = hw
        p = self.pad
        return self.like.new_zeros((h + 2 * p, w + 2 * p, h + 2 * p, w + 2 * p))

    def put(self, buf: Optional[torch.Tensor]) -> None:
        if buf is not None:
            h, w = buf.shape[0] - 2 * self.pad, buf.shape[1] - 2 * self.pad
            self.free.setdefault((h, w), []).append(buf)

    def interior(self, buf: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        p = self.pad
        h, w = hw
        return buf[p:p + h, p:p + w, p:p + h, p:p + w]

    def diagonal(self, buf: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """buf's interior entries [i, j, i, j], (H, W) (a view)."""
        s = buf.stride()
        return buf.as_strided(hw, (s[0] + s[2], s[1] + s[3]),
                              buf.storage_offset() + self.pad * sum(s))


def _stage_sizes(ops: List[Op], out: Dict[int, Tuple[int, int]]) -> Dict[int, Tuple[int, int]]:
    for op in ops:
        if op.stage >= 0:
            out[op.stage] = op.hw
        for branch in op.branches:
            _stage_sizes(branch, out)
    return out


def _has_ntk(ops: List[Op]) -> bool:
    """Whether the output carries an NTK when the input does not: once a trainable
    convolution has started one, every op keeps it (a sum keeps any branch's)."""
    return any((op.kind in ("conv", "conv_relu") and op.layer.trainable)
               or any(_has_ntk(b) for b in op.branches) for op in ops)


class _Runner:
    """Runs a program's ops on the buffers of one pair at a time (see the module doc). The
    tables of the self pairs' variances are shared by the runners of one program run (one
    runner per worker thread; each row is written by the runner of its self pair)."""

    def __init__(self, prog: Program, like: torch.Tensor, track: bool, tables,
                 log2_scale: int = 0):
        self.prog = prog
        self.log2_scale = log2_scale
        self.bufs = _Buffers(like, prog.pad)
        self.track = track
        # per activation: v, r = 1/sqrt(v), g = sqrt(v) of each self pair's row, (rows, H, W)
        self.v, self.r, self.g = tables

    @staticmethod
    def tables(prog: Program, like: torch.Tensor, rows: int):
        sizes = _stage_sizes(prog.ops, {})
        return tuple([like.new_zeros((rows,) + tuple(sizes[i])) for i in range(prog.stages)]
                     for _ in range(3))

    # the factors of pair k's members at an activation; a self pair records its own first
    def _factors(self, op: Op, s_pre: torch.Tensor, k: int, i1: int, i2: int, is_self: bool):
        if is_self:
            v = self.bufs.diagonal(s_pre, op.hw).contiguous()
            r, g = relu_map.rank_one_factors(v)
            self.r[op.stage][k] = r
            self.g[op.stage][k] = g
            self.v[op.stage][k] = v
        r1, g1 = self.r[op.stage][i1:i1 + 1], self.g[op.stage][i1:i1 + 1]
        r2, g2 = self.r[op.stage][i2:i2 + 1], self.g[op.stage][i2:i2 + 1]
        return r1, r2, g1, g2

    def _native(self, s, t, kh: int, kw: int, hw, w2: float, b2: float, trains: bool, act,
                factors, add=None):
        """One native pass: the conv (kh x kw window, W_std² = w2, bias b2) and, with ``act``,
        the ReLU-family map, or (``add`` = (s_add, t_add)) plus those buffers; new output
        buffers (s', t')."""
        writes_t = t is not None or trains
        os_ = self.bufs.get(hw)
        ot = self.bufs.get(hw) if writes_t else None
        if act is None:
            ones = s.new_ones((1,) + tuple(hw))
            factors = (ones, ones, ones, ones)
            half_sum, diff2, on = 1.0, 0.0, (0.0 if add is None else 2.0)
        else:
            half_sum, diff2 = act._coefs
            on = 1.0
        r1, r2, g1, g2 = factors
        p = self.bufs.pad
        geom = (conv_native.REGIME_FULL, 1, 0, hw[0], hw[1], kh, kw, p, p)
        consts = (w2 / (kh * kw), b2, float(half_sum), float(diff2) / (2 * math.pi),
                  float(trains), on)
        if add is not None:
            add = (add[0][None], None if ot is None else add[1][None])
        conv_native.conv_relu_step(s[None], None if t is None else t[None], os_[None],
                                   None if ot is None else ot[None], r1, r2, g1, g2, geom,
                                   consts, add=add)
        return os_, ot

    def _release(self, *bufs, keep=()) -> None:
        for b in bufs:
            if b is not None and not any(b is k for k in keep):
                self.bufs.put(b)

    def run(self, ops: List[Op], s, t, k: int, i1: int, i2: int, is_self: bool):
        """Apply ``ops`` to (s, t) (borrowed: never written nor released); returns new
        buffers, or (s, t) themselves when ``ops`` is empty."""
        cur_s, cur_t, owned = s, t, False
        for op in ops:
            new_s, new_t = self._op(op, cur_s, cur_t, k, i1, i2, is_self)
            if owned:
                self._release(cur_s, cur_t, keep=(new_s, new_t))
            cur_s, cur_t, owned = new_s, new_t, True
        return cur_s, cur_t

    def _op(self, op: Op, s, t, k, i1, i2, is_self):
        if op.kind == "relu" or (op.kind == "conv_relu" and is_self):
            if op.kind == "conv_relu":  # the convolution alone, then its diagonal
                pre_s, pre_t = self._conv(op, s, t)
            else:
                pre_s, pre_t = s, t
            factors = self._factors(op, pre_s, k, i1, i2, is_self)
            out = self._native(pre_s, pre_t, 1, 1, op.hw, 1.0, 0.0, False, op.act, factors)
            if op.kind == "conv_relu":
                self._release(pre_s, pre_t)
            return out
        if op.kind == "conv_relu":
            conv = op.layer
            factors = self._factors(op, None, k, i1, i2, False)
            return self._native(s, t, *conv.kernel_size, op.hw, conv.W_std ** 2,
                                (conv.b_std or 0.0) ** 2, conv.trainable and self.track,
                                op.act, factors)
        if op.kind == "conv":
            return self._conv(op, s, t)
        if op.kind == "map":
            return self._map(op, s, t, k, i1, i2, is_self)
        if op.kind == "pool":
            return self._pool(op, s, t)
        if op.kind == "gap":
            return self._gap(op, s, t)
        return self._sum(op, s, t, k, i1, i2, is_self)

    def _conv(self, op: Op, s, t, add=None):
        """A convolution; ``add`` = (s, t) buffers to add to its outputs (stride 1 only)."""
        conv = op.layer
        w2, b2 = conv.W_std ** 2, (conv.b_std or 0.0) ** 2
        trains = conv.trainable and self.track
        if _native_conv(conv):
            return self._native(s, t, *conv.kernel_size, op.hw, w2, b2, trains, None, None,
                                add)
        # strided or "valid": the native strided window sums
        os_ = self._windows(op, s, conv.kernel_size, conv.stride, conv.padding, False, w2, b2)
        ot = None
        if t is not None or trains:
            ot = self._windows(op, t, conv.kernel_size, conv.stride, conv.padding, False, w2,
                               0.0) if t is not None else self.bufs.get(op.out_hw)
            t_new = self.bufs.interior(ot, op.out_hw)
            if t is None:
                t_new.copy_(self.bufs.interior(os_, op.out_hw))
            elif trains:
                t_new.add_(self.bufs.interior(os_, op.out_hw))
        return os_, ot

    def _map(self, op: Op, s, t, k, i1, i2, is_self):
        """A layer's own map (LayerNorm) on the paired state of this pair alone, the members'
        variances from their self pairs; in the program's units (``log2_scale``)."""
        self._factors(op, s, k, i1, i2, is_self)
        v = self.v[op.stage]
        interior = self.bufs.interior
        state = KernelState(
            cov=interior(s, op.hw)[None].clone(), var1=v[i1:i1 + 1].clone(),
            var2=v[i2:i2 + 1].clone(), ntk=None if t is None else interior(t, op.hw)[None].clone(),
            width=1, layout="paired", spatial="full", track_ntk=self.track,
            log2_scale=self.log2_scale)
        out = op.layer.apply(state).at_scale(self.log2_scale)
        os_ = self.bufs.get(op.out_hw)
        interior(os_, op.out_hw).copy_(out.cov[0])
        ot = None
        if out.ntk is not None:
            ot = self.bufs.get(op.out_hw)
            interior(ot, op.out_hw).copy_(out.ntk[0])
        return os_, ot

    def _windows(self, op: Op, src, kernel, stride, padding: str, box: bool, w2: float,
                 b2: float):
        """A new buffer at op.out_hw: ``conv_native.window_sums`` of src (conv_ops' maps)."""
        (kh, kw), (sh, sw) = kernel, stride
        h, w = op.hw
        low = (pad_amounts(h, kh, sh, padding)[1], pad_amounts(w, kw, sw, padding)[1])
        out = self.bufs.get(op.out_hw)
        scale = w2 / (kh * kw) ** (2 if box else 1)
        conv_native.window_sums(src, out, self.bufs.pad, kernel, stride, low, box, scale, b2)
        return out

    def _pool(self, op: Op, s, t):
        """AvgPool2d: the box filter of each member (``conv_ops.pool_map``)."""
        pool = op.layer
        args = (pool.kernel_size, pool.stride, pool.padding, True, 1.0, 0.0)
        return (self._windows(op, s, *args),
                None if t is None else self._windows(op, t, *args))

    def _gap(self, op: Op, s, t):
        """GlobalAvgPool2d: 0-dim tensors of the fixed-order means (``fixed_sum``)."""
        ms = fixed_order_mean(self.bufs.interior(s, op.hw)[None], 4)[0]
        mt = None if t is None else fixed_order_mean(self.bufs.interior(t, op.hw)[None], 4)[0]
        return ms, mt

    def _sum(self, op: Op, s, t, k, i1, i2, is_self):
        """ParallelSum: the branches on the same (borrowed) input, their outputs added. The
        running sum starts with the identity branch (the input itself, borrowed) if any; a
        branch ending with a stride-1 convolution adds the running sum inside that pass
        (``conv_native`` mode 2) instead of a separate addition."""
        acc = (s, t, False) if any(not b for b in op.branches) else None
        for branch in op.branches:
            if not branch:
                continue
            last = branch[-1]
            if acc is not None and last.kind == "conv" and _native_conv(last.layer):
                mid_s, mid_t = self.run(branch[:-1], s, t, k, i1, i2, is_self)
                writes_t = mid_t is not None or (last.layer.trainable and self.track)
                if writes_t == (acc[1] is not None):
                    out = self._conv(last, mid_s, mid_t, add=acc[:2])
                    if branch[:-1]:
                        self._release(mid_s, mid_t)
                    if acc[2]:
                        self._release(acc[0], acc[1])
                    acc = (out[0], out[1], True)
                    continue
                out = self._conv(last, mid_s, mid_t)
                if branch[:-1]:
                    self._release(mid_s, mid_t)
            else:
                out = self.run(branch, s, t, k, i1, i2, is_self)
            acc = out + (True,) if acc is None else self._add(acc, out)
        if not acc[2]:  # the identity alone
            acc_s = self.bufs.get(op.out_hw)
            acc_s.copy_(acc[0])
            acc_t = None
            if acc[1] is not None:
                acc_t = self.bufs.get(op.out_hw)
                acc_t.copy_(acc[1])
            return acc_s, acc_t
        return acc[0], acc[1]

    def _add(self, acc, out):
        """The running sum ``acc`` (s, t, owned) plus a branch's fresh output (s, t): whole
        buffers added (their zero borders stay zero); returns the new (s, t, True)."""
        a_s, a_t, owned = acc
        o_s, o_t = out
        if not owned:  # add the borrowed sum into the fresh output
            a_s, a_t, o_s, o_t = o_s, o_t, a_s, a_t
        a_s.add_(o_s)
        if o_t is not None:
            if a_t is None:
                a_t = self.bufs.get(tuple(x - 2 * self.bufs.pad for x in o_t.shape[:2]))
                a_t.copy_(o_t)
            else:
                a_t.add_(o_t)
        if owned:
            self._release(o_s, o_t)
        return a_s, a_t, True


def run_program(prog: Program, state: KernelState) -> KernelState:
    """Apply ``prog`` (from ``program_for``) to a paired pixel-pair state; see the module doc.

    Pairs run in parallel, one per worker thread (``torch.get_num_threads()`` of them, each
    native call then on one thread: no synchronization inside a pair), the self pairs first.
    Each pair's values are computed by one thread in a fixed order: the same bits for every
    thread count."""
    images = state.images if state.cov is None else None
    ref = state.cov if images is None else images[0]
    m = ref.shape[0]
    h, w = state.var1.shape[-2:]
    hw = (int(h), int(w))
    tables = _Runner.tables(prog, ref, m)
    self1, self2 = state.self_index1, state.self_index2
    rows = torch.arange(m, device=self1.device)
    is_self = (self1 == rows) & (self2 == rows)
    is_self_l = is_self.tolist()
    s1, s2 = self1.tolist(), self2.tolist()
    out_hw = (1, 1) if prog.flat else tuple(prog.out_shape[1:])
    out_cov = ref.new_empty((m,) if prog.flat else (m,) + out_hw + out_hw)
    out_ntk = torch.empty_like(out_cov) if state.track_ntk and _has_ntk(prog.ops) else None
    p = prog.pad

    def work(ks: List[int], cap: Optional[int]) -> None:
        runner = _Runner(prog, ref, state.track_ntk, tables, state.log2_scale)
        bufs = runner.bufs
        with conv_native.thread_cap(cap) if cap else contextlib.nullcontext():
            for k in ks:
                s_in = bufs.get(hw)
                if images is not None:
                    conv_native.pair_input(images[0][k].contiguous(),
                                           images[1][k].contiguous(), s_in, p, p)
                else:
                    bufs.interior(s_in, hw).copy_(state.cov[k])
                s_out, t_out = runner.run(prog.ops, s_in, None, k, s1[k], s2[k], is_self_l[k])
                out_cov[k] = s_out if prog.flat else bufs.interior(s_out, out_hw)
                if out_ntk is not None:
                    out_ntk[k] = t_out if prog.flat else bufs.interior(t_out, out_hw)
                if not prog.flat:
                    runner._release(s_out, t_out, keep=(s_in,))
                bufs.put(s_in)

    workers = max(1, torch.get_num_threads())
    for phase in (rows[is_self].tolist(), rows[~is_self].tolist()):
        n = min(workers, len(phase))
        if n <= 1:
            work(phase, None)
            continue
        with ThreadPoolExecutor(max_workers=n) as pool:
            for f in [pool.submit(work, phase[i::n], 1) for i in range(n)]:
                f.result()
    width = prog.out_shape[0]
    own1, own2 = state.own_covariances(out_cov)
    if prog.flat:
        var1 = own1.clone()
        var2 = var1 if state.same_inputs else own2.clone()
        return state.replace(cov=out_cov, ntk=out_ntk, var1=var1, var2=var2, dist=None,
                             width=width, spatial="none", images=None)
    var1 = full_diagonal(own1)
    var2 = var1 if state.same_inputs else full_diagonal(own2)
    return state.replace(cov=out_cov, ntk=out_ntk, var1=var1, var2=var2, dist=None,
                         width=width, images=None)
