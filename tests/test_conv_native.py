"""The native C++ layer kernel (ntkit.layers.conv_native) against the same layer written in
torch ops (conv_fused._step, eager, library arccos), on random zero-padded covariance arrays:
every regime (pixel pairs; same positions, dense and paired), kernel sizes with a compiled
stencil (1x1, 3x3, 5x5) and without (3x5), with and without the NTK input/output and a
trainable layer, float64 and float32. Also: correlations at ±1 and zero variances."""
import math

import pytest
import torch

from ntkit.engine import KernelOptions
from ntkit.layers import conv_fused, conv_native, relu_map

pytestmark = pytest.mark.skipif(not conv_native.available(),
                                reason="native kernel unavailable (no C++ compiler?)")


def _padded(shape, ph, pw, full, gen, dtype, lo=-1.0):
    """Random values in the interior, zeros in the border (as run_fused keeps them)."""
    x = torch.zeros(conv_fused._padded_shape(shape, ph, pw, full), dtype=dtype)
    h, w = shape[-2], shape[-1]
    inner = torch.rand(shape, generator=gen, dtype=torch.float64) * (1 - lo) + lo
    conv_fused._window(x, ph, pw, h, w, full).copy_(inner.to(dtype))
    return x


def _run_both(regime, kh, kw, has_t, writes_t, trains, dtype, seed=0, v_zero=False):
    gen = torch.Generator().manual_seed(seed)
    h, w = 5, 6
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    full = regime == conv_native.REGIME_FULL
    if full:
        a, b = 2, 0
        shape = (a, h, w, h, w)
    elif regime == conv_native.REGIME_DIAG_DENSE:
        a, b = 3, 2
        shape = (a, b, h, w)
    else:
        a, b = 4, 0
        shape = (a, h, w)
    ps = _padded(shape, ph, pw, full, gen, dtype)
    pt = _padded(shape, ph, pw, full, gen, dtype, lo=0.0) if has_t else None
    v1 = torch.rand((a, h, w), generator=gen, dtype=torch.float64).to(dtype) + 0.5
    v2 = (torch.rand((b if b else a, h, w), generator=gen, dtype=torch.float64).to(dtype) + 0.5)
    if v_zero:
        v1[0, 0, 0] = 0.0
    r1, g1 = conv_fused._rg(v1)
    r2, g2 = conv_fused._rg(v2)
    w2, b2, a_, b_ = 1.7, 0.04, -0.2, 0.9
    half_sum, diff2 = (a_ * a_ + b_ * b_) / 2, (a_ - b_) ** 2
    # torch reference: broadcast views as run_fused builds them
    if full:
        R1, G1 = r1[:, :, :, None, None], g1[:, :, :, None, None]
        R2, G2 = r2[:, None, None], g2[:, None, None]
    elif regime == conv_native.REGIME_DIAG_DENSE:
        R1, G1, R2, G2 = r1[:, None], g1[:, None], r2[None], g2[None]
    else:
        R1, G1, R2, G2 = r1, g1, r2, g2
    ref_s = torch.zeros_like(ps)
    ref_t = torch.zeros_like(ps) if writes_t else None
    cfg = (kh, kw, w2, b2, trains, half_sum, diff2, full)
    conv_fused._step(ps, pt, ref_s, ref_t, R1, R2, G1, G2, cfg, False)
    out_s = torch.zeros_like(ps)
    out_t = torch.zeros_like(ps) if writes_t else None
    geom = (regime, a, b, h, w, kh, kw)
    consts = (w2 / (kh * kw), b2, half_sum, diff2 / (2 * math.pi), float(trains))
    conv_native.conv_relu_step(ps, pt, out_s, out_t, r1, r2, g1, g2, geom, consts)
    return ref_s, ref_t, out_s, out_t


REGIMES = [conv_native.REGIME_FULL, conv_native.REGIME_DIAG_DENSE,
           conv_native.REGIME_DIAG_PAIRED]
