"""Finite networks from ``arch.init`` vs the analytic kernels (Monte Carlo, empirical NTK) and
the parameterization of the finite layers (shapes, sample standard deviations, forward formula).

References:
* NNGP: K(x, x') = E[f(x) f(x')] over initializations. For one hidden layer the expectation is
  exactly the NNGP at any width (the hidden pre-activations are exactly Gaussian), so the Monte
  Carlo mean must match within its own standard error: asserted |mean - K| <= 5 SE, SE estimated
  from the samples. For two hidden layers the finite-width bias O(1/width) is added to the bound.
* NTK: the empirical NTK J J^T of one wide net, J the per-parameter Jacobian computed here by
  torch.autograd over the parameters with requires_grad. Its fluctuation around the analytic NTK
  is O(width^-1/2): measured over 10 seeds at width 16384 (1 hidden layer) the max entry error
  relative to the largest entry is 0.5%..3.7%; asserted 8%. At width 1024 with 2 hidden layers
  (float32) asserted 20% (measured 2%..6% at width 2048).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.layers.finite import NTKLinear


# thousands of tiny forward passes: torch's intra-op thread pool only adds synchronization
# there (20x slower on a loaded 2-core machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs():
    x = np.random.default_rng(0).normal(size=(4, 6))
    x[1] = x[0] * (1 + 1e-3)  # nearly equal
    x[2] = -x[0]              # antipodal
    return x


def _mc_nngp(arch, x, n_init, dtype=torch.float32):
    """Per-initialization estimates of E[f(x) f(x')] (mean over the independent outputs)."""
    X = torch.tensor(x, dtype=dtype)
    vals = []
    with torch.no_grad():
        for seed in range(n_init):
            f = arch.init((x.shape[1],), seed=seed, dtype=dtype)(X).double()  # (n, outputs)
            vals.append((f @ f.T / f.shape[1]).numpy())
    vals = np.array(vals)
    return vals.mean(0), vals.std(0, ddof=1) / math.sqrt(n_init)


@pytest.mark.parametrize("act", [nk.ReLU(), nk.Erf()], ids=["relu", "erf"])
def test_monte_carlo_nngp_one_hidden_layer(act):
    x = _inputs()
    arch = nk.Sequential(nk.Linear(256, W_std=1.5, b_std=0.3), act,
                         nk.Linear(32, W_std=1.2, b_std=0.1))
    mean, se = _mc_nngp(arch, x, 1000)
    K = arch.kernel(x).nngp.numpy()
    assert np.all(np.abs(mean - K) <= 5 * se), ((mean - K) / se)
    assert np.all(se < 0.06 * np.abs(K).max())  # the test has power


def test_monte_carlo_nngp_two_hidden_layers_standard():
    x = _inputs()
    width = 256
    arch = nk.Sequential(nk.Linear(width, W_std=1.4, b_std=0.2, parameterization="standard"),
                         nk.ReLU(),
                         nk.Linear(width, W_std=1.4, b_std=0.2, parameterization="standard"),
                         nk.ReLU(),
                         nk.Linear(16, W_std=1.1, b_std=None, parameterization="standard"))
    mean, se = _mc_nngp(arch, x, 400)
    K = arch.kernel(x).nngp.numpy()
    bias = 4.0 / width * np.abs(K)  # finite-width correction O(1/width)
    assert np.all(np.abs(mean - K) <= 5 * se + bias), ((mean - K) / se)


def empirical_ntk(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """J J^T with J[i] = d f(x_i) / d θ over the parameters that require grad (scalar output)."""
    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(net(x[i:i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows).double()
    return (J @ J.T).numpy()


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("frozen_first", [False, True])
def test_empirical_ntk_of_wide_net_one_hidden_layer(parameterization, frozen_first):
    x = _inputs()
    arch = nk.Sequential(
        nk.Linear(16384, W_std=1.5, b_std=0.2, parameterization=parameterization,
                  trainable=not frozen_first),
        nk.ReLU(),
        nk.Linear(1, W_std=1.5, b_std=0.2, parameterization=parameterization))
    K = arch.kernel(x).ntk.numpy()
    net = arch.init((6,), seed=0, dtype=torch.float64)
    n_frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert n_frozen == (6 * 16384 + 16384 if frozen_first else 0)
    E = empirical_ntk(net, torch.tensor(x))
    assert np.abs(E - K).max() <= 0.08 * np.abs(K).max()


def test_frozen_layer_changes_ntk_by_its_own_term():
    """With the first layer frozen (ntk parameterization) the NTK loses exactly the first
    layer's contribution W2² Σ¹ E[φ'φ'] — both empirically and analytically."""
    x = _inputs()
    mk = lambda tr: nk.Sequential(nk.Linear(16384, W_std=1.5, b_std=0.2, trainable=tr), nk.ReLU(),
                                  nk.Linear(1, W_std=1.5, b_std=0.2))
    K_all, K_frozen = mk(True).kernel(x).ntk.numpy(), mk(False).kernel(x).ntk.numpy()
    E_all = empirical_ntk(mk(True).init((6,), seed=1, dtype=torch.float64), torch.tensor(x))
    E_frozen = empirical_ntk(mk(False).init((6,), seed=1, dtype=torch.float64), torch.tensor(x))
    first_analytic, first_empirical = K_all - K_frozen, E_all - E_frozen
    assert np.abs(first_empirical - first_analytic).max() <= 0.08 * np.abs(first_analytic).max()


def test_empirical_ntk_two_hidden_layers_float32():
    x = _inputs()
    arch = nk.Sequential(nk.Linear(1024, W_std=1.5, b_std=0.2), nk.ReLU(),
                         nk.Linear(1024, W_std=1.5, b_std=0.2), nk.ReLU(),
                         nk.Linear(1, W_std=1.5, b_std=0.2))
    K = arch.kernel(x).ntk.numpy()
    E = empirical_ntk(arch.init((6,), seed=0), torch.tensor(x, dtype=torch.float32))
    assert np.abs(E - K).max() <= 0.2 * np.abs(K).max()


# --- parameterization of the finite layers ---------------------------------------------------------
def _sample_std_ok(t: torch.Tensor, expected: float, z: float = 5.0) -> bool:
    """Sample std within z standard errors (SE of a std ≈ σ / sqrt(2N)) of ``expected``."""
    n = t.numel()
    return abs(float(t.detach().double().std()) - expected) <= z * expected / math.sqrt(2 * n)


def test_init_shapes_stds_and_trainable():
    d = 40
    arch = nk.Sequential(nk.Linear(300, W_std=1.7, b_std=0.4), nk.ReLU(),
                         nk.Linear(200, W_std=1.3, b_std=0.5, parameterization="standard"),
                         nk.Tanh(),
                         nk.Linear(50, W_std=0.9, b_std=None, parameterization="standard"),
                         nk.Erf(),
                         nk.Linear(3, W_std=1.1, b_std=0.2, trainable=False))
    net = arch.init((d,), seed=3)
    assert isinstance(net, torch.nn.Sequential) and len(net) == 7
    l1, l2, l3, l4 = net[0], net[2], net[4], net[6]
    assert all(isinstance(m, NTKLinear) for m in (l1, l2, l3, l4))
    assert l1.weight.shape == (300, d) and l1.bias.shape == (300,)
    assert l2.weight.shape == (200, 300) and l3.weight.shape == (50, 200) and l3.bias is None
    assert l4.weight.shape == (3, 50)
    # NTK parameterization: the parameters are N(0, 1); the scales live in the forward pass
    assert _sample_std_ok(l1.weight, 1.0) and _sample_std_ok(l1.bias, 1.0)
    # standard: W ~ N(0, W_std² / fan_in), b ~ N(0, b_std²)
    assert _sample_std_ok(l2.weight, 1.3 / math.sqrt(300)) and _sample_std_ok(l2.bias, 0.5)
    assert _sample_std_ok(l3.weight, 0.9 / math.sqrt(200))
    assert not l4.weight.requires_grad and not l4.bias.requires_grad
    assert l1.weight.requires_grad and l2.bias.requires_grad
    assert net[0].weight.dtype == torch.float32
    assert arch.init((d,), seed=3, dtype=torch.float64)[0].weight.dtype == torch.float64
    # reproducible per seed, different across seeds
    assert torch.equal(arch.init((d,), seed=3)[0].weight, l1.weight)
    assert not torch.equal(arch.init((d,), seed=4)[0].weight, l1.weight)
    # output shape
    assert net(torch.zeros(7, d)).shape == (7, 3)


def test_ntk_linear_forward_formula():
    """NTK parameterization: z = (W_std/√fan_in) W x + b_std b; standard: z = W x + b.
    Tolerance: 1e-14 of the sum of the terms' magnitudes (an output near 0 is a cancellation)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, dtype=torch.float64, generator=g)
    lin = NTKLinear(8, 4, W_std=1.7, b_std=0.3, parameterization="ntk", generator=g,
                    dtype=torch.float64)
    expected = 1.7 / math.sqrt(8) * x @ lin.weight.T + 0.3 * lin.bias
    scale = 1.7 / math.sqrt(8) * x.abs() @ lin.weight.abs().T + 0.3 * lin.bias.abs()
    err = (lin(x) - expected).abs().detach()
    assert bool((err <= 1e-14 * scale.detach()).all()), float((err / scale).max())
    std = NTKLinear(8, 4, W_std=1.7, b_std=None, parameterization="standard", generator=g,
                    dtype=torch.float64)
    err = (std(x) - x @ std.weight.T).abs().detach()
    assert bool((err <= 1e-14 * (x.abs() @ std.weight.abs().T).detach()).all())
