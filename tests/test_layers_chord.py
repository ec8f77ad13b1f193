"""The chord e = 2√(v1 v2)(1 - ρ) of deep ReLU-family chains (``ntkit.layers.chord``): its
Linear and ReLU-family maps against 50-digit mpmath, where it starts (from the architecture),
and that it is never used stale (a deep chain through other layers against an independent
float64 recursion)."""
import math

import mpmath as mp
import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from ntkit.layers import chord, relu_map
from ntkit.layers.state import KernelState, dense_input_state
from test_depth import erf_map, relu_family_map

EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23}


def _operands(dtype, seed):
    """(v1 (5,), v2 (6,), e (5, 6)) as dtype values, 1 - ρ from 0.7 down to ~1e3 ulps and
    correlations near -1, 0 and 1 (v2[0] = v1[0]: equal norms)."""
    rng = np.random.default_rng(seed)
    v1 = 10.0 ** rng.uniform(-1, 1, 5)
    v2 = 10.0 ** rng.uniform(-1, 1, 6)
    v2[0] = v1[0]
    tiny = 1e3 * EPS[dtype]
    one_minus = np.geomspace(0.7, tiny, 5 * 6)
    one_minus[[3, 11, 17]] = [1.0, 1.3, 1.999]  # ρ = 0, -0.3, -0.999
    rng.shuffle(one_minus)
    e = 2 * np.sqrt(np.outer(v1, v2)) * one_minus.reshape(5, 6)
    return tuple(torch.tensor(a, dtype=dtype) for a in (v1, v2, e))


def _mp(t):
    return [[mp.mpf(float(x)) for x in row] for row in t.double().tolist()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("a,b", [(0.0, 1.0), (0.1, 1.0), (-0.5, 2.0)])
def test_chord_map_against_mpmath(a, b, dtype):
    """``relu_map.chord_map`` on (v1, v2, e, c = √(v1 v2) - e/2 rounded): the NNGP, E[φ'φ']
    and the chord after the layer against the arc-cosine kernel in 50 digits, θ from e."""
    v1, v2, e = _operands(dtype, 0)
    sv_exact = [[mp.sqrt(mp.mpf(float(p)) * mp.mpf(float(q))) for q in v2] for p in v1]
    with mp.workdps(50):
        cov = torch.tensor([[float(s - x / 2) for s, x in zip(srow, erow)]
                            for srow, erow in zip(sv_exact, _mp(e))], dtype=dtype)
    hs, diff2 = relu_map.coefs(a, b)
    nngp, dot, e_out = relu_map.chord_map(cov.clone(), v1[:, None], v2[None, :], hs, diff2,
                                          e.clone(), True)
    eps = EPS[dtype]
    with mp.workdps(50):
        k = mp.mpf(diff2) / (2 * mp.pi)
        for i in range(5):
            for j in range(6):
                sv = sv_exact[i][j]
                ee = mp.mpf(float(e[i, j]))
                theta = 2 * mp.asin(mp.sqrt(ee / (4 * sv)))
                s = sv * (mp.sin(theta) - theta * mp.cos(theta))
                value = hs * mp.mpf(float(cov[i, j])) + k * s
                want_e = hs * ee - 2 * k * s  # = 2(√(v1' v2') - value) for c = √(v1 v2) - e/2
                assert abs(float(nngp[i, j]) - value) <= 16 * eps * sv * hs, (i, j)
                assert abs(float(dot[i, j]) - (hs - k * theta)) <= 16 * eps * hs, (i, j)
                assert abs(float(e_out[i, j]) / want_e - 1) <= 64 * eps, (i, j, ee / sv)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("w2,b2", [(4.0, 0.0), (4.0, 0.01), (0.25, 1.0), (2.25, 0.0025)])
def test_linear_chord_against_mpmath(w2, b2, dtype):
    """``chord.affine_``: e' = 2(√((w² v1 + β)(w² v2 + β)) - (w² c + β)) with c = √(v1 v2) - e/2,
    in 50 digits, for inputs of different norms (where d - (√v1 - √v2)² would cancel)."""
    v1, v2, e = _operands(dtype, 1)
    got = chord.affine_(e.clone(), v1[:, None], v2[None, :], w2, b2)
    with mp.workdps(50):
        w, beta = mp.mpf(w2), mp.mpf(b2)
        for i in range(5):
            for j in range(6):
                p, q, ee = (mp.mpf(float(t)) for t in (v1[i], v2[j], e[i, j]))
                c = mp.sqrt(p * q) - ee / 2
                want = 2 * (mp.sqrt((w * p + beta) * (w * q + beta)) - (w * c + beta))
                assert abs(float(got[i, j]) / want - 1) <= 16 * EPS[dtype], (i, j)


def test_chord_start_and_snap():
    """``chord.start``: e = 2(√(v1 v2) - c) for a dense flat state of a deep chain, 0 for an
    input with itself and for a duplicate (ρ within 4 ulps of 1), 4√(v1 v2) for an exactly
    opposite input; nothing without ``precise_angles``."""
    x = torch.tensor([[1.0, 0.5, -0.3], [2.0, 1.0, -0.6], [-1.0, -0.5, 0.3], [0.2, -1.0, 0.7]],
                     dtype=torch.float64)
    state = dense_input_state(x, None)
    assert chord.start(state).chord is None
    e = chord.start(state.replace(precise_angles=True)).chord
    v = (x * x).sum(1) / 3
    sv = torch.sqrt(v[:, None] * v[None, :])
    assert torch.equal(e.diagonal(), torch.zeros(4, dtype=torch.float64))
    assert e[0, 1] == 0 and e[1, 0] == 0  # x1 = 2 x0: parallel
    assert e[0, 2] == 4 * sv[0, 2] and e[1, 2] == 4 * sv[1, 2]  # opposite
    with mp.workdps(50):
        for i, j in ((0, 3), (1, 3), (2, 3)):
            xi, xj = ([mp.mpf(float(t)) for t in x[k]] for k in (i, j))
            want = 2 * (mp.sqrt(mp.fsum(t * t for t in xi) * mp.fsum(t * t for t in xj))
                        - mp.fsum(s * t for s, t in zip(xi, xj))) / 3
            assert abs(float(e[i, j]) - want) <= 8 * EPS[torch.float64] * float(sv[i, j])


def _relu_chain(n_relu):
    return nk.Sequential(*[nk.Linear(1, W_std=1.5, b_std=0.1), nk.ReLU()] * n_relu,
                         nk.Linear(1, W_std=1.5, b_std=0.1))


def test_chord_decided_by_architecture():
    """Chains with fewer than ``DEEP_CHAIN`` ReLU-family layers never carry the chord (no cost
    for shallow networks, whatever the data); deeper ones carry it to the end."""
    x = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7], [1.0, 0.5, -0.29]],
                     dtype=torch.float64)
    shallow = _relu_chain(chord.DEEP_CHAIN - 1).apply(dense_input_state(x, None))
    assert shallow.chord is None and not shallow.precise_angles
    deep = _relu_chain(chord.DEEP_CHAIN).apply(dense_input_state(x, None))
    assert deep.precise_angles and deep.chord is not None and deep.chord.shape == (3, 3)
    assert bool((deep.chord[0, 1:] > 0).all())


