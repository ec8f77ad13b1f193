"""ntkit.theory against mpmath and closed values: Gaussian moments A, A', B, M of ReLU, erf,
tanh, sigmoid, sin, GELU; the normalized Hermite polynomials; φ_opt of seed 000's eq. (32);
the deep-limit taxonomy of seed 000 for each of its cases; the deep recursion against the
network's own layers; the HermitePolynomial kernel against mpmath."""
from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import theory

pytestmark = pytest.mark.usefixtures("one_thread")


def _mp_moments(f, fp):
    """A, A', B, M by mpmath's adaptive tanh-sinh quadrature (30 digits), split at 0."""
    with mp.workdps(30):
        def e(g):
            return mp.quad(lambda z: g(z) * mp.npdf(z), [-mp.inf, 0, mp.inf])
        return [float(e(f)), float(e(fp)), float(e(lambda z: fp(z) ** 2)),
                float(e(lambda z: f(z) ** 2))]


def _sig(z):
    return 1 / (1 + mp.exp(-z))


MP_ACTIVATIONS = {
    "relu": (nk.ReLU(), lambda z: max(z, 0), lambda z: mp.mpf(1) if z > 0 else mp.mpf(0)),
    "leaky": (nk.LeakyReLU(0.2), lambda z: z if z > 0 else 0.2 * z,
              lambda z: mp.mpf(1) if z > 0 else mp.mpf(0.2)),
    "erf": (nk.Erf(), mp.erf, lambda z: 2 / mp.sqrt(mp.pi) * mp.exp(-z * z)),
    "erf(a,b,c)": (nk.Erf(0.7, 1.3, 0.2), lambda z: 0.7 * mp.erf(1.3 * z) + 0.2,
                   lambda z: 0.7 * 1.3 * 2 / mp.sqrt(mp.pi) * mp.exp(-(1.3 * z) ** 2)),
    "tanh": (nk.Tanh(), mp.tanh, lambda z: 1 - mp.tanh(z) ** 2),
    "sigmoid": (nk.Sigmoid(), _sig, lambda z: _sig(z) * (1 - _sig(z))),
    "sin": (nk.Sin(), mp.sin, mp.cos),
    "sin(a,b,c)": (nk.Sin(1.5, 0.8, 0.3), lambda z: 1.5 * mp.sin(0.8 * z + 0.3),
                   lambda z: 1.5 * 0.8 * mp.cos(0.8 * z + 0.3)),
    "gelu": (nk.GELU(), lambda z: z * mp.ncdf(z), lambda z: mp.ncdf(z) + z * mp.npdf(z)),
    "softplus": (nk.Elementwise(torch.nn.functional.softplus), lambda z: mp.log1p(mp.exp(z)),
                 _sig),
}


@pytest.mark.parametrize("name", list(MP_ACTIVATIONS))
def test_gaussian_moments_match_mpmath(name):
    act, f, fp = MP_ACTIVATIONS[name]
    m = theory.gaussian_moments(act)
    ref = _mp_moments(f, fp)
    np.testing.assert_allclose([m.A, m.A_prime, m.B, m.M], ref, rtol=1e-12, atol=1e-14)


def test_hermite_polynomials_match_mpmath():
    """h_k(x) = He_k(x)/√k!, He_k(x) = 2^(-k/2) H_k(x/√2) (mpmath's physicists' H_k)."""
    xs = np.linspace(-6, 6, 13)
    for k in (0, 1, 2, 3, 7, 20):
        ref = [float(mp.hermite(k, x / mp.sqrt(2)) * mp.mpf(2) ** (-k / 2) / mp.sqrt(mp.factorial(k)))
               for x in xs]
        np.testing.assert_allclose(theory.hermite(k, xs), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3, 4, 8])
