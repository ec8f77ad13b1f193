"""Same-position tiles wider than ``kernel_tile.SAME_POSITION_BLOCK`` are computed as blocks
(the upper triangle of a diagonal tile, mirrored; blocks brought to one scale). Checked against
a vectorized numpy float64 reference of the same-position CNTK recursion (Arora et al. 2019,
the vanilla readout needs only Σ[p, p]): conv = W²·(3x3 window mean, zero padding) + b²;
ReLU: Σ' = √(v v')/(2π)·(sin θ + (π - θ) cos θ), Σ̇ = (π - θ)/(2π); Θ ← conv(Θ ⊙ Σ̇) + Σ."""
import math

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from ntkit.layers import kernel_tile

W1, B1, W2, B2, WO, BO = 1.4, 0.2, 1.3, 0.1, 1.1, 0.3


def _arch():
    return nk.Sequential(nk.Conv2d(4, 3, W_std=W1, b_std=B1), nk.ReLU(),
                         nk.Conv2d(4, 3, W_std=W2, b_std=B2), nk.ReLU(), nk.Flatten(),
                         nk.Linear(1, W_std=WO, b_std=BO))


def _window_mean(k):
    """(..., H, W) -> mean over each 3x3 window, zero padded."""
    h, w = k.shape[-2:]
    p = np.zeros(k.shape[:-2] + (h + 2, w + 2))
    p[..., 1:-1, 1:-1] = k
    return sum(p[..., a:a + h, b:b + w] for a in range(3) for b in range(3)) / 9.0


def _relu(c, v1, v2, same):
    s = np.sqrt(v1 * v2)
    rho = np.clip(c / s, -1.0, 1.0)
    if same is not None:
        rho[same] = 1.0   # an image with itself: θ = 0 exactly
    t = np.arccos(rho)
    return s / (2 * math.pi) * (np.sin(t) + (math.pi - t) * np.cos(t)), (math.pi - t) / (2 * math.pi)


def _reference(x1, x2, same):
    """(nngp, ntk) (n1, n2) in float64 numpy."""
    cross = np.einsum("achw,bchw->abhw", x1, x2) / x1.shape[1]
    v1 = (x1 * x1).mean(1)[:, None]
    v2 = (x2 * x2).mean(1)[None]
    mask = None
    if same:
        idx = np.arange(len(x1))
        mask = np.zeros(cross.shape, bool)
        mask[idx, idx] = True
    cov = W1 ** 2 * _window_mean(cross) + B1 ** 2
    v1, v2 = W1 ** 2 * _window_mean(v1) + B1 ** 2, W1 ** 2 * _window_mean(v2) + B1 ** 2
    ntk = cov.copy()
    cov, dot = _relu(cov, v1, v2, mask)
    ntk = ntk * dot
    v1, v2 = v1 / 2, v2 / 2
    cov = W2 ** 2 * _window_mean(cov) + B2 ** 2
    ntk = W2 ** 2 * _window_mean(ntk) + cov
    v1, v2 = W2 ** 2 * _window_mean(v1) + B2 ** 2, W2 ** 2 * _window_mean(v2) + B2 ** 2
    cov, dot = _relu(cov, v1, v2, mask)
    ntk = ntk * dot
    cov, ntk = cov.mean((-2, -1)), ntk.mean((-2, -1))
    nngp = WO ** 2 * cov + BO ** 2
    return nngp, WO ** 2 * ntk + nngp


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n1,n2", [(70, None), (33, None), (70, 45)])
def test_blocked_tile_matches_reference(n1, n2, dtype, rtol):
    assert max(n1, n2 or 0) > kernel_tile.SAME_POSITION_BLOCK  # the blocked path
    rng = np.random.default_rng(7)
    x1 = rng.standard_normal((n1, 3, 5, 5))
    x2 = None if n2 is None else rng.standard_normal((n2, 3, 5, 5))
    ref_nngp, ref_ntk = _reference(x1, x1 if x2 is None else x2, same=x2 is None)
    k = _arch().kernel(torch.tensor(x1, dtype=dtype),
                       None if x2 is None else torch.tensor(x2, dtype=dtype),
                       options=KernelOptions(tile_size=max(n1, n2 or 0)))  # one engine tile
    np.testing.assert_allclose(k.nngp.double().numpy(), ref_nngp, rtol=rtol, atol=0)
    np.testing.assert_allclose(k.ntk.double().numpy(), ref_ntk, rtol=rtol, atol=0)
    if x2 is None:  # mirrored blocks: exactly symmetric
        assert torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