def _mixed_reference(x, n):
    """(NNGP, NTK) in float64 numpy of ``_mixed_arch(n)`` (W = 1.5, b = 0.1): [Linear, ReLU]
    x n, Linear, Erf, Linear, Residual(ReLU, Linear), [Linear, LeakyReLU(0.2)] x n, Linear."""
    w2, b2 = 2.25, 0.01
    k = x @ x.T / x.shape[1]
    t = None

    def linear(k, t):
        k = w2 * k + b2
        return k, (k.copy() if t is None else w2 * t + k)

    def act(k, t, fn):
        k, dot = fn(k)
        return k, t * dot

    relu = lambda m: relu_family_map(m, 0.0)  # noqa: E731
    for _ in range(n):
        k, t = act(*linear(k, t), relu)
    k, t = act(*linear(k, t), erf_map)
    k, t = linear(k, t)
    r, dot = relu(k)
    branch = w2 * r + b2
    k, t = k + branch, t + w2 * t * dot + branch
    for _ in range(n):
        k, t = act(*linear(k, t), lambda m: relu_family_map(m, 0.2))
    return linear(k, t)


def _mixed_arch(n):
    lin = nk.Linear(1, W_std=1.5, b_std=0.1)
    return nk.Sequential(*[lin, nk.ReLU()] * n, lin, nk.Erf(), lin,
                         nk.Residual(nk.Sequential(nk.ReLU(), lin)),
                         *[lin, nk.LeakyReLU(0.2)] * n, lin)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chord_through_other_layers(dtype):
    """A deep chain (2 x 40 ReLU-family layers) through Erf and a residual block: the chord is
    dropped around them and started again, never used stale (a stale chord after Erf would put
    every later angle O(1) off). Against the float64 numpy recursion of the same maps."""
    x = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7], [0.9, 0.1, 0.4], [1.0, 0.5, -0.25]])
    n = 40
    arch = _mixed_arch(n)
    assert sum(1 for layer in arch.layers if layer.maps_chord and layer.nonsmooth) >= \
        chord.DEEP_CHAIN
    k = arch.kernel(torch.tensor(x, dtype=dtype), options=KernelOptions(threads=1))
    ref_k, ref_t = _mixed_reference(x, n)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(k.nngp.double().numpy(), ref_k, rtol=tol)
    np.testing.assert_allclose(k.ntk.double().numpy(), ref_t, rtol=tol)


def test_chord_state_scale():
    """The chord is an NNGP tensor: rescaled with the state (``at_scale``) exactly."""
    x = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.7]], dtype=torch.float64)
    state = chord.start(dense_input_state(x, None).replace(precise_angles=True))
    moved = state.at_scale(7)
    assert torch.equal(moved.chord, state.chord * 2.0 ** -7)
    assert math.isclose(float(moved.chord[0, 1]) * 2 ** 7, float(state.chord[0, 1]))
