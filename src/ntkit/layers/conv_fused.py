"""Fused kernels for chains of [Conv2d, ReLU-family] layers: one pass per layer.

A layer pair [Conv2d (odd q_h x q_w, stride 1, "same"), ABReLU(a, b)] maps the post-activation
covariances (Σ, Θ) of the previous layer to the next ones (Arora et al. 2019, CNTK formula;
Cho & Saul 2009 for the arc-cosine kernel):

    Σ̃ = W² C(Σ) + b²,   Θ̃ = W² C(Θ) + Σ̃ [trainable]         (C: conv_ops' diagonal filter)
    ρ = Σ̃ / sqrt(v1 v2),  θ = arccos ρ                            (v: per-position variances)
    Σ' = (a²+b²)/2 · Σ̃ + (a-b)²/(2π) · sqrt(v1 v2) · (sin θ - θ cos θ)
    Θ' = Θ̃ · ((a²+b²)/2 - (a-b)²/(2π) · θ)

The per-position variances v are computed once per input and layer (same-position map), so
that 1/sqrt(v1 v2) is a rank-one factor r1 r2 (the homogeneity trick of Arora et al.'s
implementation). The arrays are kept zero-padded by (q-1)/2 on every spatial axis, so the
"same" zero padding needs no masks: one pass per layer reads the q_h q_w shifted windows of
(Σ, Θ), applies the activation and writes (Σ', Θ') into the interior of the other buffer of a
ping-pong pair. Under ``torch.compile`` (inductor: C++/OpenMP on CPU, Triton on CUDA) this pass
is one loop; without it (small problems, ``KernelOptions(compile="off")``, NTKIT_COMPILE=0, or when
compiling fails) the same function runs eagerly. On CPU the pass normally runs in C++
instead (``conv_native``: the same math, one pair per call, the input covariance written
straight into the padded buffer and a following GlobalAvgPool2d folded into the last layer). Pixel-pair states go through in fixed-size
micro-batches (1 pair on CPU, 16 on CUDA) so that the compiled loop keeps one shape. The
activation is ``relu_map.fast_map`` (compiled: arccos by ``relu_map.acos_poly``, which
vectorizes in float64, unlike the library arccos on many CPUs), with relu_map's edge
conventions (zero variance, correlations snapped to ±1 within 4 ulps).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from contextvars import ContextVar
from typing import Callable, Iterator, Optional, Tuple

import torch

from ..engine.options import KernelOptions
from . import relu_map
from .fixed_sum import fixed_order_mean
from .image_state import materialize
from .state import KernelState

# -- the one-pass step ------------------------------------------------------------------------
def _window(p: torch.Tensor, a: int, b: int, h: int, w: int, full: bool) -> torch.Tensor:
    if full:
        return p[:, a:a + h, b:b + w, a:a + h, b:b + w]
    return p[..., a:a + h, b:b + w]


def _step(ps: torch.Tensor, pt: Optional[torch.Tensor], os_: torch.Tensor,
          ot: Optional[torch.Tensor], r1: torch.Tensor, r2: torch.Tensor, g1: torch.Tensor,
          g2: torch.Tensor, cfg: Tuple, poly: bool = False) -> None:
    """One [Conv2d, ABReLU] layer: reads padded (ps, pt), writes the interiors of (os_, ot).
    ``poly``: arccos by ``relu_map.acos_poly`` (one fused loop when compiled); eagerly the
    library arccos is one op instead of ~30."""
    kh, kw, w2, b2, trains, half_sum, diff2, full = cfg
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    if full:
        h, w = ps.shape[1] - 2 * ph, ps.shape[2] - 2 * pw
    else:
        h, w = ps.shape[-2] - 2 * ph, ps.shape[-1] - 2 * pw
    scale = w2 / (kh * kw)
    acc = None
    for a in range(kh):
        for b in range(kw):
            v = _window(ps, a, b, h, w, full)
            acc = v if acc is None else acc + v
    s_pre = acc * scale + b2
    t_pre = None
    if pt is not None:
        tacc = None
        for a in range(kh):
            for b in range(kw):
                v = _window(pt, a, b, h, w, full)
                tacc = v if tacc is None else tacc + v
        t_pre = tacc * scale
        if trains:
            t_pre = t_pre + s_pre
    elif trains:
        t_pre = s_pre
    need_dot = t_pre is not None and ot is not None
    s_post, dot = relu_map.fast_map(s_pre, r1, r2, g1, g2, half_sum, diff2, need_dot, poly)
    _window(os_, ph, pw, h, w, full).copy_(s_post)
    if need_dot:
        _window(ot, ph, pw, h, w, full).copy_(t_pre * dot)


# -- compile management -----------------------------------------------------------------------
# Compiled steps are cached per (device, configuration); a device whose compiler failed once is
# remembered and runs eagerly from then on. These are caches, not switches: what runs is chosen
# by the KernelOptions passed down.
_compiled: dict = {}
_broken: set = set()
# compile only when a call moves at least this many covariance entries (compiling takes
# seconds; small problems are faster eagerly)
_COMPILE_MIN_ENTRIES = 1 << 24
# all compiled closures share one code object, hence one recompile budget: raised while ntkit's
# own compiled steps run, never for the rest of the process
_RECOMPILE_LIMIT = 64


def _step_fn(device: torch.device, entries: int, cfg: Tuple, has_pt: bool, has_ot: bool,
             compile_mode: str) -> Callable:
    """The step to call: eager, or a compiled closure with the layer's constants baked in
    (one per configuration and shape; the full regime calls it on fixed-size micro-batches of
    pairs, so chunk sizes do not trigger recompiles)."""
    if compile_mode == "off" or device.type in _broken:
        return _step
    if compile_mode == "auto" and entries < _COMPILE_MIN_ENTRIES:
        return _step  # small problems run eagerly
    key = (device.type, cfg, has_pt, has_ot)
    fn = _compiled.get(key)
    if fn is None:
        def closure(ps, pt, os_, ot, r1, r2, g1, g2):
            _step(ps, pt, os_, ot, r1, r2, g1, g2, cfg, True)
        try:
            fn = torch.compile(closure, dynamic=False)
        except Exception as exc:  # pragma: no cover - compile unavailable
            warnings.warn(f"ntkit: torch.compile unavailable ({exc}); using eager kernels")
            _broken.add(device.type)
            return _step
        _compiled[key] = fn
    return fn


def _recompile_budget():
    import torch._dynamo
    cfgmod = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfgmod, "recompile_limit") else "cache_size_limit"
    return cfgmod.patch(**{name: max(getattr(cfgmod, name), _RECOMPILE_LIMIT)})


def _call(fn, ps, pt, os_, ot, r1, r2, g1, g2, cfg) -> None:
    if fn is _step:
        return _step(ps, pt, os_, ot, r1, r2, g1, g2, cfg)
    try:
        with _recompile_budget():
            return fn(ps, pt, os_, ot, r1, r2, g1, g2)
    except Exception as exc:  # pragma: no cover - compiler missing at run time
        warnings.warn(f"ntkit: torch.compile failed ({type(exc).__name__}: {exc}); "
                      f"falling back to eager kernels")
        _broken.add(ps.device.type)
        return _step(ps, pt, os_, ot, r1, r2, g1, g2, cfg)


# -- buffer reuse -----------------------------------------------------------------------------
# The padded ping-pong buffers of run_fused are only ever written in their interiors, so their
# zero borders survive reuse; within ``reuse_buffers()`` (one kernel computation) successive
# blocks of pairs share them instead of allocating and zeroing fresh ones (for a few pairs per
# block that allocation, page faults included, was ~10% of the time). A block whose outputs are
# views of its buffers (the same-position regime) takes them out of the pool instead of copying.
_pool: ContextVar[Optional[dict]] = ContextVar("ntkit_conv_buffers", default=None)


@contextlib.contextmanager
def reuse_buffers() -> Iterator[None]:
    """Share run_fused's padded buffers across the calls made inside the block (freed at exit)."""
    token = _pool.set({})
    try:
        yield
    finally:
        _pool.reset(token)


