"""Convolutional CNN-GP / CNTK layers against independent references:
a brute-force implementation of Arora et al. 2019's formulas (loops over pixel pairs, tests/
conv_bruteforce.py), the dense kernel (1x1 images), and Monte Carlo over finite CNNs."""
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from ntkit.layers import conv_fused, conv_native
from tests import conv_bruteforce as bf

S2 = math.sqrt(2.0)


def _arch_and_spec(case):
    """(ntkit architecture, brute-force spec) for a named case."""
    if case == "same-flatten":  # CNTK-V (fusable)
        return (nk.Sequential(nk.Conv2d(4, 3, W_std=S2, b_std=None), nk.ReLU(),
                              nk.Conv2d(4, 3, W_std=S2, b_std=None), nk.ReLU(), nk.Flatten(),
                              nk.Linear(1, W_std=1.0, b_std=None)),
                [("conv", 3, 3, (1, 1), "same", S2, None, True), ("relu", 0.0, 1.0),
                 ("conv", 3, 3, (1, 1), "same", S2, None, True), ("relu", 0.0, 1.0), ("flatten",),
                 ("dense", 1.0, None, True)])
    if case == "same-gap-fixed":  # CNTK-GAP protocol: first and last layers fixed (fusable)
        return (nk.Sequential(nk.Conv2d(4, 3, W_std=S2, b_std=None, trainable=False), nk.ReLU(),
                              nk.Conv2d(4, 3, W_std=S2, b_std=None), nk.LeakyReLU(0.2),
                              nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.0, b_std=None, trainable=False)),
                [("conv", 3, 3, (1, 1), "same", S2, None, False), ("relu", 0.0, 1.0),
                 ("conv", 3, 3, (1, 1), "same", S2, None, True), ("relu", 0.2, 1.0), ("gap",),
                 ("dense", 1.0, None, False)])
    if case == "valid-stride-gap":
        return (nk.Sequential(nk.Conv2d(4, (2, 3), stride=(2, 1), padding="valid", W_std=1.3, b_std=0.2),
                              nk.ReLU(), nk.Conv2d(4, 2, padding="same", W_std=1.1, b_std=0.1),
                              nk.ReLU(), nk.GlobalAvgPool2d(), nk.Linear(3, W_std=1.2, b_std=0.3),
                              nk.ReLU(), nk.Linear(1, W_std=1.0, b_std=0.1)),
                [("conv", 2, 3, (2, 1), "valid", 1.3, 0.2, True), ("relu", 0.0, 1.0),
                 ("conv", 2, 2, (1, 1), "same", 1.1, 0.1, True), ("relu", 0.0, 1.0), ("gap",),
                 ("dense", 1.2, 0.3, True), ("relu_flat", 0.0, 1.0), ("dense", 1.0, 0.1, True)])
    if case == "circular-pool-flatten":
        return (nk.Sequential(nk.Conv2d(4, 3, stride=2, padding="circular", W_std=1.5, b_std=0.1),
                              nk.ReLU(), nk.AvgPool2d(2, stride=1, padding="same"),
                              nk.Conv2d(4, 3, padding="circular", W_std=1.2, b_std=None), nk.ReLU(),
                              nk.Flatten(), nk.Linear(1, W_std=1.0, b_std=0.0)),
                [("conv", 3, 3, (2, 2), "circular", 1.5, 0.1, True), ("relu", 0.0, 1.0),
                 ("pool", 2, 1, "same"), ("conv", 3, 3, (1, 1), "circular", 1.2, None, True),
                 ("relu", 0.0, 1.0), ("flatten",), ("dense", 1.0, 0.0, True)])
    if case == "valid-pool-valid":
        return (nk.Sequential(nk.Conv2d(4, 2, padding="valid", W_std=1.4, b_std=0.3), nk.ReLU(),
                              nk.AvgPool2d(2, padding="valid"), nk.Flatten(),
                              nk.Linear(1, W_std=1.0, b_std=0.2)),
                [("conv", 2, 2, (1, 1), "valid", 1.4, 0.3, True), ("relu", 0.0, 1.0),
                 ("pool", 2, 2, "valid"), ("flatten",), ("dense", 1.0, 0.2, True)])
    if case == "same-3x5-bias-gap":  # fusable, a kernel size without a compiled stencil
        return (nk.Sequential(nk.Conv2d(4, (3, 5), W_std=1.3, b_std=0.2), nk.ReLU(),
                              nk.Conv2d(4, (3, 5), W_std=1.1, b_std=0.1), nk.ABReLU(-0.3, 0.8),
                              nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.0, b_std=0.1)),
                [("conv", 3, 5, (1, 1), "same", 1.3, 0.2, True), ("relu", 0.0, 1.0),
                 ("conv", 3, 5, (1, 1), "same", 1.1, 0.1, True), ("relu", -0.3, 0.8), ("gap",),
                 ("dense", 1.0, 0.1, True)])
    raise KeyError(case)


