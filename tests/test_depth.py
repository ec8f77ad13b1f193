"""Deep kernels without overflow or underflow (issue 13, "Depth without overflow").

References are written here independently of ntkit, in numpy float64:
* ReLU family: the arc-cosine recursion (Cho & Saul 2009) with the NTK recursion of Jacot et
  al. 2018, carried on normalized numbers (its own power-of-two exponent, renormalized by its
  own rule), so depth 10,000 is representable;
* Erf: Williams' (1997) closed form iterated layer by layer;
* Tanh: a product Gauss–Hermite rule (Cholesky form, 120 nodes per axis) iterated layer by layer.
Bias-free ReLU networks are homogeneous: each [Linear(W), ReLU] block multiplies the diagonal by
exactly W²/2 (a power of two for W = 2 or 0.5), which gives the exact log2 scale.
"""
import functools
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from ntkit.engine.scale import mul_pow2
from ntkit.layers.kernel_tile import kernel_tile

pytestmark = pytest.mark.usefixtures("one_thread")

X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7], [0.9, 0.1, 0.4], [-0.5, 0.3, 1.2]])
ONE_THREAD = KernelOptions(threads=1)


def chain(act, depth, w, b):
    return nk.Sequential(*[nk.Linear(1, W_std=w, b_std=b), act] * depth,
                         nk.Linear(1, W_std=w, b_std=b))


