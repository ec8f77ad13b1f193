"""LayerNorm and Dropout (ntkit.layers.normalization, ntkit.layers.dropout).

References: closed forms computed here in numpy; neural-tangents' stax.LayerNorm / stax.Dropout
(float64, 1e-10, skipped without the peer venv); Monte Carlo of the finite networks of
``arch.init`` (5 standard errors plus a stated O(1/width) bias allowance).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from tests.peer.runner import peer_available
from tests.test_layers_residual import _dense, check_against_peer

pytestmark = pytest.mark.usefixtures("one_thread")
S2 = math.sqrt(2.0)


def _x(n=4, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


# -- closed forms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_layernorm_flat_closed_form(eps):
    x = _x()
    s = 1.7 ** 2 * x @ x.T / x.shape[1] + 0.4 ** 2     # after Linear(W=1.7, b=0.4)
    v = np.diag(s)
    want = s / np.sqrt(np.outer(eps + v, eps + v))
    arch = nk.Sequential(nk.Linear(3, W_std=1.7, b_std=0.4), nk.LayerNorm(eps=eps))
    k = arch.kernel(x)
    np.testing.assert_allclose(k.nngp.numpy(), want, rtol=1e-13)
    np.testing.assert_allclose(k.ntk.numpy(), want, rtol=1e-13)  # Θ = Σ before, same scaling
    k2 = arch.kernel(x[:2], x[2:])
    np.testing.assert_allclose(k2.nngp.numpy(), want[:2, 2:], rtol=1e-13)


def test_layernorm_images_closed_form_per_position_and_all():
    x = np.random.default_rng(1).normal(size=(3, 2, 3, 4))
    c = np.einsum("achw,bcxy->abhwxy", x, x) / 2 + 0.25   # after Conv2d(1x1, W=1, b=0.5)
    v = np.einsum("aahwhw->ahw", c)
    per_pos = c / np.sqrt(v[:, None, :, :, None, None] * v[None, :, None, None, :, :])
    vm = v.mean(axis=(1, 2))
    over_all = c / np.sqrt(vm[:, None, None, None, None, None] * vm[None, :, None, None, None, None])
    for axis, want in (("channels", per_pos), ("all", over_all)):
        arch = nk.Sequential(nk.Conv2d(4, 1, W_std=1.0, b_std=0.5), nk.LayerNorm(axis=axis, eps=0.0),
                             nk.GlobalAvgPool2d())
        k = arch.kernel(x)
        np.testing.assert_allclose(k.nngp.numpy(), want.mean(axis=(2, 3, 4, 5)), rtol=1e-12)
        # same-position regime (Flatten): the trace over positions
        arch_v = nk.Sequential(nk.Conv2d(4, 1, W_std=1.0, b_std=0.5), nk.LayerNorm(axis=axis, eps=0.0),
                               nk.Flatten())
        trace = np.einsum("abhwhw->abhw", want).mean(axis=(2, 3))
        np.testing.assert_allclose(arch_v.kernel(x).nngp.numpy(), trace, rtol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_layernorm_distance_of_the_precise_path(eps):
    """The squared distance carried by the paired layout must stay v1' + v2' - 2Σ' (computed
    here directly, on pairs far enough apart that the subtraction loses nothing)."""
    from ntkit.layers.state import paired_input_state
    rng = np.random.default_rng(2)
    a, b = torch.tensor(rng.normal(size=(5, 4))), torch.tensor(2.0 * rng.normal(size=(5, 4)))
    state = nk.Linear(3, W_std=1.3, b_std=0.2).apply(paired_input_state(a, b))
    out = nk.LayerNorm(eps=eps).apply(state)
    np.testing.assert_allclose(out.dist.numpy(), (out.var1 + out.var2 - 2 * out.cov).numpy(),
                               rtol=1e-12)
    # nearly equal inputs: against v1' + v2' - 2Σ' evaluated in 50-digit mpmath
    import mpmath
    mpmath.mp.dps = 50
    a2 = a * (1 + 1e-7)
    near = nk.Linear(3, W_std=1.3, b_std=0.2).apply(paired_input_state(a, a2))
    d = nk.LayerNorm(eps=eps).apply(near).dist.numpy()
    w2, b2, e = mpmath.mpf(1.3) ** 2, mpmath.mpf(0.2) ** 2, mpmath.mpf(eps)
    for k in range(len(a)):
        p, q = [mpmath.mpf(float(t)) for t in a[k]], [mpmath.mpf(float(t)) for t in a2[k]]
        v1 = w2 * sum(t * t for t in p) / 4 + b2
        v2 = w2 * sum(t * t for t in q) / 4 + b2
        c = w2 * sum(s * t for s, t in zip(p, q)) / 4 + b2
        want = v1 / (e + v1) + v2 / (e + v2) - 2 * c / mpmath.sqrt((e + v1) * (e + v2))
        # the state carries v1, v2 rounded separately, so (a - b)² has ~1e-9 relative error, and
        # d - (a - b)² cancels a factor b_std²/v (~25 here): asserted 3e-7 (measured 3e-8),
        # where the naive v1' + v2' - 2Σ' would have no correct digit at d' ~ 1e-16
        assert abs(d[k] - float(want)) <= 3e-7 * float(want), (k, d[k], float(want))


def test_layernorm_bad_input():
    with pytest.raises(ValueError, match="axis"):
        nk.LayerNorm(axis=2)
    with pytest.raises(ValueError, match="eps"):
        nk.LayerNorm(eps=-1.0)
    x = _x()
    x[0] = 0.0
    with pytest.raises(ValueError, match="zero variance"):
        nk.Sequential(nk.Linear(3, b_std=None), nk.LayerNorm(eps=0.0)).kernel(x)


def test_dropout_closed_forms_and_limits():
    x = _x()
    s = 1.3 ** 2 * x @ x.T / x.shape[1] + 0.2 ** 2
    p = 0.25
    base = [nk.Linear(3, W_std=1.3, b_std=0.2)]
    # test mode: identity
    k = nk.Sequential(*base, nk.Dropout(p, mode="test"), nk.Linear(1, W_std=1.0, b_std=None)).kernel(x)
    np.testing.assert_allclose(k.nngp.numpy(), s, rtol=1e-13)
    # train mode: an input with itself gets 1 / (1 - p), different inputs unchanged
    arch = nk.Sequential(*base, nk.Dropout(p), nk.Linear(1, W_std=1.0, b_std=None))
    want = s + np.diag(np.diag(s)) * (1 / (1 - p) - 1)
    k = arch.kernel(x)
    np.testing.assert_allclose(k.nngp.numpy(), want, rtol=1e-13)
    # Θ: the first Linear's Σ, then the readout adds the dropped-out Σ: 2 * want
    np.testing.assert_allclose(k.ntk.numpy(), 2 * want, rtol=1e-13)
    # x2 given: every pair counts as two different inputs
    np.testing.assert_allclose(arch.kernel(x, x).nngp.numpy(), s, rtol=1e-13)
    # after a ReLU: the diagonal (an input with itself, also on the precise path) scaled by
    # 1 / (1 - p), the rest as in test mode
    relu = [*base, nk.ReLU()]
    k_train = nk.Sequential(*relu, nk.Dropout(p), nk.Linear(1, b_std=None)).kernel(x)
    k_test = nk.Sequential(*relu, nk.Dropout(p, mode="test"), nk.Linear(1, b_std=None)).kernel(x)
    ratio = (k_train.nngp / k_test.nngp).numpy()
    np.testing.assert_allclose(np.diag(ratio), 1 / (1 - p), rtol=1e-13)
    np.testing.assert_allclose(ratio[~np.eye(len(x), dtype=bool)], 1.0, rtol=1e-13)
    # a near duplicate of another input cannot be told from an input with itself there
    near = np.concatenate([x, x[:1] * (1 + 1e-9)])
    with pytest.raises(NotImplementedError, match="precise path"):
        nk.Sequential(*relu, nk.Dropout(0.5), nk.Linear(1)).kernel(near)
    with pytest.raises(ValueError, match="drop probability"):
        nk.Dropout(1.0)
    assert isinstance(nk.Dropout(0.1, mode="test").build((3,), None), torch.nn.Identity)


# -- neural-tangents -------------------------------------------------------------------------------
def _conv(n, w, b, p="ntk"):
    return ["Conv", {"args": [n, [3, 3]], "kwargs": {"padding": "SAME", "W_std": w, "b_std": b,
                                                     "parameterization": p}}]


@pytest.mark.peer
@pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")
def test_layernorm_and_dropout_flat_match_neural_tangents_float64():
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((3, 5)), rng.standard_normal((2, 5))
    ours, specs = [], []
    for p in ("ntk", "standard"):
        ours.append(nk.Sequential(nk.Linear(8, W_std=1.4, b_std=0.3, parameterization=p), nk.LayerNorm(),
                                  nk.ReLU(), nk.Linear(8, W_std=S2, b_std=0.1, parameterization=p),
                                  nk.LayerNorm(eps=0.5), nk.Erf(), nk.Linear(1, W_std=1.0, b_std=0.2, parameterization=p)))
        specs.append([_dense(8, 1.4, 0.3, p), ["LayerNorm", {}], ["Relu", {}], _dense(8, S2, 0.1, p),
                      ["LayerNorm", {"kwargs": {"eps": 0.5}}], ["Erf", {}], _dense(1, 1.0, 0.2, p)])
    # Dropout(train): only kernel(x) has same-input entries; neural-tangents' rate = 1 - p
    dropout = (nk.Sequential(nk.Linear(8, W_std=1.2, b_std=0.1), nk.Erf(), nk.Dropout(0.3),
                             nk.Linear(1, W_std=1.5, b_std=0.2)),
               [_dense(8, 1.2, 0.1), ["Erf", {}], ["Dropout", {"args": [0.7], "kwargs": {"mode": "train"}}],
                _dense(1, 1.5, 0.2)])
    check_against_peer(ours, specs, x1, x2, lambda a: a, self_only=[dropout])


@pytest.mark.peer
@pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")
def test_layernorm_and_dropout_images_match_neural_tangents_float64():
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((3, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    to_nt = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    ours, specs = [], []
    for p in ("ntk", "standard"):
        ours.append(nk.Sequential(nk.Conv2d(6, 3, W_std=1.3, b_std=0.2, parameterization=p), nk.LayerNorm(),
                                  nk.ReLU(), nk.Conv2d(6, 3, W_std=S2, b_std=None, parameterization=p),
                                  nk.LayerNorm(axis="all", eps=0.1), nk.Erf(), nk.GlobalAvgPool2d(),
                                  nk.Linear(1, W_std=1.0, b_std=0.1, parameterization=p)))
        specs.append([_conv(6, 1.3, 0.2, p), ["LayerNorm", {}], ["Relu", {}], _conv(6, S2, None, p),
                      ["LayerNorm", {"kwargs": {"axis": [1, 2, 3], "eps": 0.1}}], ["Erf", {}],
                      ["GlobalAvgPool", {}], _dense(1, 1.0, 0.1, p)])
    # Dropout(train) in the pixel-pair regime: same input and same position get 1 / (1 - p)
    dropout = (nk.Sequential(nk.Conv2d(6, 3, W_std=1.3, b_std=0.2), nk.Erf(), nk.Dropout(0.4),
                             nk.Conv2d(6, 3, W_std=1.1, b_std=None), nk.GlobalAvgPool2d(),
                             nk.Linear(1, W_std=1.0, b_std=0.1)),
               [_conv(6, 1.3, 0.2), ["Erf", {}], ["Dropout", {"args": [0.6], "kwargs": {"mode": "train"}}],
                _conv(6, 1.1, None), ["GlobalAvgPool", {}], _dense(1, 1.0, 0.1)])
    check_against_peer(ours, specs, x1, x2, to_nt, self_only=[dropout])


# -- finite networks -------------------------------------------------------------------------------
def _mc(arch, x, n_init, seed0=0):
    vals = []
    with torch.no_grad():
        for seed in range(seed0, seed0 + n_init):
            torch.manual_seed(1000 + seed)  # dropout masks
            f = arch.init(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)(x).flatten(1)
            vals.append((f @ f.T / f.shape[1]).numpy())
    vals = np.array(vals)
    return vals.mean(0), vals.std(0, ddof=1) / math.sqrt(n_init)


@pytest.mark.parametrize("case", ["flat", "images", "dropout"])
def test_monte_carlo_of_finite_networks(case):
    """NNGP of nets with 2048 readout units, 24 initializations: within 5 SE plus 3/n of the
    largest entry (the O(1/n) finite-width bias of the normalization and ReLU layers)."""
    n = 256
    if case == "images":
        x = torch.randn(3, 2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        body = [nk.Conv2d(n, 3, W_std=1.3, b_std=0.2), nk.LayerNorm(), nk.ReLU(),
                nk.Conv2d(n, 3, W_std=S2, b_std=None), nk.LayerNorm(axis="all"), nk.ReLU(),
                nk.GlobalAvgPool2d()]
    elif case == "flat":
        x = torch.tensor(_x(d=6))
        body = [nk.Linear(n, W_std=1.4, b_std=0.3), nk.LayerNorm(), nk.ReLU(),
                nk.Linear(n, W_std=S2, b_std=0.1), nk.LayerNorm(), nk.ReLU()]
    else:  # dropout masks redrawn at each forward pass, independent across examples
        x = torch.tensor(_x(d=6))
        body = [nk.Linear(n, W_std=1.4, b_std=0.3), nk.Erf(), nk.Dropout(0.3)]
    arch = nk.Sequential(*body, nk.Linear(2048, W_std=1.0, b_std=None))
    mean, se = _mc(arch, x, 24)
    ref = arch.kernel(x, get="nngp").nngp.numpy()
    bound = 5 * se + 3.0 / n * np.abs(ref).max()
    assert np.all(np.abs(mean - ref) <= bound), (np.abs(mean - ref) / bound).max()
