"""The seeds' kernel recursions, written out independently in numpy float64, vs arch.kernel.

* Seed 001 (Arora et al. 2019, "On exact computation with an infinitely wide neural net"):
  f = W^(L+1) √(c_σ/d_L) σ(W^(L) √(c_σ/d_(L-1)) σ(... √(c_σ/d_1) σ(W^(1) x))), W ~ N(0, 1),
  c_σ = 2 for ReLU, no biases, Σ^(0) = x·x' (no 1/d), Σ^(h) = c_σ E[σ(u)σ(v)],
  Σ̇^(h) = c_σ E[σ'(u)σ'(v)] over Λ^(h) built from Σ^(h-1), NNGP of f = Σ^(L) and
      Θ^L = Σ_{h=1}^{L+1} Σ^(h-1) Π_{h'=h}^{L+1} Σ̇^(h')      (Σ̇^(L+1) := 1).
  ntkit's input kernel is x·x'/d, so Arora's network is
      Linear(W_std=1, b_std=None), [ReLU, Linear(W_std=√2, b_std=None)] × L  on inputs x·√d,
  or, with W_std=√2 on every layer, the same kernels on inputs x·√(d/2) (the ReLU kernels are
  positively homogeneous of degree 1 in Σ^(0)).
* Seeds 000 / 002 / 004 (Meilă's lecture notes; Jacot, Gabriel & Hongler 2018):
  NTK parameterization, Σ¹ = σ_w² x·x'/n0 + σ_b² (β = σ_b, σ_w = 1 in Jacot's statement),
  Σ^(l+1) = σ_w² E[φ(u)φ(v)] + σ_b², Σ̇^(l+1) = σ_w² E[φ'(u)φ'(v)],
  Θ¹ = Σ¹, Θ^(l+1) = Θ^l Σ̇^(l+1) + Σ^(l+1): ntkit's Linear(W_std=σ_w, b_std=σ_b) chain.
* Standard parameterization (Sohl-Dickstein et al. 2020; neural-tangents): z = W x + b with
  W ~ N(0, σ_w²/n_in), b ~ N(0, σ_b²): the NNGP is the same, the NTK is width dependent,
  Θ¹ = x·x' + [bias], Θ^(l+1) = n_l E[φ(u)φ(v)] + [bias] + σ_w² E[φ'(u)φ'(v)] Θ^l.

The Gaussian expectations use the textbook closed forms (Cho & Saul 2009 arc-cosine kernel;
Williams 1997 arcsine kernel) in plain numpy, with no code shared with ntkit.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import ntkit as nk

RTOL = 1e-12


# --- numpy closed forms: (E[φφ], E[φ'φ'], E[φ²] of each side) given cov and the two variances ---
def _relu_moments(S, v1, v2):
    norm = np.sqrt(np.outer(v1, v2))
    rho = np.clip(S / norm, -1.0, 1.0)
    rho[np.abs(rho - 1.0) < 4e-16] = 1.0  # identical inputs: θ = 0 exactly
    theta = np.arccos(rho)
    e = norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    ed = (np.pi - theta) / (2 * np.pi)
    return e, ed, v1 / 2, v2 / 2


def _erf_moments(S, v1, v2):
    p = np.outer(1 + 2 * v1, 1 + 2 * v2)
    e = 2 / np.pi * np.arcsin(2 * S / np.sqrt(p))
    ed = 4 / np.pi / np.sqrt(p - 4 * S * S)
    return e, ed, 2 / np.pi * np.arcsin(2 * v1 / (1 + 2 * v1)), 2 / np.pi * np.arcsin(2 * v2 / (1 + 2 * v2))


MOMENTS = {"relu": (_relu_moments, nk.ReLU), "erf": (_erf_moments, nk.Erf)}


def _data(seed=0, n1=7, n2=5, d=9):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n1, d)), rng.normal(size=(n2, d))


# --- seed 001: Arora et al. -----------------------------------------------------------------------
def arora_fc(x1, x2, L, c_sigma=2.0):
    """Arora et al. (2019) FC recursion, ReLU, no bias, Σ^(0) = x·x' (no 1/d). Returns (Σ^(L), Θ^L)."""
    sigma = [x1 @ x2.T]
    v1, v2 = (x1 * x1).sum(1), (x2 * x2).sum(1)
    dots = []
    for _ in range(L):
        e, ed, w1, w2 = _relu_moments(sigma[-1], v1, v2)
        sigma.append(c_sigma * e)
        dots.append(c_sigma * ed)
        v1, v2 = c_sigma * w1, c_sigma * w2
    dots.append(np.ones_like(sigma[0]))           # Σ̇^(L+1) = 1
    theta = np.zeros_like(sigma[0])
    for h in range(1, L + 2):                      # Σ_{h=1}^{L+1} Σ^(h-1) Π_{h'=h}^{L+1} Σ̇^(h')
        prod = np.ones_like(sigma[0])
        for hp in range(h, L + 2):
            prod = prod * dots[hp - 1]
        theta += sigma[h - 1] * prod
    return sigma[L], theta


