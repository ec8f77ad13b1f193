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
    if dtype == torch.float64:
        np.testing.assert_allclose(true_ratio(k.ntk, k.log2_scale, ref_t, ref_e), 1.0, rtol=tol)
    else:  # float32's off-diagonal NTK loses digits to arccos near correlation 1 (not the scale)
        np.testing.assert_allclose(true_ratio(k.ntk.diagonal(), k.log2_scale,
                                              np.diag(ref_t), ref_e), 1.0, rtol=tol)


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
        for name in ("nngp", "ntk"):
            expect = mul_pow2(tile[name], e - whole.log2_scale)
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_smooth_activation_needs_true_values(dtype):
    """Erf after a variance that decays like (W² 4/π)^L: un-normalized values underflow; an
    OverflowError names the layer and its depth instead of a silent 0."""
    arch = chain(nk.Erf(), 1000, 0.5, None)
    with pytest.raises(OverflowError, match=r"layer \d+ \(Erf\).*not representable"):
        arch.kernel(torch.tensor(X, dtype=dtype), normalize=True, options=ONE_THREAD)
