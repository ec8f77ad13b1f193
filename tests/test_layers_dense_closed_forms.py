"""Closed-form activation kernels vs an independent high-precision reference (mpmath).

Reference. For a 1-hidden-layer network Linear(W1, b1) -> φ -> Linear(W2, b2) (NTK
parameterization) the infinite-width kernels are, with Λ = [[v1, c], [c, v2]] the first-layer
NNGP of (x1, x2) and (u, v) ~ N(0, Λ):

    NNGP = W2² E[φ(u)φ(v)] + b2²,     NTK = W2² (c · E[φ'(u)φ'(v)] + E[φ(u)φ(v)]) + b2².

The Gaussian expectations are computed here in mpmath (20 digits) from x1, x2 alone, without
the arc-cosine / arcsine / GELU / sine closed forms: after the Cholesky change of variables
u = √v1 z1, v = (c/√v1) z1 + r z2 (r² = det Λ / v1), the inner integral over z2 is an elementary
one-dimensional Gaussian identity (E[max(X, 0)] = mΦ(m/r) + rφ(m/r), E[erf(BX)] =
erf(Bm/√(1+2B²r²)), E[sin(BX+C)] = sin(Bm+C)e^{-B²r²/2}, E[XΦ(X)] = mΦ(m/q) + r²φ(m/q)/q, ...),
and the outer integral over z1 is a panelled 20-node Gauss–Legendre rule (mpmath nodes) on
[-10, 10], split at the kink z1 = 0 and, for the ReLU family, geometrically around 0 when the
inner step width r/|a| is tiny (against 40 nodes on unit panels the reference agrees to ~1e-17).
Λ itself is formed in 50-digit arithmetic with det Λ from Lagrange's identity (no cancellation),
so nearly equal and antipodal inputs keep their exact geometry.

Convention tested for the zero input row (zero variance, no bias): ntkit treats it as orthogonal
to everything (θ = π/2), i.e. φ'(0) := (a+b)/2 for the ReLU family; smooth activations need no
convention (φ'(0) is defined). It is visible only where the NTK is non-zero at zero variance: the
standard parameterization with b_std=0 (the bias gradient gives Θ¹(0, x) = 1).

Measured: every closed form agrees with the reference to <= 1.6e-15 relative (asserted 1e-12).
"""
from __future__ import annotations

import functools

import mpmath as mp
import numpy as np
import pytest
import torch

import ntkit as nk

RTOL = 1e-12
DPS = 20
Z_MAX = 10  # npdf(10) ~ 8e-23: the tails beyond are far below the 1e-12 tested
GL_NODES = 20  # Gauss-Legendre nodes per panel (checked against 40 nodes on unit panels: ~1e-17)


# --- activations: finite function, derivative, conditional moments E[φ(m + rZ)], E[φ'(m + rZ)] --
def _abrelu(a, b):
    a, b = mp.mpf(a), mp.mpf(b)

    def phi(x):
        return a * x if x < 0 else b * x

    def dphi(x):
        if x == 0:
            return (a + b) / 2  # ntkit's zero-variance convention
        return a if x < 0 else b

    def inner(m, r):
        if r == 0:
            return phi(m), dphi(m)
        t = m / r
        e_max = m * mp.ncdf(t) + r * mp.npdf(t)
        e_min = m - e_max
        return a * e_min + b * e_max, a * mp.ncdf(-t) + b * mp.ncdf(t)

    return phi, dphi, inner, True


def _erf(A, B, C):
    A, B, C = mp.mpf(A), mp.mpf(B), mp.mpf(C)

    def phi(x):
        return A * mp.erf(B * x) + C

    def dphi(x):
        return A * B * 2 / mp.sqrt(mp.pi) * mp.exp(-B * B * x * x)

    def inner(m, r):
        q = mp.sqrt(1 + 2 * B * B * r * r)
        return (A * mp.erf(B * m / q) + C,
                A * B * 2 / mp.sqrt(mp.pi) * mp.exp(-B * B * m * m / (q * q)) / q)

    return phi, dphi, inner, False


def _sin(A, B, C):
    A, B, C = mp.mpf(A), mp.mpf(B), mp.mpf(C)

    def phi(x):
        return A * mp.sin(B * x + C)

    def dphi(x):
        return A * B * mp.cos(B * x + C)

    def inner(m, r):
        damp = mp.exp(-B * B * r * r / 2)
        return A * mp.sin(B * m + C) * damp, A * B * mp.cos(B * m + C) * damp

    return phi, dphi, inner, False