@pytest.mark.parametrize("L", [1, 3, 6])
def test_seed001_arora_sum_of_products(L):
    x1, x2 = _data(1)
    d = x1.shape[1]
    nngp_ref, ntk_ref = arora_fc(x1, x2, L)
    # first layer W_std = 1 (Arora's W^(1) x has no c_σ), inputs scaled by √d (Σ^(0) = x·x')
    layers = [nk.Linear(256, W_std=1.0, b_std=None)]
    for _ in range(L):
        layers += [nk.ReLU(), nk.Linear(256, W_std=math.sqrt(2), b_std=None)]
    k = nk.Sequential(*layers).kernel(x1 * math.sqrt(d), x2 * math.sqrt(d))
    np.testing.assert_allclose(k.nngp.numpy(), nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk.numpy(), ntk_ref, rtol=RTOL)
    # W_std = √2 on every layer (c_σ = 2 everywhere): same kernels on inputs x·√(d/2)
    layers[0] = nk.Linear(256, W_std=math.sqrt(2), b_std=None)
    k2 = nk.Sequential(*layers).kernel(x1 * math.sqrt(d / 2), x2 * math.sqrt(d / 2))
    np.testing.assert_allclose(k2.nngp.numpy(), nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k2.ntk.numpy(), ntk_ref, rtol=RTOL)


def test_seed001_symmetric_with_diagonal():
    """x2=None: the diagonal (θ = 0) included."""
    x1, _ = _data(2)
    d = x1.shape[1]
    nngp_ref, ntk_ref = arora_fc(x1, x1, 3)
    layers = [nk.Linear(64, W_std=1.0, b_std=None)]
    for _ in range(3):
        layers += [nk.ReLU(), nk.Linear(64, W_std=math.sqrt(2), b_std=None)]
    k = nk.Sequential(*layers).kernel(x1 * math.sqrt(d))
    np.testing.assert_allclose(k.nngp.numpy(), nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk.numpy(), ntk_ref, rtol=RTOL)


# --- seeds 000 / 002 / 004: Jacot et al., Meilă -----------------------------------------------
def jacot_fc(x1, x2, depth, act, sw, sb):
    """Jacot et al. (2018) / Meilă's recursion, NTK parameterization. depth = number of Linear
    layers (Σ^(depth) is the output). sb=None means no bias (β = 0)."""
    moments = MOMENTS[act][0]
    b2 = 0.0 if sb is None else sb * sb
    n0 = x1.shape[1]
    S = sw * sw * (x1 @ x2.T) / n0 + b2
    v1 = sw * sw * (x1 * x1).sum(1) / n0 + b2
    v2 = sw * sw * (x2 * x2).sum(1) / n0 + b2
    T = S.copy()
    for _ in range(depth - 1):
        e, ed, w1, w2 = moments(S, v1, v2)
        S = sw * sw * e + b2
        T = T * (sw * sw * ed) + S
        v1, v2 = sw * sw * w1 + b2, sw * sw * w2 + b2
    return S, T


@pytest.mark.parametrize("act", ["relu", "erf"])
@pytest.mark.parametrize("sw,sb", [(1.0, 1.0),    # Meilă, seed 000: σ_w = σ_b = 1
                                   (1.0, 0.3),    # Jacot, seeds 002/004: Σ¹ = x·x'/n0 + β²
                                   (1.4, 0.2),    # general σ_w, σ_b
                                   (1.2, None)])  # no bias
