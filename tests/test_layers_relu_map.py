"""The one ReLU-family map (ntkit.layers.relu_map): the reference against mpmath, and every
drop-in (torch fast path, torch fused pass eager and with the polynomial arccos, C++ conv pass,
C++ dense block, the precise path of the layers) against the reference, at the edge cases of
the conventions: zero variances, correlations exactly ±1, within a few ulps of ±1 and beyond
±1 by rounding, and nearly equal inputs."""
import math

import mpmath
import numpy as np
import pytest
import torch

from ntkit.layers import conv_fused, conv_native, relu_map
from ntkit.layers.relu import ABReLU

AB = [(0.0, 1.0), (-0.3, 0.8), (0.5, -1.2)]


def _mp_map(c, v1, v2, a, b, theta=None):
    """The arc-cosine formulas (Cho & Saul 2009) in 40-digit arithmetic, with the zero
    variance convention θ = π/2; θ given (precise path) or arccos of the correlation."""
    mpmath.mp.dps = 40
    c, v1, v2 = mpmath.mpf(c), mpmath.mpf(v1), mpmath.mpf(v2)
    hs, k = (mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) / 2, (mpmath.mpf(a) - b) ** 2 / (2 * mpmath.pi)
    sv = mpmath.sqrt(v1 * v2)
    if sv == 0:
        theta = mpmath.pi / 2
    elif theta is None:
        theta = mpmath.acos(max(-1, min(1, c / sv)))
    s = mpmath.sin(theta) - theta * mpmath.cos(theta)
    return float(hs * c + k * sv * s), float(hs - k * theta)


def _edge_block():
    """(c, v1, v2) rows of pre-activation covariances covering the edges: generic values,
    ρ = ±1 exactly, ρ a few ulps inside and outside ±1, ρ = 0, zero variances (one or both)."""
    rng = np.random.default_rng(11)
    rows = []
    for _ in range(40):
        v1, v2 = rng.uniform(0.2, 3.0, 2)
        rows.append((rng.uniform(-1, 1) * math.sqrt(v1 * v2), v1, v2))
    eps = np.finfo(np.float64).eps
    for v in (0.7, 2.0):
        for sign in (1.0, -1.0):
            for off in (0.0, eps, 2 * eps, -eps, -2 * eps):  # ±1, inside, beyond by rounding
                rows.append((sign * v * (1 + off), v, v))
        rows.append((0.0, v, v))
    rows += [(0.0, 0.0, 1.3), (0.0, 1.3, 0.0), (0.0, 0.0, 0.0)]
    return np.array(rows)


def _mp_block(rows, a, b):
    return np.array([_mp_map(c, v1, v2, a, b) for c, v1, v2 in rows]).T


@pytest.mark.parametrize("ab", AB)
def test_reference_against_mpmath(ab):
    """exact_map in float64 (no distance) against the formulas in 40 digits: 1e-15 of the
    scale. (Within 4 ulps of ±1 the reference snaps ρ to ±1; θ moves by at most
    sqrt(8 eps) = 4e-8 there, so those rows are compared with that tolerance on Σ̇ below.)"""
    rows = _edge_block()
    ref_nngp, ref_dot = _mp_block(rows, *ab)
    t = torch.tensor(rows)
    nngp, dot, dist = relu_map.reference(t[:, 0], t[:, 1], t[:, 2], *ab)
    assert dist is None
    scale = np.abs(ref_nngp).max()
    np.testing.assert_allclose(nngp.numpy(), ref_nngp, rtol=0, atol=1e-15 * scale)
    near = np.abs(rows[:, 0]) >= np.sqrt(rows[:, 1] * rows[:, 2]) * (1 - 5e-16)
    np.testing.assert_allclose(dot.numpy()[~near], ref_dot[~near], rtol=0, atol=2e-16)
    np.testing.assert_allclose(dot.numpy()[near], ref_dot[near], rtol=0, atol=5e-8)


