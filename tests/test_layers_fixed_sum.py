"""ntkit.layers.fixed_sum: sums in a fixed pairwise order, against math.fsum (exactly rounded)
and bit for bit across thread counts."""
import math

import pytest
import torch

from ntkit.layers.fixed_sum import fixed_order_mean, fixed_order_sum


@pytest.mark.parametrize("shape", [(3, 1), (2, 7), (4, 5, 13), (1, 4, 256, 3)])
def test_fixed_order_sum_against_fsum(shape):
    """Sums over the trailing axes (odd lengths included) within pairwise-summation error
    of the exactly rounded sum of the same float64 terms."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for ndim in range(1, len(shape)):
        got = fixed_order_sum(x, ndim)
        lead = x.shape[:x.dim() - ndim]
        assert got.shape == lead
        flat = x.reshape(int(math.prod(lead)), -1)
        ref = torch.tensor([math.fsum(row.tolist()) for row in flat], dtype=torch.float64)
        bound = 1e-15 * flat.abs().sum(1) * math.log2(flat.shape[1] + 1)
        assert bool(((got.reshape(-1) - ref).abs() <= bound).all())
        mean = fixed_order_mean(x, ndim)
        torch.testing.assert_close(mean, got / flat.shape[1], rtol=0, atol=0)


def test_fixed_order_sum_same_bits_for_1_2_3_threads():
    """A (2, 600000) float32 sum: torch.sum splits a long reduction per thread; the fixed
    order gives the same bits for 1, 2 and 3 threads."""
    x = torch.randn((2, 600_000), generator=torch.Generator().manual_seed(2))
    old = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append(fixed_order_sum(x, 1))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_bad_ndim():
    with pytest.raises(ValueError, match="ndim"):
        fixed_order_sum(torch.zeros(3, 4), 3)