def test_phi_opt_is_eq32_with_alpha_d(d):
    """PhiOpt(d) is eq. (32) written out; its moments by mpmath: A = 0, A' = 2^(-d/4), B = 2,
    M = 1; so α = -4 log A'/log B = d."""
    c1 = mp.mpf(2) ** (-mp.mpf(d) / 4)
    c2 = mp.sqrt(1 - mp.mpf(2) ** (1 - mp.mpf(d) / 2))

    def f(z):
        return c1 * (z ** 3 - 3 * z) / mp.sqrt(6) + c2 * (z * z - 1) / mp.sqrt(2) + c1 * z

    def fp(z):
        return c1 * (3 * z * z - 3) / mp.sqrt(6) + c2 * 2 * z / mp.sqrt(2) + c1

    act = theory.PhiOpt(d)
    xs = torch.linspace(-3, 3, 7, dtype=torch.float64)
    np.testing.assert_allclose(act.fn(xs).numpy(), [float(f(mp.mpf(float(x)))) for x in xs],
                               rtol=1e-13, atol=1e-13)
    ref = _mp_moments(f, fp)
    np.testing.assert_allclose(ref, [0, 2 ** (-d / 4), 2, 1], atol=1e-13)
    m = theory.gaussian_moments(act)
    np.testing.assert_allclose([m.A, m.A_prime, m.B, m.M], ref, rtol=1e-12, atol=1e-14)
    assert theory.singular_exponent(act) == pytest.approx(d, rel=1e-12)


@pytest.mark.parametrize("act,kind", [
    (nk.ReLU(), "majority"), (nk.Sigmoid(), "majority"), (nk.GELU(), "majority"),
    (nk.Erf(c=0.1), "majority"),
    (theory.HermitePolynomial([0, 0, 1, 1]), "nearest-neighbour"),
    (nk.Elementwise(lambda x: x * x - 1), "nearest-neighbour"),
    (nk.Erf(), "singular"), (nk.Tanh(), "singular"), (nk.Sin(), "singular"),
    (theory.PhiOpt(3), "singular"), (nk.Identity(), "linear")])
def test_deep_limit_taxonomy_of_seed_000(act, kind):
    limit = theory.deep_limit(act)
    assert limit.kind == kind
    assert limit.moments.M == pytest.approx(1.0, rel=1e-12)


def test_singular_exponent_of_erf_closed_form():
    """erf: A' = 2/√(3π), B = 4/(π√5), M = (2/π) asin(2/3); α = -4 log(A'/√M)/log(B/M)."""
    a1, b, m = 2 / math.sqrt(3 * math.pi), 4 / (math.pi * math.sqrt(5)), 2 / math.pi * math.asin(2 / 3)
    alpha = -4 * math.log(a1 / math.sqrt(m)) / math.log(b / m)
    assert theory.singular_exponent(nk.Erf()) == pytest.approx(alpha, rel=1e-13)
    with pytest.raises(ValueError, match="majority"):
        theory.singular_exponent(nk.ReLU())


def test_dual_activation_of_relu_is_arccos_kernel():
    """ψ(ρ) = (√(1-ρ²) + (π - arccos ρ) ρ)/(2π), ψ'(ρ) = (π - arccos ρ)/(2π) (Cho & Saul)."""
    rho = np.linspace(-1, 1, 9)
    value, deriv = theory.dual_activation(nk.ReLU(), rho)
    th = np.arccos(rho)
    np.testing.assert_allclose(value, (np.sqrt(1 - rho ** 2) + (np.pi - th) * rho) / (2 * np.pi),
                               atol=1e-15)
    np.testing.assert_allclose(deriv, (np.pi - th) / (2 * np.pi), atol=1e-15)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        theory.dual_activation(nk.ReLU(), [1.5])


