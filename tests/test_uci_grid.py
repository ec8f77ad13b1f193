"""ntkit.uci_grid against (a) PROTOCOL.md section 3 written out directly here: one independent
recursion per (dep, fix), with the Gaussian expectations evaluated by the arc-cosine closed form
written from the definition (Cho & Saul 2009), and (b) ntkit's layers: nk.Sequential of
bias-free Linear/ReLU with the first ``fix`` Linear layers trainable=False (He normalization, input
kernel X Xᵀ/d), which must equal the grid kernel times 2^dep / d. Also (c) a Monte Carlo check of
one step of the map: E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, Λ)."""
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.uci_grid import iter_ntk_grid, ntk_grid, relu_step


def _reference(X, dep, fix):
    """K[dep][fix] = Σ_{h=fix..dep} Σ^(h) Π_{h'>h} Σ̇^(h'), entry by entry, protocol scaling 1/(2π)."""
    n = X.shape[0]
    K = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            s_ii, s_jj, s_ij = X[i] @ X[i], X[j] @ X[j], X[i] @ X[j]
            sig, dot = [s_ij], [None]
            for _ in range(dep):
                c = max(-1.0, min(1.0, s_ij / math.sqrt(s_ii * s_jj)))
                t = math.acos(c) if i != j else 0.0
                s_ij = math.sqrt(s_ii * s_jj) * (math.sin(t) + (math.pi - t) * math.cos(t)) / (2 * math.pi)
                dot.append((math.pi - t) / (2 * math.pi))
                s_ii, s_jj = s_ii / 2, s_jj / 2  # the same map at θ = 0
                sig.append(s_ij)
            K[i, j] = sum(sig[h] * math.prod(dot[h + 1:dep + 1]) for h in range(fix, dep + 1))
    return K


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 4))
    x[3] = -x[1]            # θ = π
    x[5] = 2.5 * x[2]       # θ = 0 off the diagonal
    return x


def test_grid_matches_independent_recursion(X):
    grid = ntk_grid(X, 5)
    assert sorted(grid) == [(d, f) for d in range(5) for f in range(d + 1)]
    for (dep, fix), K in grid.items():
        ref = _reference(X, dep, fix)
        np.testing.assert_allclose(K, ref, rtol=1e-7, atol=1e-7 * np.abs(ref).max())
        np.testing.assert_allclose(K, K.T, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_grid_order_is_the_protocols_loop(X):
    order = [(d, f) for d, f, _ in iter_ntk_grid(X, 3)]
    assert order == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]


def test_grid_equals_ntkit_layers_up_to_normalization(X):
    d = X.shape[1]
    grid = ntk_grid(X, 5)
    for (dep, fix), K in grid.items():
        layers = [nk.Linear(16, W_std=1.0, b_std=None, trainable=fix < 1)]
        for layer in range(1, dep + 1):
            layers += [nk.ReLU(), nk.Linear(16, W_std=math.sqrt(2), b_std=None,
                                            trainable=fix < layer + 1)]
        k = nk.Sequential(*layers).kernel(torch.tensor(X, dtype=torch.float64))
        scale = d * 2.0 ** -dep
        # rtol 1e-8: at θ = 0 off the diagonal (rows 2 and 5) the grid, like the paper's code, takes
        # arccos of a rounded 1 (error ~1e-9); ntkit has an exact path there
        np.testing.assert_allclose(K, k.ntk.numpy() * scale, rtol=1e-8, atol=1e-12)
        if fix == dep:  # NNGP of the same net
            np.testing.assert_allclose(K, k.nngp.numpy() * scale, rtol=1e-10, atol=1e-12)


def test_one_step_monte_carlo():
    """Σ' = E[relu(u) relu(v)] and Σ̇ = E[1(u>0) 1(v>0)], (u, v) ~ N(0, S) (the 1/(2π) scale is
    exactly E over the Gaussian with c_σ = 1). 4e5 samples: standard error < 2e-3."""
    S = np.array([[1.3, -0.4], [-0.4, 0.7]])
    rng = np.random.default_rng(0)
    uv = rng.multivariate_normal(np.zeros(2), S, size=400_000)
    relu = np.maximum(uv, 0)
    expect = relu.T @ relu / len(uv)
    step = (uv > 0).astype(float)
    expect_dot = step.T @ step / len(uv)
    out = S.copy()
    dot = relu_step(out, block=1)
    np.testing.assert_allclose(out, expect, atol=6e-3)
    np.testing.assert_allclose(dot, expect_dot, atol=6e-3)


def test_blocking_does_not_change_the_result(X):
    a, b = X @ X.T, X @ X.T
    da, db = relu_step(a, block=2), relu_step(b, block=1000)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(da, db)


def test_bad_input():
    with pytest.raises(ValueError, match="2-d"):
        next(iter_ntk_grid(np.ones(3)))
    with pytest.raises(ValueError, match="n_depths"):
        next(iter_ntk_grid(np.ones((2, 2)), 0))
    with pytest.raises(ValueError, match="NaN"):
        next(iter_ntk_grid(np.array([[1.0, np.nan]])))