CASES = ["same-flatten", "same-gap-fixed", "valid-stride-gap", "circular-pool-flatten",
         "valid-pool-valid", "same-3x5-bias-gap"]


@pytest.fixture(params=["native", "torch", "layerwise"])
def fused(request):
    """The fused [Conv2d, ReLU] path with the C++ kernel (skipped where it cannot be built),
    the fused path in torch ops, and the layer-by-layer reference path."""
    if request.param == "native" and not conv_native.available():
        pytest.skip(f"native kernel unavailable: {conv_native.last_error()}")
    return KernelOptions(fused=request.param != "layerwise", native=request.param == "native")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("hw", [(4, 4), (5, 5)])
def test_matches_bruteforce_float64(case, hw, fused):
    """Fast paths (fused and layer-by-layer, both regimes) = brute force to 1e-10, for x2 given
    and x2=None (one triangle + the once-per-input self pass)."""
    rng = np.random.default_rng([CASES.index(case), *hw])  # the same inputs in every process
    x1 = rng.standard_normal((3, 2) + hw)
    x2 = rng.standard_normal((2, 2) + hw)
    arch, spec = _arch_and_spec(case)
    ref_nngp, ref_ntk = bf.kernel_matrix(x1, x2, spec)
    k = arch.kernel(x1, x2, options=fused)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-10, atol=1e-14)
    ref_nngp, ref_ntk = bf.kernel_matrix(x1, x1, spec)
    k = arch.kernel(x1, batch_size=2, options=fused)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(k.ntk.numpy()[off], ref_ntk[off], rtol=1e-10, atol=1e-14)
    # the diagonal: exact with the fused path's ±1 snapping of correlations; the layer-by-layer
    # ReLU sees ρ = v·(1/√v)² = 1 - O(ulp) there, i.e. θ ~ 1e-8
    diag_tol = 1e-10 if (fused.fused and case.startswith("same")) else 1e-7
    np.testing.assert_allclose(np.diag(k.ntk.numpy()), np.diag(ref_ntk), rtol=diag_tol)


def test_float32_close_to_float64():
    arch, _ = _arch_and_spec("same-gap-fixed")
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 5))
    k64 = arch.kernel(x)
    k32 = arch.kernel(x.astype(np.float32))
    assert k32.ntk.dtype == torch.float32
    np.testing.assert_allclose(k32.ntk.numpy(), k64.ntk.numpy(), rtol=2e-4, atol=1e-6)


def test_nngp_only_and_batching_agree():
    arch, _ = _arch_and_spec("valid-stride-gap")
    x = np.random.default_rng(2).standard_normal((5, 2, 5, 5))
    full = arch.kernel(x)
    part = arch.kernel(x, get="nngp", batch_size=3)
    assert part.ntk is None
    np.testing.assert_allclose(part.nngp.numpy(), full.nngp.numpy(), rtol=1e-13)