# -- independent references ---------------------------------------------------------------------
def relu_family_map(k, slope):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) of φ = max(x, 0) + slope·min(x, 0), matrices (n, n)."""
    q = np.sqrt(np.diag(k))
    rho = np.clip(k / np.outer(q, q), -1.0, 1.0)
    np.fill_diagonal(rho, 1.0)
    theta = np.arccos(rho)
    half, diff2 = (1 + slope ** 2) / 2, (1 - slope) ** 2
    out = half * k + diff2 / (2 * np.pi) * np.outer(q, q) * (np.sin(theta) - theta * np.cos(theta))
    return out, half - diff2 / (2 * np.pi) * theta


def erf_map(k):
    d = 1 + 2 * np.diag(k)
    s = np.sqrt(np.outer(d, d))
    return (2 / np.pi) * np.arcsin(np.clip(2 * k / s, -1, 1)), (4 / np.pi) / np.sqrt(s * s - 4 * k * k)


_Z, _WZ = np.polynomial.hermite_e.hermegauss(120)
_WZ = _WZ / math.sqrt(2 * math.pi)


def tanh_map(k):
    n = k.shape[0]
    out, dot = np.empty_like(k), np.empty_like(k)
    for i in range(n):
        for j in range(n):
            a = math.sqrt(k[i, i])
            c = k[i, j] / a
            r = math.sqrt(max(k[j, j] - c * c, 0.0))
            u = a * _Z[:, None] + 0 * _Z[None, :]
            v = c * _Z[:, None] + r * _Z[None, :]
            ww = _WZ[:, None] * _WZ[None, :]
            out[i, j] = (ww * np.tanh(u) * np.tanh(v)).sum()
            dot[i, j] = (ww / np.cosh(u) ** 2 / np.cosh(v) ** 2).sum()
    return out, dot


def reference(act_map, depth, w, b, homogeneous, x=X):
    """(nngp, ntk, e): the true kernels are 2**e times nngp, ntk (x against itself)."""
    k = x @ x.T / x.shape[1]
    t, e = None, 0
    for layer in range(depth + 1):
        k = w * w * k + math.ldexp(b * b, -e)
        t = k.copy() if t is None else w * w * t + k
        if layer == depth:
            return k, t, e
        k, dot = act_map(k)
        t = t * dot
        if homogeneous:  # keep the largest variance in [1, 2)
            shift = math.frexp(np.diag(k).max())[1] - 1
            k, t, e = k / 2.0 ** shift, t / 2.0 ** shift, e + shift


def true_ratio(got, got_e, ref, ref_e):
    """got·2**got_e / (ref·2**ref_e), elementwise, in float64."""
    return np.ldexp(got.double().numpy(), got_e - ref_e) / ref


# -- the ReLU family ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slope,w,b,depth", [
    (0.0, 2.0, 0.0, 1000), (0.1, 2.0, 0.1, 1000), (0.0, 0.5, 0.0, 1000),  # up, up, down
    (0.0, 2.0, 0.0, 10000), (0.1, 2.0, 0.1, 10000)])
def test_relu_family_deep_normalized(depth, dtype, slope, w, b):
    act = nk.ReLU() if slope == 0.0 else nk.LeakyReLU(slope)
    arch = chain(act, depth, w, b)
    x = torch.tensor(X, dtype=dtype)
    k = arch.kernel(x, normalize=True, options=ONE_THREAD)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    assert (k.nngp.diagonal() > 0).all()
    ref_k, ref_t, ref_e = reference(lambda m: relu_family_map(m, slope), depth, w, b, True)
    if b == 0.0 and slope == 0.0:
        # homogeneity: the diagonal is exactly |x|²/d · W² · (W²/2)^depth
        log2_diag = np.log2((X * X).sum(1) / 3) + 2 * math.log2(w) + depth * math.log2(w * w / 2)
        got = np.log2(k.nngp.diagonal().double().numpy()) + k.log2_scale
        np.testing.assert_allclose(got, log2_diag, rtol=0, atol=1e-9 if dtype == torch.float64
                                   else 1e-5)
    tol = 1e-7 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(true_ratio(k.nngp, k.log2_scale, ref_k, ref_e), 1.0, rtol=tol)
    np.testing.assert_allclose(true_ratio(k.ntk, k.log2_scale, ref_t, ref_e), 1.0, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unrepresentable_kernel_names_normalize(dtype):
    arch = chain(nk.ReLU(), 1100, 2.0, 0.1)  # true values near 2^1100
    with pytest.raises(OverflowError, match=r"overflow.*normalize=True"):
        arch.kernel(torch.tensor(X, dtype=dtype), options=ONE_THREAD)
    tiny = chain(nk.ReLU(), 1000, 0.5, None)
    with pytest.raises(OverflowError, match=r"underflow.*normalize=True"):
        tiny.kernel(torch.tensor(X, dtype=dtype), options=ONE_THREAD)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_moderate_depth_normalized_equals_true_kernel(parameterization):
    """Depth 20 with W = 8: true values near 2^100, representable in float64; the scaled
    kernel times 2**log2_scale equals the plain one and the unnormalized reference (NTK,
    standard parameterization: Θ' = n_in Σ + W² Θ + 1, n_in = 3 then 1)."""
    arch = nk.Sequential(*[nk.Linear(1, W_std=8.0, b_std=0.3, parameterization=parameterization),
                           nk.ReLU()] * 20,
                         nk.Linear(1, W_std=8.0, b_std=0.3, parameterization=parameterization))
    x = torch.tensor(X)
    plain = arch.kernel(x, options=ONE_THREAD)
    scaled = arch.kernel(x, normalize=True, options=ONE_THREAD)
    assert plain.log2_scale == 0 and scaled.log2_scale > 64
    for name in ("nngp", "ntk"):
        back = mul_pow2(scaled.get(name), scaled.log2_scale)
        torch.testing.assert_close(back, plain.get(name), rtol=1e-13, atol=0)
    k = X @ X.T / 3
    t = None
    for layer in range(21):  # plain float64 recursion in true units
        if parameterization == "standard":
            n_in = 3 if t is None else 1
            t = n_in * k + 1 if t is None else n_in * k + 64 * t + 1
        k = 64 * k + 0.09
        if parameterization == "ntk":
            t = k.copy() if t is None else 64 * t + k
        if layer < 20:
            k, dot = relu_family_map(k, 0.0)
            t = t * dot
    np.testing.assert_allclose(plain.nngp.numpy(), k, rtol=1e-12)
    np.testing.assert_allclose(plain.ntk.numpy(), t, rtol=1e-12)


def test_tile_alone_equals_tile_in_assembly():
    """normalize=True: tiles of different scales are brought to the largest exactly, so a tile
    computed alone, rescaled by its power of two, has the bits of the assembled matrix."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((8, 3)) * np.array([1.0] * 4 + [1e6] * 4)[:, None])
    arch = chain(nk.ReLU(), 200, 2.0, None)
    opts = KernelOptions(threads=1)
    whole = arch.kernel(x, normalize=True, batch_size=4, options=opts)
    scales = set()
    for r, c in ((0, 0), (0, 4), (4, 4)):
        a, b = x[r:r + 4], (None if r == c else x[c:c + 4])
        tile = kernel_tile(arch, a, b, opts, normalize=True)
        e = int(tile["log2_scale"])
        scales.add(e)
        exps = {"nngp": (e, whole.log2_scale),
                "ntk": (int(tile.get("ntk/log2_scale", e)), whole.ntk_log2_scale)}
        for name in ("nngp", "ntk"):
            expect = mul_pow2(tile[name], exps[name][0] - exps[name][1])
            assert torch.equal(whole.get(name)[r:r + 4, c:c + 4], expect)
            if r != c:
                assert torch.equal(whole.get(name)[c:c + 4, r:r + 4], expect.T)
    assert len(scales) > 1 and whole.log2_scale == max(scales)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deep_fused_conv_chain(dtype):
    """[Conv2d(1x1), ReLU] x 300 on 2x2 images (the fused prefix, which carries no scale, is cut
    where it could leave the dtype's range): each position is a fully-connected network of its
    pixel's channels, and Flatten averages the positions' kernels."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 2, 2))
    depth = 300  # true values near 2^300: beyond float32 (and inside one fused pass)
    arch = nk.Sequential(*[nk.Conv2d(1, 1, W_std=2.0, b_std=None), nk.ReLU()] * depth,
                         nk.Flatten(), nk.Linear(1, W_std=2.0, b_std=None))
    k = arch.kernel(torch.tensor(x, dtype=dtype), normalize=True, options=ONE_THREAD)
    refs = [reference(lambda m: relu_family_map(m, 0.0), depth, 2.0, 0.0, True, x[:, :, i, j])
            for i in range(2) for j in range(2)]
    top = max(e for _, _, e in refs)
    ref_k = sum(np.ldexp(r[0], r[2] - top) for r in refs) / 4
    ref_t = sum(np.ldexp(r[1], r[2] - top) for r in refs) / 4
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(true_ratio(k.nngp, k.log2_scale, ref_k, top), 1.0, rtol=tol)
    np.testing.assert_allclose(true_ratio(k.ntk.diagonal(), k.log2_scale, np.diag(ref_t), top),
                               1.0, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deep_residual(dtype):
    """1,000 blocks x + Linear(ReLU(x)) (W = 1.5, b = 0.1): kernels grow by about 2^0.7 a
    block; the branch and the identity are summed at a common scale.
    Σ' = Σ + W² Σ_relu + b²,  Θ' = Θ + W² Θ Σ̇ + W² Σ_relu + b²."""
    depth, w, b = 1000, 1.5, 0.1
    block = nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(1, W_std=w, b_std=b)))
    arch = nk.Sequential(nk.Linear(1, W_std=w, b_std=b), *[block] * depth)
    k = arch.kernel(torch.tensor(X, dtype=dtype), normalize=True, options=ONE_THREAD)
    m = X @ X.T / 3 * w * w + b * b
    t, e = m.copy(), 0
    for _ in range(depth):
        r, dot = relu_family_map(m, 0.0)
        branch = w * w * r + math.ldexp(b * b, -e)
        m, t = m + branch, t + w * w * t * dot + branch
        shift = math.frexp(np.diag(m).max())[1] - 1
        m, t, e = m / 2.0 ** shift, t / 2.0 ** shift, e + shift
    assert e > 600
    tol = 1e-8 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(true_ratio(k.nngp, k.log2_scale, m, e), 1.0, rtol=tol)
    np.testing.assert_allclose(true_ratio(k.ntk.diagonal(), k.log2_scale, np.diag(t), e), 1.0,
                               rtol=tol)


# -- smooth activations -------------------------------------------------------------------------
SMOOTH = {"erf": (nk.Erf, erf_map), "tanh": (nk.Tanh, tanh_map)}


@pytest.mark.parametrize("depth", [1000, pytest.param(10000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["erf", "tanh"])
def test_smooth_deep_fixed_point(depth, dtype, name):
    """W=1, b=0.1: the kernels converge to the ordered-phase fixed point (finite, O(1))."""
    layer, act_map = SMOOTH[name]
    k = chain(layer(), depth, 1.0, 0.1).kernel(torch.tensor(X[:3], dtype=dtype),
                                               options=ONE_THREAD)
    assert k.log2_scale == 0
    # converged long before depth 1,000 (to 1e-16): deeper layers map the fixed point to itself
    ref_k, ref_t, _ = reference(act_map, min(depth, 1000), 1.0, 0.1, False, X[:3])
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(k.nngp.double().numpy(), ref_k, rtol=tol)
    np.testing.assert_allclose(k.ntk.double().numpy(), ref_t, rtol=tol)


# -- the NTK's own scale (chaotic phase) and small variances, against mpmath -------------------
# mpmath references: the depth recursion per pair of inputs in 40-digit arithmetic, whose
# exponents are unbounded (true values like 2^-1600 or 2^400000 are plain numbers there).
import mpmath as mp  # noqa: E402

X3 = X[:3]


def _mp_erf_pair(q1, q2, c):
    """(E[erf(u) erf(v)], E[erf'(u) erf'(v)]) in mpmath (Williams 1997)."""
    prod = (1 + 2 * q1) * (1 + 2 * q2)
    return (2 / mp.pi) * mp.asin(2 * c / mp.sqrt(prod)), (4 / mp.pi) / mp.sqrt(prod - 4 * c * c)


def _mp_relu_family_pair(slope):
    def pair(q1, q2, c):
        qq = mp.sqrt(q1 * q2)
        rho = max(min(c / qq, mp.mpf(1)), mp.mpf(-1))
        theta = mp.acos(rho)
        half, diff2 = (1 + slope ** 2) / mp.mpf(2), (1 - slope) ** 2
        value = half * c + diff2 / (2 * mp.pi) * qq * (mp.sin(theta) - theta * mp.cos(theta))
        return value, half - diff2 / (2 * mp.pi) * theta
    return pair


def mp_reference(pair_map, depth, w, b, x=X3):
    """Full (n, n) NNGP and NTK of ``chain(act, depth, w, b)`` as mpmath matrices."""
    with mp.workdps(40):
        n = x.shape[0]
        w2, b2 = mp.mpf(w) ** 2, mp.mpf(b) ** 2
        k = [[mp.fsum(mp.mpf(float(a)) * mp.mpf(float(c)) for a, c in zip(x[i], x[j])) / x.shape[1]
              for j in range(n)] for i in range(n)]
        t = None
        for layer in range(depth + 1):
            k = [[w2 * k[i][j] + b2 for j in range(n)] for i in range(n)]
            t = ([row[:] for row in k] if t is None else
                 [[w2 * t[i][j] + k[i][j] for j in range(n)] for i in range(n)])
            if layer == depth:
                return k, t
            new_k = [[None] * n for _ in range(n)]
            for i in range(n):
                for j in range(i, n):
                    value, dot = pair_map(k[i][i], k[j][j], k[i][j])
                    new_k[i][j] = new_k[j][i] = value
                    t[i][j] = t[i][j] * dot
                    if j != i:
                        t[j][i] = t[j][i] * dot
            k = new_k


def assert_matches_mp(got, e, ref, rtol, dtype):
    """got·2**e against the mpmath matrix ``ref`` entry by entry: relative error below ``rtol``
    for entries whose true size is within the dtype's range below the largest one (2^-(range
    - 40 bits)); smaller entries, which underflow in the normalized matrix, at most that size."""
    got = got.double().numpy()
    top = max(abs(v) for row in ref for v in row)
    floor = top * mp.mpf(2) ** int(math.log2(torch.finfo(dtype).tiny) + 40)
    checked = 0
    for i, row in enumerate(ref):
        for j, want in enumerate(row):
            value = mp.ldexp(mp.mpf(float(got[i, j])), int(e))
            if abs(want) > floor:
                assert abs(value / want - 1) < rtol, (i, j, value, want)
                checked += 1
            else:
                assert abs(value) <= floor * 2, (i, j, value, want)
    assert checked >= min(len(ref), len(ref[0]))  # at least the diagonal


@functools.lru_cache(maxsize=None)
def _mp_case(name, w, b, depth):
    """``mp_reference`` of ``chain(<name>, depth, w, b)`` on X3, computed once per case (both
    dtypes compare against it)."""
    pair = {"erf": _mp_erf_pair, "relu": _mp_relu_family_pair(0.0),
            "leaky": _mp_relu_family_pair(0.1)}[name]
    return mp_reference(pair, depth, w, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,w,b,depth", [
    ("erf", 3.0, 0.0, 1000), ("erf", 3.0, 0.1, 1000), ("erf", 1.5, 1.0, 1000),
    ("erf", 3.0, 1.0, 10000),  # chaotic: the NTK grows like χ^L, the NNGP stays bounded
    ("erf", 0.5, 0.0, 1000), ("erf", 1.0, 0.0, 1000),  # ordered, no bias: q -> 0
    ("relu", 3.0, 1.0, 1000), ("leaky", 0.5, 0.0, 10000),
    pytest.param("relu", 2.0, 0.0, 10000, marks=pytest.mark.slow)])
def test_deep_kernels_against_mpmath(name, w, b, depth, dtype):
    """Mantissa and exponent of every entry (NNGP and NTK, each at its own scale) against the
    40-digit recursion: chaotic Erf NTKs reach 2^1100 (2^11000 at depth 10,000) while the NNGP
    stays O(1); Erf without a bias at W = 0.5 has variances near 2^-1650 (the small-variance
    map); the ReLU family's correlations tend to 1, where its angles come from the chord
    (``ntkit.layers.chord``; float32 ReLU W = 2 at depth 10,000: NTK ~5e-5 off)."""
    layer = {"erf": nk.Erf(), "relu": nk.ReLU(), "leaky": nk.LeakyReLU(0.1)}[name]
    k = chain(layer, depth, w, b).kernel(torch.tensor(X3, dtype=dtype), normalize=True,
                                         options=ONE_THREAD)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    ref_k, ref_t = _mp_case(name, w, b, depth)
    # float32: relative rounding accumulates ~L·eps along the recursion
    rtol = (1e-9 if depth <= 1000 else 1e-7) if dtype == torch.float64 else 3e-3
    assert_matches_mp(k.nngp, k.log2_scale, ref_k, rtol, dtype)
    assert_matches_mp(k.ntk, k.ntk_log2_scale, ref_t, rtol, dtype)


def test_chaotic_unnormalized_names_normalize():
    """The un-normalized NTK of a chaotic network is not representable: a clear error (its
    NNGP alone is, and is returned when only it is asked for)."""
    arch = chain(nk.Erf(), 1000, 3.0, 0.0)
    x = torch.tensor(X3)
    with pytest.raises(OverflowError, match=r"ntk kernel.*overflow.*normalize=True"):
        arch.kernel(x, options=ONE_THREAD)
    nngp = arch.kernel(x, get="nngp", options=ONE_THREAD).nngp
    ref_k, _ = mp_reference(_mp_erf_pair, 1000, 3.0, 0.0)
    assert_matches_mp(nngp, 0, ref_k, 1e-9, torch.float64)
    k = arch.kernel(x, normalize=True, options=ONE_THREAD)
    assert k.ntk_log2_scale > 1024 and k.log2_scale == 0  # beyond float64


def _mp_tanh_diag_moments(q):
    """(E[tanh(u)²], E[tanh'(u)²]) for u ~ N(0, q) in mpmath: adaptive quadrature, or for
    q < 1e-12 the Taylor series of tanh² and sech⁴ with the Gaussian moments E[u^2k] =
    (2k-1)!! q^k (6 terms: the remainder is below q^6)."""
    if q < mp.mpf("1e-12"):
        a = mp.taylor(lambda x: mp.tanh(x) ** 2, 0, 12)
        d = mp.taylor(lambda x: mp.sech(x) ** 4, 0, 12)
        moments = [mp.fac2(2 * k - 1) * q ** k if k else mp.mpf(1) for k in range(7)]
        return (mp.fsum(a[2 * k] * moments[k] for k in range(7)),
                mp.fsum(d[2 * k] * moments[k] for k in range(7)))
    s = mp.sqrt(q)
    gauss = 1 / mp.sqrt(2 * mp.pi)
    f = mp.quad(lambda z: mp.tanh(s * z) ** 2 * mp.exp(-z * z / 2), [-mp.inf, 0, mp.inf])
    g = mp.quad(lambda z: mp.sech(s * z) ** 4 * mp.exp(-z * z / 2), [-mp.inf, 0, mp.inf])
    return gauss * f, gauss * g


def mp_tanh_diagonal(q0, depth, w, b):
    """(Σ(x, x), Θ(x, x)) of ``chain(Tanh(), depth, w, b)`` for an input of variance q0, in
    25-digit mpmath. Once q is at its fixed point (to 1e-22) the rest of the NTK recursion,
    Θ ← χΘ + q*, is summed in closed form."""
    with mp.workdps(25):
        w2, b2 = mp.mpf(w) ** 2, mp.mpf(b) ** 2
        q = w2 * mp.mpf(q0) + b2
        t = q
        for layer in range(depth):
            m, dm = _mp_tanh_diag_moments(q)
            new_q = w2 * m + b2
            t = w2 * dm * t + new_q
            if abs(new_q - q) < mp.mpf("1e-22") * q and b2 + q > mp.mpf("1e-3"):
                chi, rest = w2 * dm, depth - layer - 1
                return new_q, chi ** rest * t + new_q * (chi ** rest - 1) / (chi - 1)
            q = new_q
        return q, t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("w,b", [(3.0, 0.0), (1.5, 0.1), (0.5, 0.0)])
def test_tanh_deep_diagonal_against_mpmath(w, b, dtype):
    """Tanh at depth 1,000: chaotic (W = 3, 1.5: NTK ~ 2^700), and ordered without a bias
    (W = 0.5: variances near 2^-2000, the small-variance map). The diagonal (each input with
    itself) against a 25-digit one-dimensional recursion."""
    depth = 1000
    k = chain(nk.Tanh(), depth, w, b).kernel(torch.tensor(X3, dtype=dtype), normalize=True,
                                             options=ONE_THREAD)
    rtol = 1e-8 if dtype == torch.float64 else 3e-3
    for i in range(3):
        q, t = mp_tanh_diagonal((X3[i] ** 2).sum() / 3, depth, w, b)
        got_q = mp.ldexp(mp.mpf(float(k.nngp[i, i])), k.log2_scale)
        got_t = mp.ldexp(mp.mpf(float(k.ntk[i, i])), k.ntk_log2_scale)
        assert abs(got_q / q - 1) < rtol, (i, got_q, q)
        assert abs(got_t / t - 1) < rtol, (i, got_t, t)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_variance_needs_first_derivative(dtype):
    """φ = x² (φ'(0) = 0) without a bias: the variance falls like q² per layer and leaves any
    representable scale; a clear error instead of zeros. With a bias it is fine."""
    square = nk.Elementwise(lambda x: x * x)
    with pytest.raises(OverflowError, match=r"Elementwise.*b_std > 0"):
        chain(square, 40, 0.5, 0.0).kernel(torch.tensor(X3, dtype=dtype), normalize=True,
                                           options=ONE_THREAD)
    k = chain(square, 40, 0.5, 0.3).kernel(torch.tensor(X3, dtype=dtype), normalize=True,
                                           options=ONE_THREAD)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()


GRID = [(w, b) for w in (0.5, 1.0, 1.5, 3.0) for b in (0.0, 0.1, 1.0)]


def _grid_case(name, depth, dtype, w, b):
    """Depth ``depth`` for every (W_std, b_std) of the grid: finite normalized kernels with
    positive diagonals, each checked against a float64 numpy recursion that carries its own
    exponents for the NNGP and the NTK (``reference_scaled``); the un-normalized kernel either
    equals it or raises a clear OverflowError."""
    layer, act_map = {"relu": (nk.ReLU(), lambda m: relu_family_map(m, 0.0)),
                      "leaky": (nk.LeakyReLU(0.1), lambda m: relu_family_map(m, 0.1)),
                      "erf": (nk.Erf(), erf_map)}[name]
    arch = chain(layer, depth, w, b)
    x = torch.tensor(X3, dtype=dtype)
    k = arch.kernel(x, normalize=True, options=ONE_THREAD)
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    assert (k.nngp.diagonal() > 0).all() and (k.ntk.diagonal() > 0).all()
    ref_k, ek, ref_t, et = reference_scaled(act_map, depth, w, b)
    tol = 1e-6 if dtype == torch.float64 else 5e-3
    np.testing.assert_allclose(true_ratio(k.nngp.diagonal(), k.log2_scale, np.diag(ref_k), ek),
                               1.0, rtol=tol)
    np.testing.assert_allclose(true_ratio(k.ntk.diagonal(), k.ntk_log2_scale, np.diag(ref_t), et),
                               1.0, rtol=tol)
    try:
        plain = arch.kernel(x, options=ONE_THREAD)
    except OverflowError as err:
        assert "normalize=True" in str(err)
    else:
        torch.testing.assert_close(plain.nngp, mul_pow2(k.nngp, k.log2_scale), rtol=1e-12, atol=0)


def reference_scaled(act_map, depth, w, b, x=X3):
    """(nngp, e_k, ntk, e_t): float64 recursion with the NNGP and the NTK each renormalized to
    a largest entry in [1, 2) after every layer, carrying their exponents; the small-variance
    regime of Erf (q < 2^-900) is taken in its linear limit E[erf erf] = (4/π) Σ."""
    k = x @ x.T / x.shape[1]
    t, ek, et = None, 0, 0
    for layer in range(depth + 1):
        k = w * w * k + math.ldexp(b * b, -ek)
        if t is None:
            t, et = k.copy(), ek
        else:
            t = w * w * t + np.ldexp(k, ek - et)
        if layer == depth:
            return k, ek, t, et
        if act_map is not erf_map:  # the ReLU family is homogeneous: maps scaled values
            k, dot = act_map(k)
        elif math.log2(np.diag(k).max()) + ek < -900:
            k, dot = k * (4 / math.pi), np.full_like(k, 4 / math.pi)
        else:
            k, ek = np.ldexp(k, ek), 0
            k, dot = act_map(k)
        t = t * dot
        for name in ("k", "t"):
            m = np.abs(k if name == "k" else t).max()
            shift = math.frexp(m)[1] - 1
            if name == "k":
                k, ek = np.ldexp(k, -shift), ek + shift
            else:
                t, et = np.ldexp(t, -shift), et + shift


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["relu", "leaky", "erf"])
def test_depth_1000_grid(name, dtype):
    for w, b in GRID:
        _grid_case(name, 1000, dtype, w, b)


@pytest.mark.deep
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["relu", "leaky", "erf"])
def test_depth_10000_grid(name, dtype):
    for w, b in GRID:
        _grid_case(name, 10000, dtype, w, b)