def _bordered(like: torch.Tensor, shape, full: bool, ph: int, pw: int) -> torch.Tensor:
    """An uninitialized padded buffer of ``shape`` whose zero-padding border (``ph`` rows and
    ``pw`` columns on each side of every spatial axis) is zeroed: its interior is always
    written before it is read, so a full zero fill (a second pass over every page) is saved."""
    buf = like.new_empty(shape)
    axes = ((1, ph), (2, pw), (3, ph), (4, pw)) if full else ((buf.ndim - 2, ph),
                                                             (buf.ndim - 1, pw))
    for dim, p in axes:
        if p:
            buf.narrow(dim, 0, p).zero_()
            buf.narrow(dim, buf.shape[dim] - p, p).zero_()
    return buf


def _zero_buffers(like: torch.Tensor, shape, count: int, tag: str, full: bool, ph: int,
                  pw: int) -> list:
    """``count`` padded buffers of ``shape`` with zero borders (``_bordered``); within
    ``reuse_buffers()`` shared with the next block of the same shape (their zero borders
    survive: passes write interiors only)."""
    pool = _pool.get()
    if pool is None:
        return [_bordered(like, shape, full, ph, pw) for _ in range(count)]
    key = (tag, tuple(shape), like.dtype, like.device)
    bufs = pool.get(key)
    if bufs is None:
        bufs = pool[key] = [_bordered(like, shape, full, ph, pw) for _ in range(count)]
    return list(bufs)