def test_deep_kernels_match_numpy_recursion_and_layers():
    """deep_kernels(ReLU) against a numpy arc-cosine recursion with the 1/M = 2 normalization
    (the diagonal is exactly Σ = 1, Θ = L + 1), and against ``deep_architecture(...).kernel``
    on unit vectors."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rho = np.clip(x @ x.T, -1, 1)
    np.fill_diagonal(rho, 1.0)
    got = {L: (a.clone(), b.clone()) for L, a, b in theory.deep_kernels(nk.ReLU(), torch.from_numpy(rho), [1, 4, 30])}
    s, t = rho.copy(), rho.copy()
    for layer in range(1, 31):
        th = np.arccos(np.clip(s, -1, 1))
        np.fill_diagonal(th, 0.0)
        dot = (np.pi - th) / np.pi
        s = (np.sqrt(np.clip(1 - s * s, 0, None)) + (np.pi - th) * s) / np.pi
        t = t * dot + s
        if layer in got:
            np.testing.assert_allclose(got[layer][0].numpy(), s, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got[layer][1].numpy(), t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.diag(got[30][1].numpy()), 31.0, rtol=1e-14)
    k = theory.deep_architecture(nk.ReLU(), 4, 3).kernel(torch.from_numpy(x))
    np.testing.assert_allclose(k.ntk.numpy(), got[4][1].numpy(), rtol=1e-10)


@pytest.mark.parametrize("act", [nk.ReLU(), nk.Erf(), theory.HermitePolynomial([0, 0, 1, 1]),
                                 theory.PhiOpt(3)], ids=["relu", "erf", "h2+h3", "phi_opt"])
def test_deep_kernels_blocks_do_not_change_the_result(act):
    """The recursion advanced a few entries at a time (blocks of 7 of 36, not dividing them,
    and a transposed, non-contiguous input) equals the whole-matrix recursion (one block)
    entry for entry, and the numpy arc-cosine recursion for ReLU (the diagonal Θ = L + 1)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rho = np.clip(x @ x.T, -1, 1)
    np.fill_diagonal(rho, 1.0)
    rho = torch.from_numpy(rho)
    whole = {L: (a.clone(), b.clone()) for L, a, b in
             theory.deep_kernels(act, rho, [2, 9], block=rho.numel())}
    blocked = {L: (a.clone(), b.clone()) for L, a, b in
               theory.deep_kernels(act, rho.T, [9, 2], block=7)}
    assert list(blocked) == [2, 9]
    for L in (2, 9):
        assert torch.equal(blocked[L][0], whole[L][0].T) and torch.equal(blocked[L][1], whole[L][1].T)
    if isinstance(act, nk.ReLU):
        np.testing.assert_allclose(np.diag(blocked[9][1].numpy()), 10.0, rtol=1e-14)
        s, t = rho.numpy().copy(), rho.numpy().copy()
        for _ in range(9):
            th = np.arccos(np.clip(s, -1, 1))
            np.fill_diagonal(th, 0.0)
            t = t * (np.pi - th) / np.pi
            s = (np.sqrt(np.clip(1 - s * s, 0, None)) + (np.pi - th) * s) / np.pi
            t = t + s
        np.testing.assert_allclose(blocked[9][1].numpy(), t.T, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="block"):
        next(theory.deep_kernels(act, rho, [1], block=0))


def test_hermite_polynomial_kernel_matches_mpmath():
    """HermitePolynomial([0.3, 0, 1, 1]) between inputs of variances 0.7 and 2.1, correlation 0.4
    (a 2-D Gaussian expectation of polynomials: Gauss–Hermite in mpmath is exact)."""
    act = theory.HermitePolynomial([0.3, 0.0, 1.0, 1.0])
    v1, v2, c = 0.7, 2.1, 0.4 * math.sqrt(0.7 * 2.1)
    with mp.workdps(30):
        nodes = mp.gauss_quadrature(8, "hermite")  # physicists': weight e^{-t²}

        def expect(f, g):
            s1 = mp.sqrt(v1)
            a = c / s1
            r = mp.sqrt(v2 - a * a)
            tot = 0
            for t1, w1 in zip(*nodes):
                for t2, w2 in zip(*nodes):
                    z1, z2 = t1 * mp.sqrt(2), t2 * mp.sqrt(2)
                    tot += w1 * w2 * f(s1 * z1) * g(a * z1 + r * z2)
            return tot / mp.pi

        def phi(x):
            return 0.3 + (x * x - 1) / mp.sqrt(2) + (x ** 3 - 3 * x) / mp.sqrt(6)

        def dphi(x):
            return 2 * x / mp.sqrt(2) + (3 * x * x - 3) / mp.sqrt(6)

        ref = [float(expect(phi, phi)), float(expect(dphi, dphi))]
        ref_var = float(expect(phi, lambda y: 1) * 0 + expect(lambda x: phi(x) ** 2, lambda y: 1))
    t = torch.tensor
    nngp, dot, _ = act.pair_moments(t([c], dtype=torch.float64), t([v1], dtype=torch.float64),
                                    t([v2], dtype=torch.float64), None, True)
    np.testing.assert_allclose([float(nngp), float(dot)], ref, rtol=1e-13)
    assert float(act.var_moment(t([v1], dtype=torch.float64))) == pytest.approx(ref_var, rel=1e-13)


def test_phi_opt_bad_d():
    with pytest.raises(ValueError, match="d must be"):
        theory.PhiOpt(1)
    with pytest.raises(ValueError, match="d must be"):
        theory.PhiOpt(float("nan"))