def _gelu():
    def phi(x):
        return x * mp.ncdf(x)

    def dphi(x):
        return mp.ncdf(x) + x * mp.npdf(x)

    def inner(m, r):
        q = mp.sqrt(1 + r * r)
        t = m / q
        return (m * mp.ncdf(t) + r * r * mp.npdf(t) / q,  # E[XΦ(X)]
                mp.ncdf(t) + m * mp.npdf(t) / q ** 3)      # E[Φ(X)] + E[Xφ(X)]

    return phi, dphi, inner, False


def _identity():
    return (lambda x: x), (lambda x: mp.mpf(1)), (lambda m, r: (m, mp.mpf(1))), False


ACTIVATIONS = {
    "ReLU": (nk.ReLU, (), lambda: _abrelu(0, 1)),
    "LeakyReLU": (nk.LeakyReLU, (0.1,), lambda: _abrelu("0.1", 1)),
    "ABReLU": (nk.ABReLU, (-0.6, 1.7), lambda: _abrelu("-0.6", "1.7")),
    "Erf": (nk.Erf, (1.3, 0.7, 0.2), lambda: _erf("1.3", "0.7", "0.2")),
    "GELU": (nk.GELU, (), _gelu),
    "Sin": (nk.Sin, (1.1, 0.8, 0.3), lambda: _sin("1.1", "0.8", "0.3")),
    "Identity": (nk.Identity, (), _identity),
}


# --- the reference ---------------------------------------------------------------------------
def _mpf_exact(v: float):
    return mp.mpf(float(v))  # binary float -> exact mpf


def _first_layer(xa, xb, W, b):
    """Λ entries (va, vb, c, det) of Linear(W, b) on rows xa, xb, in 50-digit arithmetic."""
    with mp.workdps(50):
        d = len(xa)
        p = [_mpf_exact(t) for t in xa]
        q = [_mpf_exact(t) for t in xb]
        alpha = _mpf_exact(W) ** 2 / d
        beta = 0 if b is None else _mpf_exact(b) ** 2
        na = mp.fsum(t * t for t in p)
        nb = mp.fsum(t * t for t in q)
        dot = mp.fsum(s * t for s, t in zip(p, q))
        lag = mp.fsum((p[i] * q[j] - p[j] * q[i]) ** 2 for i in range(d) for j in range(i + 1, d))
        dist = mp.fsum((s - t) ** 2 for s, t in zip(p, q))
        va, vb, c = alpha * na + beta, alpha * nb + beta, alpha * dot + beta
        det = alpha * alpha * lag + alpha * beta * dist  # = va vb - c², exactly
        return +va, +vb, +c, +det