def _release_buffers(like: torch.Tensor, shape, tags) -> None:
    """Take the buffers of ``shape`` out of the shared pool: the caller returns views of them
    (no copy), and the next block allocates its own."""
    pool = _pool.get()
    if pool is not None:
        for tag in tags:
            pool.pop((tag, tuple(shape), like.dtype, like.device), None)


# -- detection and driver ---------------------------------------------------------------------
def _fusable_conv(layer) -> bool:
    from .conv import Conv2d
    return (isinstance(layer, Conv2d) and layer.stride == (1, 1) and layer.padding == "same"
            and layer.kernel_size[0] % 2 == 1 and layer.kernel_size[1] % 2 == 1
            and layer.parameterization == "ntk")


def fused_length(layers, state: KernelState, options: KernelOptions) -> int:
    """How many leading layers (whole [Conv2d, ABReLU] pairs, see the module doc) run fused on
    this input state; 0 when the chain does not qualify or ``options.fused`` is off."""
    from .relu import ABReLU
    if not options.fused or state.spatial not in ("diag", "full") or state.ntk is not None:
        return 0
    dtype = state.cov.dtype if state.cov is not None else state.images[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return 0
    if state.spatial == "full" and state.layout != "paired":
        return 0
    n = 0
    while (n + 1 < len(layers) and _fusable_conv(layers[n]) and isinstance(layers[n + 1], ABReLU)
           and type(layers[n + 1]).pair_moments is ABReLU.pair_moments):
        if n and layers[n].kernel_size != layers[0].kernel_size:
            break
        n += 2
    return n


def folds_gap(layers, n_fused: int, state: KernelState) -> bool:
    """A GlobalAvgPool2d right after the fused prefix (pixel pairs) is folded into its last pass."""
    from .pooling import GlobalAvgPool2d
    return (state.spatial == "full" and 0 < n_fused < len(layers)
            and type(layers[n_fused]) is GlobalAvgPool2d)


def _padded_shape(shape, ph: int, pw: int, full: bool):
    if full:
        m, h, w = shape[0], shape[1], shape[2]
        return (m, h + 2 * ph, w + 2 * pw, h + 2 * ph, w + 2 * pw)
    return tuple(shape[:-2]) + (shape[-2] + 2 * ph, shape[-1] + 2 * pw)


def _layer_vars(pairs, v1, v2, same_vars):
    """Per-position variances at each activation's input, (m, H, W) per layer and side."""
    from .conv_ops import conv_map
    out = []
    for li in range(0, len(pairs), 2):
        conv, act = pairs[li], pairs[li + 1]
        w2 = conv.W_std ** 2
        b2 = 0.0 if conv.b_std is None else conv.b_std ** 2
        v1 = conv_map(v1, "diag", conv.kernel_size, conv.stride, conv.padding).mul_(w2).add_(b2)
        v2 = v1 if same_vars else conv_map(v2, "diag", conv.kernel_size, conv.stride,
                                           conv.padding).mul_(w2).add_(b2)
        out.append((v1, v2))
        v1 = act.var_moment(v1)
        v2 = v1 if same_vars else act.var_moment(v2)
    return out, v1, v2


def _micro(t: torch.Tensor, mb: int) -> torch.Tensor:
    """t (k, ...) padded with zeros to mb rows (the fixed shape of a compiled micro-batch)."""
    if t.shape[0] == mb:
        return t
    return torch.cat([t, t.new_zeros((mb - t.shape[0],) + tuple(t.shape[1:]))])


def _rg(v: torch.Tensor):
    return relu_map.rank_one_factors(v)


# pairs per fused call in the full regime: a fixed shape, so that the compiled step is built
# once per layer configuration (the last micro-batch is padded with zero covariances)
_MICRO = {"cpu": 1, "cuda": 16}


def _use_native(dev: torch.device, dtype: torch.dtype, options: KernelOptions) -> bool:
    if not options.native or dev.type != "cpu" or dtype not in (torch.float32, torch.float64):
        return False
    from . import conv_native
    return conv_native.available()


def writes_input_in_place(dev: torch.device, dtype: torch.dtype, options: KernelOptions) -> bool:
    """True when the fused pass writes each pair's input covariance straight into its padded
    buffer (the native kernel); otherwise pixel-pair inputs are materialized, (m, H, W, H, W)."""
    return _use_native(dev, dtype, options)


def run_fused(pairs, state: KernelState, options: KernelOptions, gap: bool = False
              ) -> KernelState:
    """Apply [Conv2d, ABReLU] * L to an input state in one pass per layer (module doc).

    On CPU the pass is ``conv_native``'s C++ kernel when it can be built; otherwise (and on
    CUDA) it is ``_step`` through ``torch.compile`` for large problems, or eagerly. A lazy
    pixel-pair input state (``state.images``) has its covariance written straight into the
    padded buffer, pair by pair, by the native kernel. ``gap`` (pixel pairs only): also apply
    GlobalAvgPool2d, i.e. return the mean over (p, p') of each pair's Σ and Θ, so that the
    (m, H, W, H, W) outputs are never stored."""
    full = state.spatial == "full"
    kh, kw = pairs[0].kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    images = state.images if state.cov is None else None
    ref = state.cov if images is None else images[0]
    dev = ref.device
    native = _use_native(dev, ref.dtype, options)
    if images is not None and not (native and full):
        state = materialize(state)
        images = None
    cov = state.cov
    if images is not None:  # a stand-in with the covariance's shape (never materialized)
        m_, _, h_, w_ = images[0].shape
        cov = images[0].new_zeros((1, 1, 1, 1, 1)).expand(m_, h_, w_, h_, w_)
    same_vars = state.same_inputs
    lvars, v1_out, v2_out = _layer_vars(pairs, state.var1, state.var2, same_vars)
    track = state.track_ntk
    trains = [pairs[li].trainable and track for li in range(0, len(pairs), 2)]
    any_t = any(trains)
    h, w = cov.shape[-2], cov.shape[-1]
    if full:
        m = cov.shape[0]
        mb = 1 if native else _MICRO.get(dev.type, 8)
    else:
        m = mb = None  # the diagonal regime runs the whole block at once
    shape = _padded_shape(cov.shape if not full else (mb,) + tuple(cov.shape[1:]), ph, pw, full)
    buf_s = _zero_buffers(cov, shape, 2, "s", full, ph, pw)
    buf_t = _zero_buffers(cov, shape, 2, "t", full, ph, pw) if any_t else None
    out_shape = (cov.shape[0],) if gap else cov.shape
    out_cov = cov.new_empty(out_shape) if full else None
    out_ntk = (cov.new_empty(out_shape) if any_t else None) if full else None
    entries = cov.numel() * len(pairs)
    # rank-one factors 1/sqrt(v) and sqrt(v), (m|n, H, W) per layer and side, computed once
    lrg = []
    for v1, v2 in lvars:
        r1, g1 = _rg(v1.contiguous())
        r2, g2 = (r1, g1) if v2 is v1 else _rg(v2.contiguous())
        lrg.append((r1, g1, r2, g2))
    sums = torch.zeros(2, dtype=torch.float64) if (native and gap) else None
    starts = range(0, m, mb) if full else [None]
    for s0 in starts:
        if sums is not None:
            sums.zero_()
        if full:
            k = min(mb, m - s0)
            sl = slice(s0, s0 + k)
            if images is not None:  # native: mb = 1
                from . import conv_native
                conv_native.pair_input(images[0][s0].contiguous(), images[1][s0].contiguous(),
                                       buf_s[0][0], ph, pw)
            else:
                src = _window(buf_s[0], ph, pw, h, w, True)
                src[:k].copy_(cov[sl])
                if k < mb:
                    src[k:].zero_()
        else:
            _window(buf_s[0], ph, pw, h, w, False).copy_(cov)
        has_t = False
        for layer_i, li in enumerate(range(0, len(pairs), 2)):
            conv, act = pairs[li], pairs[li + 1]
            w2 = conv.W_std ** 2
            b2 = 0.0 if conv.b_std is None else conv.b_std ** 2
            half_sum, diff2 = act._coefs
            writes_t = buf_t is not None and (has_t or trains[layer_i])
            if native:
                last_gap = gap and li == len(pairs) - 2
                _native_layer(buf_s, buf_t, has_t, writes_t, lrg[layer_i], state, full,
                              sl if full else None, kh, kw, w2, b2, float(half_sum),
                              float(diff2), bool(trains[layer_i]),
                              sums if last_gap else None)
            else:
                r1, g1, r2, g2 = lrg[layer_i]
                if full:  # this micro-batch (padded with zero factors): (mb, H, W, 1, 1) and
                    # (mb, 1, 1, H, W)
                    r1, g1, r2, g2 = (_micro(t[sl], mb) for t in (r1, g1, r2, g2))
                    r1, g1 = r1[:, :, :, None, None], g1[:, :, :, None, None]
                    r2, g2 = r2[:, None, None], g2[:, None, None]
                elif state.layout == "dense":  # (n1, 1, H, W) and (1, n2, H, W)
                    r1, g1, r2, g2 = r1[:, None], g1[:, None], r2[None], g2[None]
                cfg = (kh, kw, w2, b2, bool(trains[layer_i]), float(half_sum), float(diff2),
                       full)
                fn = _step_fn(dev, entries, cfg, has_t, writes_t, options.compile)
                _call(fn, buf_s[0], buf_t[0] if has_t else None, buf_s[1],
                      buf_t[1] if writes_t else None, r1, r2, g1, g2, cfg)
            buf_s.reverse()
            if writes_t:
                buf_t.reverse()
                has_t = True
        if full and native and gap:  # the last layer summed its outputs
            out_cov[s0] = sums[0] / (h * w) ** 2
            if out_ntk is not None:
                out_ntk[s0] = sums[1] / (h * w) ** 2
        elif full:
            res_s = _window(buf_s[0], ph, pw, h, w, True)[:k]
            res_t = _window(buf_t[0], ph, pw, h, w, True)[:k] if out_ntk is not None else None
            if gap:
                # fixed-order sums: the same bits for every thread count (fixed_sum)
                res_s = fixed_order_mean(res_s, 4)
                res_t = fixed_order_mean(res_t, 4) if res_t is not None else None
            out_cov[sl] = res_s
            if out_ntk is not None:
                out_ntk[sl] = res_t
    if not full:
        out_cov = _window(buf_s[0], ph, pw, h, w, False)
        out_ntk = _window(buf_t[0], ph, pw, h, w, False) if any_t else None
        _release_buffers(cov, shape, ("s", "t"))  # the outputs are views of them
    if gap:  # GlobalAvgPool2d.apply on the pooled values, variances included
        own1, own2 = state.own_covariances(out_cov)
        var1 = own1.clone()
        var2 = var1 if state.same_inputs else own2.clone()
        return state.replace(cov=out_cov, ntk=out_ntk, var1=var1, var2=var2, dist=None,
                             width=pairs[-2].out_channels, spatial="none", images=None)
    return state.replace(cov=out_cov, ntk=out_ntk, var1=v1_out, var2=v2_out, dist=None,
                         width=pairs[-2].out_channels, images=None)


def _native_layer(buf_s, buf_t, has_t, writes_t, rg, state, full, sl, kh, kw, w2, b2,
                  half_sum, diff2, trains, sums=None) -> None:
    """One layer by ``conv_native.conv_relu_step`` (same math as ``_step``); ``sums``: add the
    sums of the outputs there instead of writing them (pixel pairs, one pair per call)."""
    from . import conv_native
    r1, g1, r2, g2 = rg
    h, w = r1.shape[-2], r1.shape[-1]
    if full:  # one pair per call: (1, Hp, Wp, Hp, Wp)
        r1, g1, r2, g2 = r1[sl], g1[sl], r2[sl], g2[sl]
        geom = (conv_native.REGIME_FULL, 1, 0, h, w, kh, kw)
    elif state.layout == "dense":
        geom = (conv_native.REGIME_DIAG_DENSE, r1.shape[0], r2.shape[0], h, w, kh, kw)
    else:
        geom = (conv_native.REGIME_DIAG_PAIRED, r1.shape[0], 0, h, w, kh, kw)
    consts = (w2 / (kh * kw), b2, half_sum, diff2 / (2 * math.pi), float(trains))
    conv_native.conv_relu_step(buf_s[0], buf_t[0] if has_t else None, buf_s[1],
                               buf_t[1] if writes_t else None, r1, r2, g1, g2, geom, consts,
                               sums)
