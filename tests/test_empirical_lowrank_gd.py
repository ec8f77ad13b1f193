"""ntkit.empirical.lowrank_gd against plain dense gradient descent with torch.autograd/SGD."""
import pytest
import torch

import ntkit as nk
from ntkit.empirical import empirical_ntk
from ntkit.empirical.lowrank_gd import LowRankDeltaLinear, gradient_descent, to_lowrank
from ntkit.layers.finite import NTKLinear

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("width", [16, 64, 400])
def test_lowrank_gradient_descent_equals_dense_sgd(width):
    """Same losses, outputs, weights W_0 + A Bᵀ and empirical NTK as torch.optim.SGD on
    L = (1/2N) Σ (f - y)², after 15 steps at learning rate 0.5 (float64, 1e-10). Width 16 folds
    the factors into W_0 at every step, 64 every few steps, 400 never."""
    arch = nk.Sequential(nk.Linear(width, W_std=1.4, b_std=0.2), nk.ReLU(),
                         nk.Linear(width, W_std=1.4, b_std=0.2), nk.Tanh(),
                         nk.Linear(2, W_std=1.4, b_std=0.2))
    dense = arch.init((3,), seed=1, dtype=F64)
    lazy = to_lowrank(dense, steps=15, n_train=6)
    x = torch.randn(6, 3, dtype=F64)
    y = torch.randn(6, 2, dtype=F64)
    opt = torch.optim.SGD(dense.parameters(), lr=0.5)
    ref_losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = 0.5 * ((dense(x) - y) ** 2).sum() / 6
        ref_losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    losses = gradient_descent(lazy, x, y, steps=15, lr=0.5)
    assert len(losses) == 16
    assert max(abs(a - b) for a, b in zip(losses[:15], ref_losses)) < 1e-10
    xt = torch.randn(5, 3, dtype=F64)
    with torch.no_grad():
        assert float((lazy(xt) - dense(xt)).abs().max()) < 1e-10
    for m_lazy, m_dense in zip([m for m in lazy if isinstance(m, LowRankDeltaLinear)],
                               [m for m in dense if isinstance(m, NTKLinear)]):
        assert float((m_lazy.dense_weight() - m_dense.weight).abs().max()) < 1e-10
        assert float((m_lazy.bias - m_dense.bias).abs().max()) < 1e-10
    ref = empirical_ntk(dense, xt, mode="full", implementation="jacobian")
    for impl in ("structured", "jacobian"):
        got = empirical_ntk(lazy, xt, mode="full", implementation=impl)
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-10