def _pair_moments(act, va, vb, c, det):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for (u, v) ~ N(0, [[va, c], [c, vb]]), det = va vb - c²."""
    phi, dphi, inner, kinked = act
    if va == 0:  # u = 0 almost surely
        e, ed = inner(mp.mpf(0), mp.sqrt(vb))
        return phi(mp.mpf(0)) * e, dphi(mp.mpf(0)) * ed
    s1 = mp.sqrt(va)
    a = c / s1
    r = mp.sqrt(max(det, 0) / va)
    pts = [mp.mpf(t) for t in (-Z_MAX, -5, -2, 0, 2, 5, Z_MAX)]
    if kinked and r > 0 and a != 0:
        # the inner expectation steps from one slope to the other over |z1| ~ w = r/|a|:
        # panels at w, 10w, 100w, ... resolve it; below w = 1e-14 the step is taken as sharp
        # (r = 0), which moves the moments by O(w) < 1e-14 relative
        w = r / abs(a)
        if w < 1e-14:
            r = mp.mpf(0)
        k = w
        while r > 0 and k < 1:
            pts += [k, -k]
            k *= 10
    pts = sorted(set(pts))

    def f(z):
        e, _ = inner(a * z, r)
        return phi(s1 * z) * e * mp.npdf(z)

    def fd(z):
        _, ed = inner(a * z, r)
        return dphi(s1 * z) * ed * mp.npdf(z)

    return _gauss_legendre(f, pts), _gauss_legendre(fd, pts)


@functools.lru_cache(maxsize=None)
def _gl_rule(n: int, dps: int):
    with mp.workdps(dps):
        return mp.gauss_quadrature(n, "legendre")


def _gauss_legendre(f, pts):
    """Σ over panels [p_k, p_k+1] of the fixed n-point Gauss-Legendre rule (mpmath nodes)."""
    nodes, weights = _gl_rule(GL_NODES, DPS)
    total = []
    for lo, hi in zip(pts[:-1], pts[1:]):
        half, mid = (hi - lo) / 2, (hi + lo) / 2
        total.append(half * mp.fsum(w * f(mid + half * x) for x, w in zip(nodes, weights)))
    return mp.fsum(total)


@functools.lru_cache(maxsize=None)
def _moments(act_name: str, case: str):
    """mpmath moments of the 2x2 stacked input [x1; x2]: dict (i, j) -> (c, E[φφ], E[φ'φ'])
    where c is the first-layer NNGP Σ¹(x_i, x_j)."""
    x1, x2, W1, b1, _, _ = CASES[case]()
    act = ACTIVATIONS[act_name][2]()
    rows = (x1, x2)
    out = {}
    with mp.workdps(DPS):
        for i, j in ((0, 0), (1, 1), (0, 1)):
            va, vb, c, det = _first_layer(rows[i], rows[j], W1, b1)
            e, ed = _pair_moments(act, va, vb, c, det)
            out[i, j] = out[j, i] = (c, e, ed)
    return out


def _reference(act_name: str, case: str, parameterization: str = "ntk", width: int = 64):
    """Reference 2x2 NNGP and NTK of Linear(width, W1, b1) -> φ -> Linear(1, W2, b2).

    ntk:      NNGP = W2² E + b2²,  NTK = W2² (Σ¹ E' + E) + b2²
    standard: NNGP the same,       NTK = width·E + 1 + W2² (x·x' + 1) E'
    where E = E[φ(u)φ(v)], E' = E[φ'(u)φ'(v)], Σ¹ = W1² x·x'/d + b1². For "standard" both
    layers are taken with a bias parameter (b_std=0 where the case has None): its gradient is 1.
    """
    x1, x2, W1, b1, W2, b2 = CASES[case]()
    mom = _moments(act_name, case)
    rows = (x1, x2)
    nngp, ntk = np.zeros((2, 2)), np.zeros((2, 2))
    with mp.workdps(DPS):
        w2 = _mpf_exact(W2) ** 2
        bb2 = 0 if b2 is None else _mpf_exact(b2) ** 2
        for (i, j), (c, e, ed) in mom.items():
            nngp[i, j] = float(w2 * e + bb2)
            if parameterization == "ntk":
                ntk[i, j] = float(w2 * (c * ed + e) + bb2)
            else:
                with mp.workdps(50):
                    dot = mp.fsum(_mpf_exact(s) * _mpf_exact(t) for s, t in zip(rows[i], rows[j]))
                ntk[i, j] = float(width * e + 1 + w2 * (dot + 1) * ed)
    return (x1, x2, W1, b1, W2, b2), nngp, ntk


def _x(seed, d=6):
    return np.random.default_rng(seed).normal(size=d)


CASES = {
    # random pair, all biases on
    "random": lambda: (_x(1), _x(2), 1.3, 0.4, 0.9, 0.2),
    # nearly equal inputs: x and x(1+1e-7), with a first-layer bias (correlation 1 - O(1e-16))
    "near_bias": lambda: (_x(3), _x(3) * (1 + 1e-7), 1.2, 0.3, 1.1, 0.1),
    # nearly equal, no bias: collinear up to rounding of x(1+1e-7)
    "near_nobias": lambda: (_x(4), _x(4) * (1 + 1e-7), 1.4, None, 0.8, None),
    # antipodal inputs, no bias: correlation exactly -1
    "antipodal": lambda: (_x(5), -_x(5), 1.1, None, 1.2, 0.3),
    # a zero input row without bias: zero variance (ntkit: orthogonal to everything)
    "zero_row": lambda: (_x(6), np.zeros(6), 1.5, None, 1.0, 0.2),
}


def _arch(act_name, W1, b1, W2, b2, parameterization="ntk", width=64):
    cls, args, _ = ACTIVATIONS[act_name]
    return nk.Sequential(nk.Linear(width, W_std=W1, b_std=b1, parameterization=parameterization),
                         cls(*args),
                         nk.Linear(1, W_std=W2, b_std=b2, parameterization=parameterization))


def _check(got, ref, what):
    # relative to each entry, with an absolute floor at 1e-3 of the matrix scale for entries
    # that are exactly zero in the reference (e.g. ReLU on antipodal inputs without bias)
    scale = np.abs(ref).max()
    err = np.abs(got - ref)
    bound = RTOL * np.maximum(np.abs(ref), 1e-3 * scale)
    assert np.all(err <= bound), (
        f"{what}: max rel err {np.max(err / np.maximum(np.abs(ref), 1e-300)):.3e}\n"
        f"got={got!r}\nref={ref!r}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("act_name", list(ACTIVATIONS))
def test_one_hidden_layer_matches_mpmath(act_name, case):
    """NTK parameterization, x2=None on [x1; x2] and x2 given, against the mpmath reference."""
    (x1, x2, W1, b1, W2, b2), nngp_ref, ntk_ref = _reference(act_name, case)
    arch = _arch(act_name, W1, b1, W2, b2)
    X = np.stack([x1, x2])
    k = arch.kernel(X)
    assert k.nngp.dtype == torch.float64
    _check(k.nngp.numpy(), nngp_ref, f"{act_name}/{case} NNGP (x2=None)")
    _check(k.ntk.numpy(), ntk_ref, f"{act_name}/{case} NTK (x2=None)")
    k12 = arch.kernel(X[:1], X[1:])
    k21 = arch.kernel(X[1:], X[:1])
    _check(np.array([k12.nngp.item(), k21.nngp.item()]),
           np.array([nngp_ref[0, 1], nngp_ref[1, 0]]), f"{act_name}/{case} NNGP (x2 given)")
    _check(np.array([k12.ntk.item(), k21.ntk.item()]),
           np.array([ntk_ref[0, 1], ntk_ref[1, 0]]), f"{act_name}/{case} NTK (x2 given)")


@pytest.mark.parametrize("case", ["random", "zero_row", "near_nobias"])
@pytest.mark.parametrize("act_name", list(ACTIVATIONS))
def test_one_hidden_layer_standard_parameterization_matches_mpmath(act_name, case):
    """Standard parameterization with bias parameters (b_std=0 where the case has none).

    The bias gradient makes Θ¹(0, x) = 1 for a zero input row although its variance is 0, so
    the NTK row of the zero input exposes E[φ'(u)φ'(v)] at zero variance, φ'(0)·E[φ'(v)]: for
    the ReLU family this is ntkit's convention φ'(0) = (a+b)/2 (θ = π/2)."""
    (x1, x2, W1, b1, W2, b2), nngp_ref, ntk_ref = _reference(act_name, case, "standard", 64)
    arch = _arch(act_name, W1, 0.0 if b1 is None else b1, W2, 0.0 if b2 is None else b2,
                 parameterization="standard", width=64)
    k = arch.kernel(np.stack([x1, x2]))
    _check(k.nngp.numpy(), nngp_ref, f"{act_name}/{case} NNGP (standard)")
    _check(k.ntk.numpy(), ntk_ref, f"{act_name}/{case} NTK (standard)")


@pytest.mark.parametrize("act_name", ["ReLU", "LeakyReLU", "ABReLU"])
def test_zero_variance_row_is_orthogonal(act_name):
    """Closed-form statement of the convention (no quadrature): a zero input row (standard
    parameterization, b_std=0, so Θ¹(0, x) = 1 while Var = 0) has
    NTK(0, x) = 1 + W2²·(a+b)²/4 and NNGP(0, x) = 0, for every x (including 0 itself)."""
    a, b = {"ReLU": (0.0, 1.0), "LeakyReLU": (0.1, 1.0), "ABReLU": (-0.6, 1.7)}[act_name]
    W2 = 1.3
    arch = _arch(act_name, 0.7, 0.0, W2, 0.0, parameterization="standard", width=16)
    x = np.stack([np.zeros(5), _x(7, 5), -_x(8, 5), np.zeros(5)])
    k = arch.kernel(x)
    expected = 1 + W2 ** 2 * (a + b) ** 2 / 4
    for row in (0, 3):
        np.testing.assert_allclose(k.ntk.numpy()[row], expected, rtol=1e-14)
        np.testing.assert_allclose(k.ntk.numpy()[:, row], expected, rtol=1e-14)
        assert np.all(k.nngp.numpy()[row] == 0.0)