def test_reference_edge_conventions():
    """In closed form: zero variance gives θ = π/2, i.e. Σ̇ = hs - k π/2 = (a+b)²/4 = φ'(0)²
    with φ'(0) = (a+b)/2, and Σ' = hs c; ρ = ±1 (also beyond by rounding) gives θ = 0 or π."""
    a, b = -0.3, 0.8
    hs, k = (a * a + b * b) / 2, (a - b) ** 2 / (2 * math.pi)
    c = torch.tensor([0.0, 0.0, 2.0 * (1 + 2e-16), -2.0, 2.0 * (1 - 4e-16)], dtype=torch.float64)
    v1 = torch.tensor([0.0, 1.5, 2.0, 2.0, 2.0], dtype=torch.float64)
    v2 = torch.tensor([0.7, 0.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    nngp, dot, _ = relu_map.reference(c, v1, v2, a, b)
    assert dot[0] == dot[1] == pytest.approx((a + b) ** 2 / 4, abs=1e-16)
    assert nngp[0] == nngp[1] == 0.0
    np.testing.assert_allclose(dot[2:].numpy(), [hs, hs - k * math.pi, hs], rtol=0, atol=1e-16)
    # θ = 0: Σ' = hs c; θ = π: Σ' = hs c + k v π
    np.testing.assert_allclose(nngp[2:].numpy(),
                               [hs * c[2], hs * -2.0 + k * 2.0 * math.pi, hs * c[4]],
                               rtol=1e-15)


def test_precise_path_against_mpmath():
    """Nearly equal inputs x, x + δ (δ down to 1e-9 relative): the reference with the exact
    squared distance against mpmath, where θ from the correlation would lose half the digits;
    also the map of the distance, E[(φ(u)-φ(v))²] = hs d - 2k sqrt(v1 v2) S(θ)."""
    rng = np.random.default_rng(5)
    a, b = 0.0, 1.0
    mpmath.mp.dps = 40
    for rel in (1e-3, 1e-6, 1e-9):
        x = rng.standard_normal(6)
        y = x + rel * rng.standard_normal(6)
        xm, ym = [mpmath.mpf(float(t)) for t in x], [mpmath.mpf(float(t)) for t in y]
        v1 = sum(t * t for t in xm) / 6
        v2 = sum(t * t for t in ym) / 6
        c = sum(p * q for p, q in zip(xm, ym)) / 6
        d = sum((p - q) ** 2 for p, q in zip(xm, ym)) / 6
        # the map of the float64 inputs: θ from (d, v1, v2) rounded to float64 (well
        # conditioned), which is the exact angle up to their rounding
        c, v1, v2, d = (mpmath.mpf(float(t)) for t in (c, v1, v2, d))
        gap = mpmath.sqrt(v1) - mpmath.sqrt(v2)
        theta = 2 * mpmath.asin(mpmath.sqrt((d - gap ** 2) / (4 * mpmath.sqrt(v1 * v2))))
        ref_nngp, ref_dot = _mp_map(c, v1, v2, a, b, theta)
        s = mpmath.sin(theta) - theta * mpmath.cos(theta)
        ref_dist = float(d / 2 - 2 / (2 * mpmath.pi) * mpmath.sqrt(v1 * v2) * s)
        nngp, dot, dist = relu_map.reference(*(torch.tensor([float(t)], dtype=torch.float64)
                                               for t in (c, v1, v2)),
                                             a, b, dist=torch.tensor([float(d)], dtype=torch.float64))
        assert float(nngp) == pytest.approx(ref_nngp, rel=1e-15)
        assert float(dot) == pytest.approx(ref_dot, rel=1e-14)
        assert float(dist) == pytest.approx(ref_dist, rel=1e-12)


def test_acos_poly_accuracy():
    """acos_poly against numpy's arccos in float64 over [-1, 1] (and the endpoints)."""
    x = torch.linspace(-1, 1, 200001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([1 - 1e-16, -1 + 1e-16, 1e-300], dtype=torch.float64)])
    ref = np.arccos(x.numpy())
    np.testing.assert_allclose(relu_map.acos_poly(x).numpy(), ref, rtol=0, atol=1e-15)


def test_asin_polynomials_against_mpmath():
    """Both shared polynomials asin(y)/y = P(y²) on [0, 1/2] against mpmath: degree 12 within
    3e-17 relative (the fit's 1.5e-17 plus the rounding of its coefficients), degree 5 within 5e-9."""
    mpmath.mp.dps = 30
    for coefs, tol in ((relu_map.ASIN_COEFS_F64, 3e-17), (relu_map.ASIN_COEFS_F32, 5e-9)):
        for y in np.linspace(1e-3, 0.5, 201):
            z = mpmath.mpf(float(y)) ** 2
            p = sum(mpmath.mpf(c) * z ** i for i, c in enumerate(coefs))
            exact = mpmath.asin(mpmath.mpf(float(y))) / mpmath.mpf(float(y))
            assert abs(p / exact - 1) < tol


# -- the drop-ins against the reference -------------------------------------------------------
def _factors(t):
    return relu_map.rank_one_factors(t)


def _drop_ins(rows, a, b, dtype):
    """Every implementation of the map without a distance on the rows (as 1-D blocks, or the
    (n, 1) x (1, n) diagonal of a dense block for the dense ones), in ``dtype``."""
    t = torch.tensor(rows, dtype=dtype)
    c, v1, v2 = t[:, 0].contiguous(), t[:, 1].contiguous(), t[:, 2].contiguous()
    hs, diff2 = relu_map.coefs(a, b)
    r1, g1 = _factors(v1)
    r2, g2 = _factors(v2)
    out = {}
    out["fast"] = relu_map.fast_map(c.clone(), r1, r2, g1, g2, hs, diff2, True)
    out["fast-poly"] = relu_map.fast_map(c.clone(), r1, r2, g1, g2, hs, diff2, True, poly=True)
    # the torch fused pass and the C++ pass: a 1x1 conv with W_std² = 1, no bias, on a
    # (n, 1, 1) same-position (paired) state, i.e. exactly the activation of the rows; the NTK
    # input Θ = 1 of a frozen layer gives Θ' = Σ̇
    n = len(rows)
    ps = c.reshape(n, 1, 1).contiguous()
    pt = torch.ones_like(ps)
    cfg = (1, 1, 1.0, 0.0, False, hs, diff2, False)
    args = [t.reshape(n, 1, 1).contiguous() for t in (r1, r2, g1, g2)]
    for name, poly in (("fused-eager", False), ("fused-poly", True)):
        os_, ot = torch.zeros_like(ps), torch.zeros_like(ps)
        conv_fused._step(ps, pt, os_, ot, *args, cfg, poly)
        out[name] = (os_.reshape(-1), ot.reshape(-1))
    if conv_native.available():
        os_, ot = torch.zeros_like(ps), torch.zeros_like(ps)
        conv_native.conv_relu_step(ps, pt, os_, ot, *args,
                                   (conv_native.REGIME_DIAG_PAIRED, n, 0, 1, 1, 1, 1),
                                   (1.0, 0.0, hs, diff2 / (2 * math.pi), 0.0))
        out["native-conv"] = (os_.reshape(-1), ot.reshape(-1))
        cov = torch.diag(c).contiguous()  # off-diagonal entries: c = 0 (θ = π/2), unused
        dot = conv_native.arccos_dense(cov, r1, r2, g1, g2, hs, diff2, True)
        out["native-dense"] = (torch.diagonal(cov), torch.diagonal(dot))
    return out


@pytest.mark.parametrize("ab", AB)
def test_drop_ins_match_reference_float64(ab):
    """Every drop-in equals the reference to float64 rounding at every edge row."""
    rows = _edge_block()
    t = torch.tensor(rows)
    ref_nngp, ref_dot, _ = relu_map.reference(t[:, 0], t[:, 1], t[:, 2], *ab)
    scale = float(ref_nngp.abs().max())
    for name, (nngp, dot) in _drop_ins(rows, *ab, torch.float64).items():
        torch.testing.assert_close(nngp, ref_nngp, rtol=0, atol=2e-15 * scale, msg=name)
        torch.testing.assert_close(dot, ref_dot, rtol=0, atol=2e-15, msg=name)


@pytest.mark.parametrize("ab", AB)
def test_drop_ins_match_reference_float32(ab):
    """float32: the same conventions at the edges (zero variances and ρ = ±1 give the
    reference's values to float32 rounding; the float32 snapping limit is 4 float32 ulps,
    so ρ within a few float64 ulps of ±1 is snapped too), and generic rows to float32
    rounding of ρ (θ moves by up to eps/sin θ)."""
    rows = _edge_block()
    t = torch.tensor(rows)
    ref_nngp, ref_dot, _ = relu_map.reference(t[:, 0], t[:, 1], t[:, 2], *ab)
    sv = torch.sqrt(t[:, 1] * t[:, 2])
    generic = (t[:, 0].abs() < 0.999 * sv)
    scale = float(ref_nngp.abs().max())
    for name, (nngp, dot) in _drop_ins(rows, *ab, torch.float32).items():
        nngp, dot = nngp.double(), dot.double()
        edge = ~generic
        torch.testing.assert_close(nngp[edge], ref_nngp[edge], rtol=0, atol=4e-7 * scale,
                                   msg=name)
        torch.testing.assert_close(dot[edge], ref_dot[edge], rtol=0, atol=4e-7, msg=name)
        torch.testing.assert_close(nngp[generic], ref_nngp[generic], rtol=0,
                                   atol=2e-5 * scale, msg=name)
        torch.testing.assert_close(dot[generic], ref_dot[generic], rtol=0, atol=2e-5, msg=name)


def test_layer_paths_use_the_reference_conventions():
    """ABReLU.pair_moments: the precise path (with a distance) is the reference in the
    layer's dtype; the fast path (no distance; native block when >= 4096 entries, torch
    below) equals the reference to rounding on a dense block with a zero-variance row, a
    repeated and a negated input (ρ = ±1 up to rounding)."""
    rng = np.random.default_rng(3)
    a, b = -0.3, 0.8
    act = ABReLU(a, b)
    for n in (20, 80):  # torch fast path, native dense block
        x = rng.standard_normal((n, 5))
        x[1], x[2], x[3] = x[0], -x[0], 0.0
        cov = torch.tensor(x @ x.T / 5)
        v = torch.diagonal(cov).clone()
        ref_nngp, ref_dot, _ = relu_map.reference(cov, v[:, None], v[None, :], a, b)
        nngp, dot, _ = act.pair_moments(cov.clone(), v[:, None], v[None, :], None, True)
        scale = float(ref_nngp.abs().max())
        torch.testing.assert_close(nngp, ref_nngp, rtol=0, atol=2e-15 * scale)
        torch.testing.assert_close(dot, ref_dot, rtol=0, atol=2e-15)
    m = torch.tensor(rng.uniform(0.5, 2.0, 6))
    d = torch.tensor(rng.uniform(0, 1e-6, 6))
    v2 = m + 1e-7
    c = (m + v2 - d) / 2
    got = act.pair_moments(c.clone(), m, v2, d.clone(), True)
    want = relu_map.reference(c, m, v2, a, b, dist=d)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
