"""nk.from_torch: an ordinary torch MLP -> its infinite-width architecture.

Reference: the hand-built ntkit architecture of the same layer types, widths and W_std/b_std
(whose kernels are checked against mpmath and the seeds' recursions in the test_layers_dense_*
files), and the layer-by-layer structure of the torch module.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk


def _x(n=9, d=5, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[1] = x[0] * (1 + 1e-7)
    return x


def _same_kernels(a, b, x):
    ka, kb = a.kernel(x), b.kernel(x)
    assert torch.equal(ka.nngp, kb.nngp) and torch.equal(ka.ntk, kb.ntk)


def test_mlp_matches_hand_built_arch():
    mlp = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(),
                        nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 8), nn.Sigmoid(),
                        nn.Linear(8, 4), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(4, 1))
    arch = nk.from_torch(mlp, W_std=1.3, b_std=0.2)
    hand = nk.Sequential(nk.Linear(64, W_std=1.3, b_std=0.2), nk.ReLU(),
                         nk.Linear(32, W_std=1.3, b_std=0.2), nk.Tanh(),
                         nk.Linear(16, W_std=1.3, b_std=0.2), nk.GELU(),
                         nk.Linear(8, W_std=1.3, b_std=0.2), nk.Sigmoid(),
                         nk.Linear(4, W_std=1.3, b_std=0.2), nk.LeakyReLU(0.2), nk.Identity(),
                         nk.Linear(1, W_std=1.3, b_std=0.2))
    assert [type(l) for l in arch.layers] == [type(l) for l in hand.layers]
    assert [l.out_features for l in arch.layers if isinstance(l, nk.Linear)] == [64, 32, 16, 8, 4, 1]
    _same_kernels(arch, hand, _x())
    # the finite network has the same shapes as the torch one
    net = arch.init((5,), seed=0)
    torch_shapes = [tuple(p.shape) for p in mlp.parameters()]
    assert [tuple(p.shape) for p in net.parameters()] == torch_shapes


def test_bias_false_frozen_nested_and_standard():
    frozen = nn.Linear(5, 32)
    frozen.weight.requires_grad_(False)
    mlp = nn.Sequential(frozen, nn.ReLU(), nn.Sequential(nn.Linear(32, 16, bias=False), nn.ReLU()),
                        nn.Linear(16, 1))
    arch = nk.from_torch(mlp, W_std=math.sqrt(2), b_std=0.1, parameterization="standard")
    hand = nk.Sequential(
        nk.Linear(32, W_std=math.sqrt(2), b_std=0.1, parameterization="standard", trainable=False),
        nk.ReLU(),
        nk.Linear(16, W_std=math.sqrt(2), b_std=None, parameterization="standard"), nk.ReLU(),
        nk.Linear(1, W_std=math.sqrt(2), b_std=0.1, parameterization="standard"))
    lin = [l for l in arch.layers if isinstance(l, nk.Linear)]
    assert [l.trainable for l in lin] == [False, True, True]
    assert [l.b_std for l in lin] == [0.1, None, 0.1]
    assert all(l.parameterization == "standard" for l in lin)
    _same_kernels(arch, hand, _x())


def test_single_layer_and_identity():
    arch = nk.from_torch(nn.Linear(5, 3), W_std=1.1, b_std=0.0)
    assert len(arch) == 1 and isinstance(arch[0], nk.Linear) and arch[0].out_features == 3
    _same_kernels(arch, nk.Sequential(nk.Linear(3, W_std=1.1, b_std=0.0)), _x())


def test_unsupported_layers_are_named():
    with pytest.raises(ValueError, match="unsupported layer Softplus"):
        nk.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Softplus()))
    with pytest.raises(ValueError, match="unsupported layer BatchNorm1d"):
        nk.from_torch(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match="approximate='tanh'"):
        nk.from_torch(nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh")))
