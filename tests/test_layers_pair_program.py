"""The per-pair native pass of pixel-pair states (ntkit.layers.pair_program): convolutions
(stride 1, strided, "valid", with biases), ReLU-family activations, AvgPool2d, GlobalAvgPool2d
and residual blocks, against the brute-force loops of Arora et al.'s formulas
(tests/conv_bruteforce.py, numpy float64) and, for residual blocks (which the brute force does
not model), against the layer-by-layer torch path (``KernelOptions(native=False)``, itself
checked against neural-tangents in test_layers_residual / test_presets); the native window
sums against conv_ops' torch maps; bits across thread counts."""
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from ntkit.layers import conv_native, conv_ops
from ntkit.layers.pair_program import compile_program

from conv_bruteforce import kernel_matrix

pytestmark = pytest.mark.skipif(not conv_native.available(),
                                reason="native kernel unavailable (no C++ compiler?)")

S2 = math.sqrt(2.0)


def _images(seed, n, c=2, h=8, w=8):
    return np.random.default_rng(seed).standard_normal((n, c, h, w))


def _covered(arch, in_shape):
    prog = compile_program(arch.layers, in_shape)
    return 0 if prog is None else prog.n_layers


def test_myrtle_like_chain_matches_bruteforce():
    """conv+ReLU, 2x2 AvgPool, a strided "same" conv with a bias, LeakyReLU, a 2x2 "valid"
    conv, an AvgPool with stride 1, GAP, a Linear readout: all but the readout in the program."""
    arch = nk.Sequential(
        nk.Conv2d(4, 3, W_std=S2, b_std=None), nk.ReLU(), nk.AvgPool2d(2),
        nk.Conv2d(4, 3, stride=2, W_std=1.3, b_std=0.2), nk.LeakyReLU(0.1),
        nk.Conv2d(4, 2, padding="valid", W_std=1.1, b_std=None), nk.ReLU(),
        nk.Conv2d(4, 3, W_std=S2, b_std=0.1), nk.ReLU(),
        nk.AvgPool2d(2, stride=1), nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.0, b_std=0.3))
    spec = [("conv", 3, 3, (1, 1), "same", S2, None, True), ("relu", 0.0, 1.0),
            ("pool", 2, 2, "valid"),
            ("conv", 3, 3, (2, 2), "same", 1.3, 0.2, True), ("relu", 0.1, 1.0),
            ("conv", 2, 2, (1, 1), "valid", 1.1, None, True), ("relu", 0.0, 1.0),
            ("conv", 3, 3, (1, 1), "same", S2, 0.1, True), ("relu", 0.0, 1.0),
            ("pool", 2, 1, "valid"), ("gap",), ("dense", 1.0, 0.3, True)]
    x1, x2 = _images(0, 3, h=10, w=10), _images(1, 2, h=10, w=10)
    assert _covered(arch, (2, 10, 10)) == len(arch.layers) - 1
    ref_nngp, ref_ntk = kernel_matrix(x1, x2, spec)
    for b in (x2, None):
        k = arch.kernel(torch.from_numpy(x1), None if b is None else torch.from_numpy(b))
        if b is None:
            ref_nngp, ref_ntk = kernel_matrix(x1, x1, spec)
        np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12, atol=0)
        np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12, atol=0)


def test_program_ending_at_an_image_then_flatten_matches_bruteforce():
    """The program stops before Flatten (pixel pairs out, variances from the self pairs), the
    rest runs layer by layer; float32 within 1e-5 of the float64 reference."""
    arch = nk.Sequential(nk.Conv2d(4, 3, W_std=S2, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2),
                         nk.Conv2d(4, 1, W_std=S2, b_std=None), nk.ReLU(), nk.Flatten(),
                         nk.Linear(1, W_std=1.0, b_std=None))
    spec = [("conv", 3, 3, (1, 1), "same", S2, 0.1, True), ("relu", 0.0, 1.0),
            ("pool", 2, 2, "valid"), ("conv", 1, 1, (1, 1), "same", S2, None, True),
            ("relu", 0.0, 1.0), ("flatten",), ("dense", 1.0, None, True)]
    x1, x2 = _images(2, 2), _images(3, 3)
    assert _covered(arch, (2, 8, 8)) == 5
    ref_nngp, ref_ntk = kernel_matrix(x1, x2, spec)
    k = arch.kernel(torch.from_numpy(x1), torch.from_numpy(x2))
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-12, atol=0)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-12, atol=0)
    k32 = arch.kernel(torch.from_numpy(x1).float(), torch.from_numpy(x2).float())
    np.testing.assert_allclose(k32.nngp.double().numpy(), ref_nngp, rtol=1e-5, atol=0)
    np.testing.assert_allclose(k32.ntk.double().numpy(), ref_ntk, rtol=1e-5, atol=0)


