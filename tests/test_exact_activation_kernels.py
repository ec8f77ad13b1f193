"""The default (exact) kernels of Tanh, Sigmoid and Elementwise(fn): the diagonal of a deep
network against an mpmath chain of one-dimensional integrals (the issue's case: depth 3,
W_std = 1.5, where the former Gauss–Hermite default was 1.5e-3 off), and the accuracy warning for
functions whose Hermite series cannot converge. Off-diagonal entries are checked against a 2-D
mpmath reference in test_layers_activations_quadrature.py (degree None rows)."""
from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.layers.hermite_numeric import HermiteAccuracyWarning, hermite_transform_check

pytestmark = pytest.mark.usefixtures("one_thread")


def _sig(z):
    return 1 / (1 + mp.exp(-z))


CASES = {
    "Tanh": (nk.Tanh, mp.tanh, lambda z: 1 - mp.tanh(z) ** 2),
    "Sigmoid": (nk.Sigmoid, _sig, lambda z: _sig(z) * (1 - _sig(z))),
    "softplus": (lambda: nk.Elementwise(torch.nn.functional.softplus),
                 lambda z: mp.log1p(mp.exp(z)), _sig),
}


def _diag_chain(f, fp, q, W, b, depth):
    """(NNGP, NTK) of x with itself for Linear(W, b) -> [φ -> Linear(W, b)] x depth, NTK
    parameterization, input variance q = |x|²/d: one-dimensional Gaussian integrals (mpmath)."""
    with mp.workdps(25):
        w2, b2 = mp.mpf(W) ** 2, mp.mpf(b) ** 2
        v = w2 * q + b2
        t = v
        for _ in range(depth):
            s = mp.sqrt(v)
            e = mp.quad(lambda z: f(s * z) ** 2 * mp.npdf(z), [-mp.inf, -4, 0, 4, mp.inf])
            ed = mp.quad(lambda z: fp(s * z) ** 2 * mp.npdf(z), [-mp.inf, -4, 0, 4, mp.inf])
            v = w2 * e + b2
            t = w2 * t * ed + v
        return float(v), float(t)


@pytest.mark.parametrize("name", list(CASES))
def test_deep_diagonal_matches_mpmath(name):
    make, f, fp = CASES[name]
    W, b, depth = 1.5, 0.1, 3
    x = np.random.default_rng(1).normal(size=(3, 6))
    x[1] *= 1.4 / np.linalg.norm(x[1]) * np.sqrt(6)   # first-layer variances ~ 2.3 .. 4.4
    layers = [nk.Linear(8, W_std=W, b_std=b)]
    for _ in range(depth):
        layers += [make(), nk.Linear(8, W_std=W, b_std=b)]
    k = nk.Sequential(*layers).kernel(torch.from_numpy(x))
    for i in range(len(x)):
        nngp, ntk = _diag_chain(f, fp, mp.mpf(float((x[i] ** 2).sum() / 6)), W, b, depth)
        assert float(k.nngp[i, i]) == pytest.approx(nngp, rel=1e-10)
        assert float(k.ntk[i, i]) == pytest.approx(ntk, rel=1e-10)


def test_kinked_function_warns_with_its_error():
    """|x| has Hermite coefficients decaying like k^(-5/4): no convergence within max_terms."""
    x = np.random.default_rng(2).normal(size=(3, 4))
    arch = nk.Sequential(nk.Linear(4), nk.Elementwise(torch.abs, max_terms=128), nk.Linear(1))
    with pytest.warns(HermiteAccuracyWarning, match="did not converge"):
        arch.kernel(torch.from_numpy(x))


def test_weighted_hermite_functions_orthonormal_at_high_degree():
    """The scaled recurrence keeps √w h_k representable where w underflows: the discrete
    orthonormality of h_0..h_511 on 1024 Gauss–Hermite nodes holds to rounding."""
    assert hermite_transform_check(512) < 1e-12


def test_float32_inputs_give_float32_kernels_close_to_float64():
    x = np.random.default_rng(3).normal(size=(5, 3))
    arch = nk.Sequential(nk.Linear(4, W_std=1.2), nk.Tanh(), nk.Linear(1))
    k64 = arch.kernel(torch.from_numpy(x)).ntk
    k32 = arch.kernel(torch.from_numpy(x).float()).ntk
    assert k32.dtype == torch.float32
    np.testing.assert_allclose(k32.numpy(), k64.numpy(), rtol=2e-6)
