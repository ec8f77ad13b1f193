"""CUDA path of the convolutional kernels against the CPU path (float64); skipped without a GPU."""
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
S2 = math.sqrt(2.0)


def _archs():
    gap = nk.Sequential(nk.Conv2d(8, 3, W_std=S2, b_std=None, trainable=False), nk.ReLU(),
                        nk.Conv2d(8, 3, W_std=S2, b_std=None), nk.ReLU(), nk.GlobalAvgPool2d(),
                        nk.Linear(1, b_std=None, trainable=False))
    van = nk.Sequential(nk.Conv2d(8, 3, W_std=S2, b_std=None), nk.ReLU(),
                        nk.Conv2d(8, 3, W_std=S2, b_std=None), nk.ReLU(), nk.Flatten(), nk.Linear(1))
    pool = nk.Sequential(nk.Conv2d(8, 3, stride=2, padding="circular", W_std=1.5, b_std=0.1),
                         nk.ReLU(), nk.AvgPool2d(2, stride=1, padding="same"), nk.Conv2d(8, 2),
                         nk.Erf(), nk.GlobalAvgPool2d(), nk.Linear(4), nk.ReLU(), nk.Linear(1))
    return {"gap": gap, "vanilla": van, "pool": pool}


@pytest.mark.parametrize("name", ["gap", "vanilla", "pool"])
@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_cuda_matches_cpu(name, compile_mode):
    arch = _archs()[name]
    x = torch.tensor(np.random.default_rng(0).standard_normal((5, 3, 8, 8)))
    ref = arch.kernel(x[:3], x[3:], options=KernelOptions(compile="off"))
    ref_s = arch.kernel(x, options=KernelOptions(compile="off"))
    opts = KernelOptions(compile=compile_mode)
    got = arch.kernel(x[:3].cuda(), x[3:].cuda(), options=opts)
    got_s = arch.kernel(x.cuda(), options=opts)
    assert got.ntk.device.type == "cuda"
    off = ~np.eye(5, dtype=bool)
    for a, b in ((got, ref), (got_s, ref_s)):
        np.testing.assert_allclose(a.nngp.cpu().numpy(), b.nngp.numpy(), rtol=1e-10)
        sel = off if a is got_s else np.ones(b.ntk.shape, dtype=bool)
        np.testing.assert_allclose(a.ntk.cpu().numpy()[sel], b.ntk.numpy()[sel], rtol=1e-10)
    # an input against itself: the layer-by-layer ReLU (no ±1 snapping of correlations) sees
    # ρ = 1 - O(ulp) with device-dependent rounding, i.e. θ ~ 1e-8
    np.testing.assert_allclose(np.diag(got_s.ntk.cpu().numpy()), np.diag(ref_s.ntk.numpy()),
                               rtol=1e-7)
    x32 = x.float().cuda()
    got32 = arch.kernel(x32)
    np.testing.assert_allclose(got32.ntk.cpu().double().numpy(), ref_s.ntk.numpy(), rtol=1e-3)