def _resnet():
    def conv(c, s=1, b=None):
        return nk.Conv2d(c, 3, stride=s, W_std=1.0, b_std=b)
    return nk.Sequential(
        conv(4, b=0.1),
        nk.Residual(nk.Sequential(nk.ReLU(), conv(4), nk.ReLU(), conv(4))),
        nk.Residual(nk.Sequential(nk.ReLU(), conv(6, 2, 0.2), nk.LeakyReLU(0.2), conv(6)),
                    conv(6, 2)),
        nk.ParallelSum(nk.Sequential(nk.ReLU(), conv(6)), conv(6), None),
        nk.AvgPool2d(2), nk.Flatten(), nk.Linear(1, W_std=1.0, b_std=0.0))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_residual_blocks_match_layer_by_layer_path(dtype, rtol):
    """Identity and strided conv shortcuts, a three-branch sum with the identity: the program
    (native) against the layers applied one by one in torch, NNGP and NTK, x2 given or not."""
    arch = _resnet()
    assert _covered(arch, (2, 8, 8)) == 5
    x1 = torch.from_numpy(_images(4, 3)).to(dtype)
    x2 = torch.from_numpy(_images(5, 2)).to(dtype)
    for b in (x2, None):
        fast = arch.kernel(x1, b)
        ref = arch.kernel(x1.double(), None if b is None else b.double(),
                          options=KernelOptions(native=False))
        for name in ("nngp", "ntk"):
            got, want = getattr(fast, name).double(), getattr(ref, name)
            assert float((got - want).abs().max() / want.abs().max()) < rtol, name


def test_program_same_bits_for_1_2_3_threads():
    arch = _resnet()
    x = torch.from_numpy(_images(6, 3))
    old = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            k = arch.kernel(x)
            outs.append(torch.stack([k.nngp, k.ntk]))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("box,kernel,stride,padding", [
    (False, (3, 3), (2, 2), "same"), (False, (3, 2), (1, 2), "valid"),
    (False, (2, 2), (2, 1), "same"), (True, (2, 2), (2, 2), "valid"),
    (True, (3, 3), (1, 1), "same"), (True, (3, 2), (2, 1), "valid")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_window_sums_match_conv_ops(box, kernel, stride, padding, dtype):
    """conv_native.window_sums against conv_ops.conv_map / pool_map (torch, float64)."""
    gen = torch.Generator().manual_seed(3)
    h, w, pad = 7, 6, 2
    x = torch.rand((h, w, h, w), generator=gen, dtype=torch.float64) - 0.5
    if box:
        ref = conv_ops.pool_map(x, kernel, stride, padding)
    else:
        ref = conv_ops.conv_map(x, "full", kernel, stride, padding).mul_(1.7).add_(0.3)
    ho, wo = ref.shape[0], ref.shape[1]
    src = torch.zeros((h + 2 * pad, w + 2 * pad) * 2, dtype=dtype)
    src[pad:pad + h, pad:pad + w, pad:pad + h, pad:pad + w] = x.to(dtype)
    out = torch.zeros((ho + 2 * pad, wo + 2 * pad) * 2, dtype=dtype)
    low = (conv_ops.pad_amounts(h, kernel[0], stride[0], padding)[1],
           conv_ops.pad_amounts(w, kernel[1], stride[1], padding)[1])
    if box:
        scale, b2 = 1.0 / (kernel[0] * kernel[1]) ** 2, 0.0
    else:
        scale, b2 = 1.7 / (kernel[0] * kernel[1]), 0.3
    conv_native.window_sums(src, out, pad, kernel, stride, low, box, scale, b2)
    inner = out[pad:pad + ho, pad:pad + wo, pad:pad + ho, pad:pad + wo].double()
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert float((inner - ref).abs().max()) < tol
    border = out.clone()
    border[pad:pad + ho, pad:pad + wo, pad:pad + ho, pad:pad + wo] = 0
    assert not bool(border.any())  # only the interior is written


def test_window_sums_refuses_mismatched_shapes():
    src = torch.zeros((6, 6, 6, 6))
    with pytest.raises(ValueError, match="window_sums"):
        conv_native.window_sums(src, torch.zeros((5, 5, 5, 5)), 1, (3, 3), (2, 2), (2, 2),
                                False, 1.0)


@pytest.mark.parametrize("axis", ["channels", "all"])
def test_layernorm_in_program_matches_layer_by_layer_path(axis):
    """LayerNorm (its own map per pair, variances from the self pairs) between convolutions
    and inside a residual branch, float64, against the layers applied one by one in torch."""
    arch = nk.Sequential(
        nk.Conv2d(4, 3, W_std=1.2, b_std=0.1), nk.LayerNorm(axis=axis), nk.ReLU(),
        nk.Residual(nk.Sequential(nk.Conv2d(4, 3, W_std=1.1), nk.LayerNorm(axis=axis, eps=0.3))),
        nk.AvgPool2d(2), nk.Flatten(), nk.Linear(1, W_std=1.0, b_std=0.1))
    assert _covered(arch, (2, 8, 8)) == 5
    x1 = torch.from_numpy(_images(8, 3))
    fast = arch.kernel(x1)
    ref = arch.kernel(x1, options=KernelOptions(native=False))
    for name in ("nngp", "ntk"):
        got, want = getattr(fast, name), getattr(ref, name)
        assert float((got - want).abs().max() / want.abs().max()) < 1e-12, name
