"""float32 kernels vs float64 kernels of the same (float32-representable) inputs.

The float64 kernels are the reference here: they agree with mpmath to ~1e-15
(tests/test_layers_dense_closed_forms.py) and with the seeds' recursions
(tests/test_layers_dense_seeds.py). Near the diagonal the naive arccos of a correlation near 1
would lose half of float32's digits (an error ~3e-4 in θ); ntkit recomputes pairs with input
correlation above 1 - 1e-2 in float64 carrying E[(u - v)²].

Measured (max relative error over all entries, NNGP / NTK):
  x vs x(1+1e-7), x vs x (x2=None and x2 given), depth 3 and 10, ReLU, W_std=√2, b_std None/0.1:
      <= 3e-7 (asserted 1e-5);
  500 MNIST-like 784-d inputs, whole matrix, depth 3 and 10: <= 2.3e-6 (asserted 1e-4; 2e-5 for
      depth 3).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk


def _relu_net(depth, b_std):
    layers = [nk.Linear(64, W_std=math.sqrt(2), b_std=b_std)]
    for _ in range(depth):
        layers += [nk.ReLU(), nk.Linear(64, W_std=math.sqrt(2), b_std=b_std)]
    return nk.Sequential(*layers)


def _rel_err(k32, k64):
    out = {}
    for name in ("nngp", "ntk"):
        a, b = getattr(k32, name), getattr(k64, name)
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        out[name] = float((a.double() / b - 1).abs().max())
    return out


@pytest.mark.parametrize("b_std", [None, 0.1])
@pytest.mark.parametrize("depth", [3, 10])
def test_float32_near_diagonal(depth, b_std):
    rng = np.random.default_rng(depth)
    x = rng.normal(size=(4, 30)).astype(np.float32)
    x_near = (x.astype(np.float64) * (1 + 1e-7)).astype(np.float32)
    x[3] = x[2] * np.float32(1 + 2 ** -20)  # a second near pair inside x itself
    arch = _relu_net(depth, b_std)
    for args in ((x, x_near), (x,), (x, x.copy())):
        k32 = arch.kernel(*args)
        k64 = arch.kernel(*[a.astype(np.float64) for a in args])
        err = _rel_err(k32, k64)
        assert err["nngp"] < 1e-5 and err["ntk"] < 1e-5, (len(args), err)


def mnist_like(n: int, seed: int) -> np.ndarray:
    """Synthetic 28x28 'digits': a few Gaussian strokes, clipped to [0, 1], background 0
    (non-negative, ~40% non-zero pixels, pairwise correlations up to ~0.98 like MNIST)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28))
    for i in range(n):
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(6, 22, 2)
            s = rng.uniform(1.5, 3.5)
            out[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    out = np.clip(out, 0, 1)
    out[out < 0.1] = 0
    return out.reshape(n, 784).astype(np.float32)


@pytest.mark.parametrize("depth,b_std,tol", [(3, 0.1, 2e-5), (10, None, 1e-4)])
def test_float32_whole_matrix_mnist_like(depth, b_std, tol):
    x = mnist_like(500, 1)
    x[1] = x[0] * np.float32(1 + 1e-6)  # one nearly duplicated image
    arch = _relu_net(depth, b_std)
    err = _rel_err(arch.kernel(x), arch.kernel(x.astype(np.float64)))
    assert err["nngp"] < tol and err["ntk"] < tol, err