NTK_FLAGS = [(False, False, False), (False, True, True), (True, True, False),
             (True, True, True)]


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("ksize", [(1, 1), (3, 3), (5, 5), (3, 5)])
@pytest.mark.parametrize("flags", NTK_FLAGS, ids=["nngp", "first-trainable", "frozen", "train"])
def test_native_step_matches_torch_float64(regime, ksize, flags):
    ref_s, ref_t, out_s, out_t = _run_both(regime, *ksize, *flags, torch.float64)
    torch.testing.assert_close(out_s, ref_s, rtol=1e-13, atol=1e-14)
    if ref_t is not None:
        torch.testing.assert_close(out_t, ref_t, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("regime", REGIMES)
def test_native_step_float32(regime):
    """float32 evaluates arccos with a degree-5 polynomial (error 4.6e-9): float32 rounding."""
    ref_s, ref_t, out_s, out_t = _run_both(regime, 3, 3, True, True, True, torch.float32)
    ref64 = _run_both(regime, 3, 3, True, True, True, torch.float64)
    torch.testing.assert_close(out_s.double(), ref64[0], rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(out_t.double(), ref64[1], rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(out_s, ref_s, rtol=2e-5, atol=2e-6)


def test_native_step_zero_variance_and_threads():
    """A zero per-position variance (r = 0: correlation 0) and 1 vs 2 threads: same values."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run_both(conv_native.REGIME_FULL, 3, 3, True, True, True, torch.float64,
                        v_zero=True)
        torch.set_num_threads(2)
        two = _run_both(conv_native.REGIME_FULL, 3, 3, True, True, True, torch.float64,
                        v_zero=True)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(one[2], one[0], rtol=1e-13, atol=1e-14)
    assert torch.equal(one[2], two[2]) and torch.equal(one[3], two[3])


def test_native_step_saturated_correlations():
    """Σ̃ = v exactly (ρ = 1) and Σ̃ = -v (ρ = -1): θ = 0 and π in closed form."""
    h = w = 3
    dtype = torch.float64
    v = torch.full((1, h, w), 2.0, dtype=dtype)
    r, g = conv_fused._rg(v)
    for sign in (1.0, -1.0):
        ps = torch.zeros((1, h, w), dtype=dtype)
        ps[:] = sign * 2.0  # 1x1 kernel, W_std² = 1: Σ̃ = ±2 = ±v
        out = torch.zeros_like(ps)
        out_t = torch.zeros_like(ps)
        consts = (1.0, 0.0, 0.5, 1.0 / (2 * math.pi), 1.0)
        conv_native.conv_relu_step(ps, None, out, out_t, r, r, g, g,
                                   (conv_native.REGIME_DIAG_PAIRED, 1, 0, h, w, 1, 1), consts)
        theta = 0.0 if sign > 0 else math.pi
        # ReLU: Σ' = Σ̃/2 + v (sin θ - θ cos θ)/(2π); Θ' = Σ̃ (1/2 - θ/(2π))
        exp_s = sign * 1.0 + 2.0 * (0.0 - theta * sign) / (2 * math.pi)
        exp_t = sign * 2.0 * (0.5 - theta / (2 * math.pi))
        torch.testing.assert_close(out, torch.full_like(out, exp_s), rtol=0, atol=1e-15)
        torch.testing.assert_close(out_t, torch.full_like(out, exp_t), rtol=0, atol=1e-15)


def test_bad_arguments():
    x = torch.zeros((1, 3, 3), dtype=torch.float64)
    r = torch.ones((1, 3, 3), dtype=torch.float32)
    with pytest.raises(ValueError, match="one dtype"):
        conv_native.conv_relu_step(x, None, x.clone(), None, r, r, r, r,
                                   (1, 1, 0, 3, 3, 1, 1), (1, 0, 0.5, 0.1, 0))
    xi = x.to(torch.int32)
    with pytest.raises(ValueError, match="float32/float64"):
        conv_native.conv_relu_step(xi, None, xi.clone(), None, xi, xi, xi, xi,
                                   (1, 1, 0, 3, 3, 1, 1), (1, 0, 0.5, 0.1, 0))


@pytest.mark.parametrize("flags", NTK_FLAGS, ids=["nngp", "first-trainable", "frozen", "train"])
def test_native_sums_equal_sum_of_outputs(flags):
    """Reduce mode (a last layer before GlobalAvgPool2d): the sums it returns equal the sums
    of the outputs the torch layer writes, in float64."""
    has_t, writes_t, trains = flags
    ref_s, ref_t, _, _ = _run_both(conv_native.REGIME_FULL, 3, 3, has_t, writes_t, trains,
                                   torch.float64, seed=5)
    gen = torch.Generator().manual_seed(5)  # the same draws as _run_both(seed=5), pair by pair
    h, w = 5, 6
    ps = _padded((2, h, w, h, w), 1, 1, True, gen, torch.float64)
    pt = _padded((2, h, w, h, w), 1, 1, True, gen, torch.float64, lo=0.0) if has_t else None
    v1 = torch.rand((2, h, w), generator=gen, dtype=torch.float64) + 0.5
    v2 = torch.rand((2, h, w), generator=gen, dtype=torch.float64) + 0.5
    r1, g1 = conv_fused._rg(v1)
    r2, g2 = conv_fused._rg(v2)
    a_, b_ = -0.2, 0.9
    consts = (1.7 / 9, 0.04, (a_ * a_ + b_ * b_) / 2, (a_ - b_) ** 2 / (2 * math.pi),
              float(trains))
    for k in range(2):
        sums = torch.zeros(2, dtype=torch.float64)
        scratch = torch.zeros_like(ps[k:k + 1])
        conv_native.conv_relu_step(ps[k:k + 1].contiguous(),
                                   None if pt is None else pt[k:k + 1].contiguous(), scratch,
                                   scratch.clone() if writes_t else None, r1[k:k + 1],
                                   r2[k:k + 1], g1[k:k + 1], g2[k:k + 1],
                                   (conv_native.REGIME_FULL, 1, 0, h, w, 3, 3), consts, sums)
        assert torch.count_nonzero(scratch) == 0  # nothing written in reduce mode
        torch.testing.assert_close(sums[0], ref_s[k].sum(), rtol=1e-13, atol=1e-13)
        if writes_t:
            torch.testing.assert_close(sums[1], ref_t[k].sum(), rtol=1e-13, atol=1e-13)
        else:
            assert sums[1] == 0


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(conv_native, "_state", {"lib": None, "tried": False, "error": None})
    monkeypatch.setenv("NTKIT_CACHE_DIR", str(tmp_path))


def test_build_failure_falls_back_to_torch(monkeypatch, tmp_path):
    """A compiler that fails: a warning that names the problem, and the kernels still come out
    right (the torch path) against the brute-force reference."""
    from tests import conv_bruteforce as bf
    from tests.test_layers_conv import _arch_and_spec
    import numpy as np
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(conv_native, "_compiler", lambda: "/bin/false")
    with pytest.warns(UserWarning, match="native convolution kernel unavailable"):
        assert not conv_native.available()
    assert "failed" in conv_native.last_error()
    arch, spec = _arch_and_spec("same-gap-fixed")
    x = np.random.default_rng(7).standard_normal((2, 2, 4, 4))
    ref_nngp, ref_ntk = bf.kernel_matrix(x, x, spec)
    k = arch.kernel(x)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-7)


def test_damaged_cached_library_is_rebuilt(tmp_path):
    """A truncated library file in the cache is detected on load and rebuilt (in a fresh
    process: a library once loaded stays mapped in this one)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NTKIT_CACHE_DIR": str(tmp_path)}
    cxx = conv_native._compiler()
    target = conv_native.library_path(cxx, conv_native._FLAGS + ["-fopenmp"])
    rel = target.relative_to(conv_native.cache_dir())
    damaged = tmp_path / rel
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a shared library")
    code = ("import math, torch\n"
            "from ntkit.layers import conv_native as c\n"
            "assert c.available(), c.last_error()\n"
            "x = torch.full((1, 1, 1), 2.0, dtype=torch.float64); o = torch.zeros_like(x)\n"
            "r = torch.full((1, 1, 1), 0.5 ** 0.5, dtype=torch.float64); g = 1 / r\n"
            "c.conv_relu_step(x, None, o, None, r, r, g, g, (1, 1, 0, 1, 1, 1, 1),\n"
            "                 (1.0, 0.0, 0.5, 1 / (2 * math.pi), 0.0))\n"
            "print(float(o))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == pytest.approx(1.0, abs=1e-15)  # ρ = 1: Σ' = Σ̃/2
    assert damaged.stat().st_size > 1000  # replaced by a real library


def _dense_block(n1=70, n2=90, seed=3):
    """A dense pre-activation block with correlations over [-1, 1], including exactly ±1
    (column 0 repeats row 0, column 1 is its negative) and a zero-variance row."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n1, 6))
    y = rng.standard_normal((n2, 6))
    y[0], y[1] = x[0], -x[0]
    x[5] = 0.0
    return x @ y.T / 6, (x * x).sum(1) / 6, (y * y).sum(1) / 6


@pytest.mark.parametrize("ab", [(0.0, 1.0), (-0.3, 0.8)])
def test_arccos_dense_matches_numpy(ab):
    """The native fast path of the ReLU family on a dense block against the arc-cosine formulas
    evaluated with numpy in float64 (Cho & Saul 2009), and float32 within float32 rounding
    (away from |ρ| = 1, where float32 rounding of ρ moves θ by ~sqrt(eps) and the
    fully-connected path recomputes nearly equal inputs on its precise path)."""
    import numpy as np
    from ntkit.layers.relu import ABReLU
    c, v1, v2 = _dense_block()
    a, b = ab
    hs, k = (a * a + b * b) / 2, (a - b) ** 2 / (2 * np.pi)
    sv = np.sqrt(np.outer(v1, v2))
    rho = np.clip(np.divide(c, sv, out=np.zeros_like(c), where=sv > 0), -1, 1)
    th = np.arccos(rho)
    ref_nngp = hs * c + k * sv * (np.sin(th) - th * np.cos(th))
    ref_dot = hs - k * th
    act = ABReLU(a, b)
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 3e-6)):
        cov = torch.tensor(c, dtype=dtype)
        t1 = torch.tensor(v1, dtype=dtype)[:, None]
        t2 = torch.tensor(v2, dtype=dtype)[None, :]
        nngp, dot, _ = act.pair_moments(cov, t1, t2, None, True)
        keep = np.ones_like(rho, dtype=bool) if dtype == torch.float64 else np.abs(rho) < 1 - 1e-3
        scale = np.abs(ref_nngp).max()
        np.testing.assert_allclose(nngp.double().numpy()[keep], ref_nngp[keep], rtol=0,
                                   atol=tol * scale)
        np.testing.assert_allclose(dot.double().numpy()[keep], ref_dot[keep], rtol=0, atol=tol)


def test_fc_kernel_native_equals_torch_path():
    """A 3-layer ReLU MLP kernel on 120 inputs: the native activation (blocks of >= 4096
    entries) equals the torch fast path (native off) to float64 rounding."""
    from ntkit.layers.relu import _native_dense
    import ntkit as nk
    x = torch.randn(120, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    arch = nk.Sequential(nk.Linear(64, W_std=1.5, b_std=0.1), nk.ReLU(),
                         nk.Linear(64, W_std=1.5, b_std=0.1), nk.LeakyReLU(0.1),
                         nk.Linear(1, W_std=1.5, b_std=0.1))
    assert _native_dense(torch.zeros(120, 120, dtype=torch.float64),
                         torch.ones(120, 1, dtype=torch.float64),
                         torch.ones(1, 120, dtype=torch.float64))
    k_native = arch.kernel(x)
    k_torch = arch.kernel(x, options=KernelOptions(native=False))
    torch.testing.assert_close(k_native.nngp, k_torch.nngp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(k_native.ntk, k_torch.ntk, rtol=1e-13, atol=1e-15)


# -- the same bits for every thread count -----------------------------------------------------
def _per_thread_count(fn, counts=(1, 2, 3)):
    """fn() evaluated with each torch thread count (the native library shares torch's OpenMP
    pool and takes its size from torch.get_num_threads()); the count is restored after."""
    old = torch.get_num_threads()
    out = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            res = fn()
            out.append([None if t is None else t.clone() for t in res])
    finally:
        torch.set_num_threads(old)
    return out


def _assert_same_bits(results):
    for res in results[1:]:
        for a, b in zip(results[0], res):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_step_same_bits_for_1_2_3_threads(regime, dtype):
    """Every regime, every output (Σ', Θ'): bit for bit with 1, 2 and 3 threads."""
    _assert_same_bits(_per_thread_count(
        lambda: _run_both(regime, 3, 3, True, True, True, dtype, seed=2)[2:]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_gap_sums_same_bits_for_1_2_3_threads(dtype):
    """The reduce mode (a last layer folded into GlobalAvgPool2d) on a 12x12 pair, 144 planes:
    per-plane partial sums added in plane order give the same bits for 1, 2 and 3 threads
    (adding per-thread partial sums in arrival order did not), and equal the float64 sum of
    the written outputs to rounding."""
    gen = torch.Generator().manual_seed(9)
    h = w = 12
    ps = _padded((1, h, w, h, w), 1, 1, True, gen, dtype)
    pt = _padded((1, h, w, h, w), 1, 1, True, gen, dtype, lo=0.0)
    r1, g1 = relu_map.rank_one_factors(torch.rand((1, h, w), generator=gen,
                                                  dtype=torch.float64).to(dtype) + 0.5)
    r2, g2 = relu_map.rank_one_factors(torch.rand((1, h, w), generator=gen,
                                                  dtype=torch.float64).to(dtype) + 0.5)
    geom = (conv_native.REGIME_FULL, 1, 0, h, w, 3, 3)
    consts = (1.7 / 9, 0.04, 0.5, 1 / (2 * math.pi), 1.0)

    def sums():
        s = torch.zeros(2, dtype=torch.float64)
        conv_native.conv_relu_step(ps, pt, torch.zeros_like(ps), torch.zeros_like(ps), r1, r2,
                                   g1, g2, geom, consts, s)
        return [s]

    results = _per_thread_count(sums)
    _assert_same_bits(results)
    out_s, out_t = torch.zeros_like(ps), torch.zeros_like(ps)
    conv_native.conv_relu_step(ps, pt, out_s, out_t, r1, r2, g1, g2, geom, consts)
    ref = torch.stack([out_s.double().sum(), out_t.double().sum()])
    torch.testing.assert_close(results[0][0], ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_dense_and_pair_input_same_bits_for_1_2_3_threads(dtype):
    """arccos_dense (rows over threads) and pair_input (rows of the outer product over
    threads): bit for bit with 1, 2 and 3 threads."""
    c, v1, v2 = _dense_block(n1=67, n2=90)
    cov = torch.tensor(c, dtype=dtype)
    r1, g1 = relu_map.rank_one_factors(torch.tensor(v1, dtype=dtype))
    r2, g2 = relu_map.rank_one_factors(torch.tensor(v2, dtype=dtype))
    gen = torch.Generator().manual_seed(4)
    a = torch.randn((3, 7, 9), generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn((3, 7, 9), generator=gen, dtype=torch.float64).to(dtype)

    def run():
        out = cov.clone()
        dot = conv_native.arccos_dense(out, r1, r2, g1, g2, 0.5, 1.0, True)
        pair = torch.zeros((9, 11, 9, 11), dtype=dtype)
        conv_native.pair_input(a, b, pair, 1, 1)
        return [out, dot, pair]

    _assert_same_bits(_per_thread_count(run))


def _cntk(gap: bool):
    import ntkit as nk
    s2 = math.sqrt(2.0)
    layers = []
    for _ in range(3):
        layers += [nk.Conv2d(8, 3, W_std=s2, b_std=0.1), nk.ReLU()]
    return nk.Sequential(*layers, nk.GlobalAvgPool2d() if gap else nk.Flatten(),
                         nk.Linear(1, W_std=1.0, b_std=None))


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernels_same_bits_for_1_2_3_threads(native, dtype):
    """Whole kernels, native and torch paths: CNTK-GAP and CNTK-V on 3 images of 16x16 (the
    GAP sums of 65536 entries per pair were thread-count dependent in both paths before their
    reductions got a fixed order), and a ReLU MLP on 90 inputs (dense blocks of 8100 >= 4096
    entries: the native arccos block when native), bit for bit with 1, 2 and 3 threads."""
    import ntkit as nk
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, 3, 16, 16), generator=gen, dtype=torch.float64).to(dtype)
    xf = torch.randn((90, 12), generator=gen, dtype=torch.float64).to(dtype)
    mlp = nk.Sequential(nk.Linear(64, W_std=1.5, b_std=0.1), nk.ReLU(),
                        nk.Linear(64, W_std=1.5, b_std=0.1), nk.LeakyReLU(0.2), nk.Linear(1))
    opts = KernelOptions(native=native)

    def run():
        out = []
        for arch, inp in ((_cntk(True), x), (_cntk(False), x), (mlp, xf)):
            k = arch.kernel(inp, options=opts)
            out += [k.nngp, k.ntk]
        return out
    results = _per_thread_count(run)
    _assert_same_bits(results)


def test_shared_constants_are_generated_from_relu_map(monkeypatch):
    """The library reports relu_map's constants bit for bit; the C++ source holds no copy of
    the polynomial coefficients; changing a constant changes the generated header and so the
    cache key (a rebuild, never a stale library)."""
    expected = [*relu_map.ASIN_COEFS_F64, *relu_map.ASIN_COEFS_F32, float(relu_map.SNAP_ULPS)]
    assert conv_native.constants() == expected
    source = conv_native._SOURCE.read_text()
    for c in relu_map.ASIN_COEFS_F64[1:] + relu_map.ASIN_COEFS_F32:
        assert repr(c)[:10] not in source
    cxx = conv_native._compiler()
    before = conv_native.library_path(cxx, conv_native._FLAGS)
    monkeypatch.setattr(relu_map, "SNAP_ULPS", 5)
    assert "kSnapUlps = 5;" in conv_native.native_header()
    assert conv_native.library_path(cxx, conv_native._FLAGS) != before