# ordered without a bias, near the edge of chaos with a small bias, chaotic with a large bias
GRID_CORNERS = [(0.5, 0.0), (1.5, 0.1), (3.0, 1.0)]


@pytest.mark.parametrize("depth,grid", [
    (1000, GRID_CORNERS),
    pytest.param(1000, GRID, marks=pytest.mark.deep, id="1000-full"),
    pytest.param(10000, GRID, marks=pytest.mark.deep, id="10000-full")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tanh_grid_finite(depth, grid, dtype):
    """Tanh over the grid: finite normalized kernels with positive diagonals (values against
    mpmath: test_tanh_deep_diagonal_against_mpmath). The default suite takes three corners of
    the grid at depth 1,000; the whole grid (~100 s per dtype) runs with -m deep."""
    for w, b in grid:
        k = chain(nk.Tanh(), depth, w, b).kernel(torch.tensor(X3, dtype=dtype), normalize=True,
                                                 options=ONE_THREAD)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), (w, b)
        assert (k.nngp.diagonal() > 0).all() and (k.ntk.diagonal() > 0).all(), (w, b)


def test_chaotic_tiles_assemble_at_their_own_ntk_scale():
    """Erf, W = 3, depth 300 (NTK near 2^330, NNGP O(1)): each tile's NTK carries its own scale
    ("ntk/log2_scale"); assembled, every tile equals its standalone bits times a power of two,
    and the result's NTK scale is the largest tile's."""
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.standard_normal((8, 3)) * np.array([0.1] * 4 + [10.0] * 4)[:, None])
    arch = chain(nk.Erf(), 300, 3.0, 0.0)
    whole = arch.kernel(x, normalize=True, batch_size=4, options=ONE_THREAD)
    assert whole.ntk_log2_scale > 300 and whole.log2_scale == 0
    tops = []
    for r, c in ((0, 0), (0, 4), (4, 4)):
        tile = kernel_tile(arch, x[r:r + 4], None if r == c else x[c:c + 4], ONE_THREAD,
                           normalize=True)
        e_t = int(tile["ntk/log2_scale"])
        tops.append(e_t)
        expect = mul_pow2(tile["ntk"], e_t - whole.ntk_log2_scale)
        assert torch.equal(whole.ntk[r:r + 4, c:c + 4], expect)
    assert whole.ntk_log2_scale == max(tops)
