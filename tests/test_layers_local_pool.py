"""Local average pooling (LAP) readout, ntkit.layers.local_pool (Li et al. 2019).

References (each an independent computation path):
* c = 0 and c = 1: the vanilla CNTK readout Flatten (computed in the same-position regime);
* c = the image size, circular: GlobalAvgPool2d (the mean over all pixel pairs);
* any c: AvgPool2d(c, stride=1) followed by Flatten, i.e. the box filter applied to the
  pixel-pair covariance by conv_ops.pool_map and then its diagonal;
* the finite layer against a numpy brute force of the windowed mean.
All in float64 to 1e-12.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk

pytestmark = pytest.mark.usefixtures("one_thread")
S2 = math.sqrt(2.0)


def _x(h=5, w=4, n=3, seed=0):
    return torch.randn(n, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _body(p="ntk"):
    return [nk.Conv2d(4, 3, W_std=S2, b_std=0.1, parameterization=p), nk.ReLU(),
            nk.Conv2d(4, 3, W_std=1.2, b_std=None, parameterization=p), nk.Erf()]


def _same(a, b, rtol=1e-12):
    torch.testing.assert_close(a.nngp, b.nngp, rtol=rtol, atol=1e-14)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("c", [0, 1])
@pytest.mark.parametrize("p", ["ntk", "standard"])
def test_lap_c0_is_the_vanilla_cntk(c, p):
    x1, x2 = _x(), _x(n=2, seed=1)
    head = nk.Linear(1, W_std=1.1, b_std=0.2, parameterization=p)
    lap = nk.Sequential(*_body(p), nk.LocalAvgPool2d(c), head)
    vanilla = nk.Sequential(*_body(p), nk.Flatten(), head)
    _same(lap.kernel(x1, x2), vanilla.kernel(x1, x2))
    ks, kv = lap.kernel(x1), vanilla.kernel(x1)
    if p == "ntk":
        _same(ks, kv)
    else:
        # the layer-by-layer ReLU map of the pixel-pair regime (the standard parameterization is
        # not fused) takes an input's same-pixel correlation from two separately rounded
        # tensors: its arccos near 1 costs ~1e-11 on the NTK diagonal (not the LAP's doing)
        off = ~torch.eye(len(x1), dtype=torch.bool)
        torch.testing.assert_close(ks.nngp, kv.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ks.ntk[off], kv.ntk[off], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ks.ntk.diag(), kv.ntk.diag(), rtol=1e-9, atol=0)


def test_lap_at_image_size_is_gap():
    x1, x2 = _x(), _x(n=2, seed=1)
    head = nk.Linear(1, W_std=1.1, b_std=0.2)  # NTK parameterization: fan-in free
    lap = nk.Sequential(*_body(), nk.LocalAvgPool2d((5, 4)), head)
    gap = nk.Sequential(*_body(), nk.GlobalAvgPool2d(), head)
    _same(lap.kernel(x1, x2), gap.kernel(x1, x2))
    _same(lap.kernel(x1), gap.kernel(x1))
    square = _x(h=4, w=4)
    _same(nk.Sequential(*_body(), nk.LocalAvgPool2d(4), head).kernel(square),
          nk.Sequential(*_body(), nk.GlobalAvgPool2d(), head).kernel(square))


@pytest.mark.parametrize("c,padding", [(2, "circular"), (3, "circular"), ((2, 3), "same"), (3, "same")])
def test_lap_equals_stride1_avgpool_then_flatten(c, padding):
    x1, x2 = _x(), _x(n=2, seed=1)
    head = nk.Linear(1, W_std=0.9, b_std=0.1, parameterization="standard")
    lap = nk.Sequential(*_body("standard"), nk.LocalAvgPool2d(c, padding=padding), head)
    ref = nk.Sequential(*_body("standard"), nk.AvgPool2d(c, stride=1, padding=padding),
                        nk.Flatten(), head)
    _same(lap.kernel(x1, x2), ref.kernel(x1, x2))
    _same(lap.kernel(x1), ref.kernel(x1))


@pytest.mark.parametrize("padding", ["circular", "same"])
def test_finite_lap_layer_brute_force(padding):
    x = _x(h=5, w=6, n=2).numpy()
    c = 3
    lo = (c - 1) // 2
    want = np.zeros_like(x)
    for h in range(5):
        for w in range(6):
            for a in range(c):
                for b in range(c):
                    i, j = h - lo + a, w - lo + b
                    if padding == "circular":
                        want[:, :, h, w] += x[:, :, i % 5, j % 6]
                    elif 0 <= i < 5 and 0 <= j < 6:
                        want[:, :, h, w] += x[:, :, i, j]
    want /= c * c
    net = nk.Sequential(nk.LocalAvgPool2d(c, padding=padding)).init((2, 5, 6), dtype=torch.float64)
    np.testing.assert_allclose(net(torch.tensor(x)).numpy(), want.reshape(2, -1), rtol=1e-13)


def test_lap_bad_input():
    with pytest.raises(ValueError, match="larger than the feature map"):
        nk.Sequential(nk.Conv2d(2, 3), nk.LocalAvgPool2d(6), nk.Linear(1)).kernel(_x())
    with pytest.raises(ValueError, match="padding"):
        nk.LocalAvgPool2d(2, padding="valid")
    with pytest.raises(ValueError, match="non-negative"):
        nk.LocalAvgPool2d(-1)
    with pytest.raises(ValueError, match="images"):
        nk.Sequential(nk.Linear(3), nk.LocalAvgPool2d(2)).kernel(np.ones((2, 3)))


def _rolled(x, c):
    """x rolled circularly by every shift (a, b), 0 <= a < c_h, 0 <= b < c_w: (c_h c_w, n, ...)."""
    ch, cw = (c, c) if isinstance(c, int) else c
    return torch.stack([torch.roll(x, (a, b), dims=(2, 3)) for a in range(ch) for b in range(cw)])


@pytest.mark.parametrize("c", [2, 3, (2, 3), 4])
@pytest.mark.parametrize("p", ["ntk", "standard"])
def test_lap_is_the_vanilla_kernel_averaged_over_shift_pairs(c, p):
    """Li et al. 2019, Sec. 4 (LAP as local translation augmentation, circular padding): with a
    circularly padded body, the LAP kernel is the vanilla (Flatten) kernel averaged over the c⁴
    pairs of shifts (g, g'), each in a c x c window, of its two inputs:
    K_LAP(x, x') = c⁻⁴ Σ_{g, g'} K_vanilla(g x, g' x'). Brute force: every shifted copy through
    the vanilla network, in the same-position regime."""
    body = [nk.Conv2d(4, 3, padding="circular", W_std=S2, b_std=0.1, parameterization=p),
            nk.ReLU(), nk.Conv2d(4, 3, padding="circular", W_std=1.2, b_std=None,
                                 parameterization=p), nk.Erf()]
    head = nk.Linear(1, W_std=1.1, b_std=0.2, parameterization=p)
    x1, x2 = _x(h=6, w=5), _x(h=6, w=5, n=2, seed=1)
    lap = nk.Sequential(*body, nk.LocalAvgPool2d(c), head).kernel(x1, x2)
    vanilla = nk.Sequential(*body, nk.Flatten(), head)
    r1, r2 = _rolled(x1, c), _rolled(x2, c)
    s, n1, n2 = r1.shape[0], len(x1), len(x2)
    big = vanilla.kernel(r1.reshape(s * n1, 2, 6, 5), r2.reshape(s * n2, 2, 6, 5))
    for name in ("nngp", "ntk"):
        want = getattr(big, name).reshape(s, n1, s, n2).mean(dim=(0, 2))
        torch.testing.assert_close(getattr(lap, name), want, rtol=1e-12, atol=1e-14)