def test_one_pixel_conv_equals_dense():
    """Conv2d on 1x1 images with a 1x1 kernel is a Linear layer on the channels."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 1, 1))
    conv = nk.Sequential(nk.Conv2d(8, 1, W_std=1.3, b_std=0.2), nk.ReLU(),
                         nk.Conv2d(8, 1, W_std=1.1, b_std=0.1, parameterization="standard"),
                         nk.ReLU(), nk.Flatten(), nk.Linear(1, W_std=0.9, b_std=0.3))
    dense = nk.Sequential(nk.Linear(8, W_std=1.3, b_std=0.2), nk.ReLU(),
                          nk.Linear(8, W_std=1.1, b_std=0.1, parameterization="standard"),
                          nk.ReLU(), nk.Linear(1, W_std=0.9, b_std=0.3))
    kc = conv.kernel(x[:2], x[2:])  # distinct inputs: the dense path refines equal ones
    kd = dense.kernel(x[:2, :, 0, 0], x[2:, :, 0, 0])
    np.testing.assert_allclose(kc.nngp.numpy(), kd.nngp.numpy(), rtol=1e-12)
    np.testing.assert_allclose(kc.ntk.numpy(), kd.ntk.numpy(), rtol=1e-12)


def test_monte_carlo_cnn_gp():
    """Wide finite CNNs from arch.init: the empirical covariance of the outputs over random
    initializations approaches the analytic CNN-GP. With N = 24 seeds x 128 readout units the
    sampling error of each entry is about sqrt((K11 K22 + K12²)/N) <= 0.03·K11 (plus O(1/width)
    = 0.4% finite-width bias); we allow 0.12·mean(diag) (4 standard errors)."""
    arch = nk.Sequential(nk.Conv2d(256, 3, W_std=1.5, b_std=0.2), nk.ReLU(),
                         nk.Conv2d(256, 3, stride=2, W_std=1.5, b_std=0.2), nk.ReLU(),
                         nk.GlobalAvgPool2d(), nk.Linear(128, W_std=1.2, b_std=0.1))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 5, 5))
    analytic = arch.kernel(x, get="nngp").nngp.numpy()
    outs = []
    xt = torch.tensor(x, dtype=torch.float32)
    with torch.no_grad():
        for seed in range(24):
            net = arch.init((2, 5, 5), seed=seed)
            outs.append(net(xt).numpy())  # (3, 128)
    f = np.concatenate(outs, axis=1).astype(np.float64)  # (3, N)
    emp = f @ f.T / f.shape[1]
    scale = np.mean(np.diag(analytic))
    assert np.max(np.abs(emp - analytic)) < 0.12 * scale, (emp, analytic)


def test_from_torch_conv_net():
    from torch import nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 1))
    arch = nk.from_torch(net, W_std=1.4, b_std=0.1)
    ref = nk.Sequential(nk.Conv2d(8, 3, W_std=1.4, b_std=None), nk.ReLU(),
                        nk.Conv2d(8, 3, W_std=1.4, b_std=0.1), nk.ReLU(), nk.GlobalAvgPool2d(),
                        nk.Flatten(), nk.Linear(1, W_std=1.4, b_std=0.1))
    x = np.random.default_rng(5).standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(arch.kernel(x).ntk.numpy(), ref.kernel(x).ntk.numpy(), rtol=1e-13)
    assert arch.init((3, 4, 4), seed=0)(torch.zeros(1, 3, 4, 4)).shape == (1, 1)


# -- bad input ------------------------------------------------------------------------------
def test_channels_last_input_is_reported():
    arch = nk.Sequential(nk.Conv2d(4, 3), nk.ReLU(), nk.Flatten(), nk.Linear(1))
    x = np.zeros((2, 8, 8, 3))
    with pytest.raises(ValueError, match="channels-last"):
        arch.kernel(x)


def test_valid_image_smaller_than_kernel():
    arch = nk.Sequential(nk.Conv2d(4, 5, padding="valid"), nk.ReLU(), nk.Flatten(), nk.Linear(1))
    with pytest.raises(ValueError, match="smaller than the window"):
        arch.kernel(np.ones((2, 1, 3, 3)))


def test_pooling_before_dense_needs_flatten():
    arch = nk.Sequential(nk.Conv2d(4, 3), nk.ReLU(), nk.AvgPool2d(2), nk.Linear(1))
    with pytest.raises(ValueError, match="Flatten"):
        arch.kernel(np.ones((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="Flatten"):
        arch.init((1, 4, 4))


def test_image_output_without_readout():
    arch = nk.Sequential(nk.Conv2d(4, 3), nk.ReLU())
    with pytest.raises(ValueError, match="Flatten"):
        arch.kernel(np.ones((2, 1, 4, 4)))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="padding"):
        nk.Conv2d(4, 3, padding="reflect")
    with pytest.raises(ValueError, match="kernel_size"):
        nk.Conv2d(4, 0)
    with pytest.raises(ValueError, match="out_channels"):
        nk.Conv2d(0, 3)


def test_torch_fused_micro_batches_padding(monkeypatch):
    """The torch fused path in micro-batches of 4 pairs (as on CUDA, where the last batch is
    padded with zero factors): equals the brute-force reference."""
    monkeypatch.setitem(conv_fused._MICRO, "cpu", 4)
    arch, spec = _arch_and_spec("same-3x5-bias-gap")
    rng = np.random.default_rng(11)
    x1, x2 = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    ref_nngp, ref_ntk = bf.kernel_matrix(x1, x2, spec)
    # 6 entries and 5 pairs of inputs with themselves: batches of 4, 4 and 3 (+1 padding)
    k = arch.kernel(x1, x2, options=KernelOptions(native=False))
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-10, atol=1e-14)