@pytest.mark.parametrize("depth", [2, 4])
def test_seeds_000_002_004_jacot_recursion(act, sw, sb, depth):
    x1, x2 = _data(3)
    nngp_ref, ntk_ref = jacot_fc(x1, x2, depth, act, sw, sb)
    layers = [nk.Linear(128, W_std=sw, b_std=sb)]
    for _ in range(depth - 1):
        layers += [MOMENTS[act][1](), nk.Linear(128, W_std=sw, b_std=sb)]
    k = nk.Sequential(*layers).kernel(x1, x2)
    np.testing.assert_allclose(k.nngp.numpy(), nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk.numpy(), ntk_ref, rtol=RTOL)


# --- standard parameterization ------------------------------------------------------------------
def standard_fc(x1, x2, widths, act, sw, sb):
    """Standard parameterization: NNGP as above, NTK
    Θ¹ = x·x' + [b], Θ^(l+1) = n_l E[φφ] + [b] + σ_w² E[φ'φ'] Θ^l, n_l the width of layer l."""
    moments = MOMENTS[act][0]
    has_b = sb is not None
    b2 = 0.0 if sb is None else sb * sb
    n0 = x1.shape[1]
    S = sw * sw * (x1 @ x2.T) / n0 + b2
    v1 = sw * sw * (x1 * x1).sum(1) / n0 + b2
    v2 = sw * sw * (x2 * x2).sum(1) / n0 + b2
    T = x1 @ x2.T + has_b
    for n_l in widths[:-1]:
        e, ed, w1, w2 = moments(S, v1, v2)
        T = n_l * e + has_b + sw * sw * ed * T
        S = sw * sw * e + b2
        v1, v2 = sw * sw * w1 + b2, sw * sw * w2 + b2
    return S, T


@pytest.mark.parametrize("act", ["relu", "erf"])
@pytest.mark.parametrize("sb", [None, 0.0, 0.3])
def test_standard_parameterization_recursion(act, sb):
    x1, x2 = _data(4)
    widths = [64, 32, 128, 3]
    sw = 1.3
    nngp_ref, ntk_ref = standard_fc(x1, x2, widths, act, sw, sb)
    layers = [nk.Linear(widths[0], W_std=sw, b_std=sb, parameterization="standard")]
    for w in widths[1:]:
        layers += [MOMENTS[act][1](), nk.Linear(w, W_std=sw, b_std=sb, parameterization="standard")]
    k = nk.Sequential(*layers).kernel(x1, x2)
    np.testing.assert_allclose(k.nngp.numpy(), nngp_ref, rtol=RTOL)
    np.testing.assert_allclose(k.ntk.numpy(), ntk_ref, rtol=RTOL)
    # b_std=0 differs from b_std=None in the standard parameterization (the bias gradient is 1)
    if sb == 0.0:
        _, ntk_nobias = standard_fc(x1, x2, widths, act, sw, None)
        assert np.all(k.ntk.numpy() > ntk_nobias)


def test_frozen_layer_recursion():
    """trainable=False: the frozen layer shapes the NNGP but adds no Σ term to the NTK:
    Θ^(l+1) = Θ^l Σ̇^(l+1) (+ Σ^(l+1) only when layer l+1 trains). First and last layer frozen."""
    x1, x2 = _data(5)
    sw, sb = 1.4, 0.1
    n0 = x1.shape[1]
    S = sw * sw * (x1 @ x2.T) / n0 + sb * sb
    v1 = sw * sw * (x1 * x1).sum(1) / n0 + sb * sb
    v2 = sw * sw * (x2 * x2).sum(1) / n0 + sb * sb
    T = np.zeros_like(S)  # frozen first layer
    trains = [True, False]  # layers 2 and 3 (the last is frozen)
    for tr in trains:
        e, ed, w1, w2 = _relu_moments(S, v1, v2)
        S = sw * sw * e + sb * sb
        T = T * (sw * sw * ed) + (S if tr else 0.0)
        v1, v2 = sw * sw * w1 + sb * sb, sw * sw * w2 + sb * sb
    arch = nk.Sequential(nk.Linear(32, W_std=sw, b_std=sb, trainable=False), nk.ReLU(),
                         nk.Linear(32, W_std=sw, b_std=sb), nk.ReLU(),
                         nk.Linear(1, W_std=sw, b_std=sb, trainable=False))
    k = arch.kernel(x1, x2)
    np.testing.assert_allclose(k.nngp.numpy(), S, rtol=RTOL)
    np.testing.assert_allclose(k.ntk.numpy(), T, rtol=RTOL)
