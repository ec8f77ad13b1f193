"""Residual blocks and sums of parallel branches (ntkit.layers.residual).

References:
* closed forms: a sum of branches whose kernels are known in closed form (Linear maps Σ to
  W_std² Σ + b_std², the identity keeps Σ);
* neural-tangents (FanOut >> parallel >> FanInSum), float64, 1e-10 relative, flat and image
  inputs, both parameterizations (skipped without the peer venv);
* Monte Carlo of the finite network ``arch.init`` (a torch module computing
  shortcut(x) + branch(x)): the NNGP from many independent readout units of wide nets,
  asserted within 5 standard errors plus the O(1/width) finite-width bias bound stated below;
  the empirical NTK of wide nets within a stated relative tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from tests.peer.runner import nt_kernels, peer_available

pytestmark = pytest.mark.usefixtures("one_thread")
S2 = math.sqrt(2.0)


def _flat_inputs():
    x = np.random.default_rng(0).normal(size=(4, 6))
    x[1] = x[0] * (1 + 1e-3)  # nearly equal: exercises the precise pairwise path
    return x


# -- closed forms ----------------------------------------------------------------------------------
def test_residual_of_linear_branch_adds_kernels_closed_form():
    x = torch.tensor(_flat_inputs())
    d = x.shape[1]
    sigma0 = x @ x.T / d
    # x + Linear(x): Σ' = Σ + (1.5² Σ + 0.3²); NTK: the Linear's Θ = Σ' of the branch
    arch = nk.Sequential(nk.Residual(nk.Linear(6, W_std=1.5, b_std=0.3)))
    k = arch.kernel(x)
    branch = 1.5 ** 2 * sigma0 + 0.3 ** 2
    torch.testing.assert_close(k.nngp, sigma0 + branch, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(k.ntk, branch, rtol=1e-13, atol=1e-13)
    # three Linear branches of W_std = 1: Σ' = 3Σ, Θ' = 3Σ
    arch3 = nk.Sequential(nk.ParallelSum(*[nk.Linear(6, W_std=1.0, b_std=None) for _ in range(3)]))
    k3 = arch3.kernel(x, x[:2])
    torch.testing.assert_close(k3.nngp, 3 * sigma0[:, :2], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(k3.ntk, 3 * sigma0[:, :2], rtol=1e-13, atol=1e-13)


def test_residual_standard_parameterization_width_closed_form():
    # Linear(W=1, std) -> Residual(Linear(5, std)) -> Linear(1, std): the readout's NTK term is
    # n_in Σ with n_in the common width 5 of the sum (not the input's 6).
    x = torch.tensor(_flat_inputs())
    sigma0 = x @ x.T / 6
    std = dict(parameterization="standard", b_std=None)
    arch = nk.Sequential(nk.Linear(5, W_std=1.0, **std), nk.Residual(nk.Linear(5, W_std=1.0, **std)),
                         nk.Linear(1, W_std=1.0, **std))
    k = arch.kernel(x)
    s1 = sigma0                      # after the first Linear
    t1 = 6 * sigma0                  # its NTK: n_in Σ⁰
    s2 = s1 + s1                     # the block
    t2 = t1 + (5 * s1 + t1)          # identity + Linear(5 inputs)
    torch.testing.assert_close(k.nngp, s2, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(k.ntk, 5 * s2 + t2, rtol=1e-13, atol=1e-13)


def test_correlated_branches_are_refused():
    with pytest.raises(ValueError, match="correlated"):
        nk.Residual(nk.ReLU())
    with pytest.raises(ValueError, match="correlated"):
        nk.ParallelSum(nk.Identity(), None)
    with pytest.raises(ValueError, match="correlated"):
        nk.ParallelSum(nk.Sequential(nk.Linear(3), nk.ReLU()), nk.Sequential(nk.Linear(3), nk.Erf()))
    # one correlated branch is fine when the other ends with its own affine layer
    nk.ParallelSum(nk.Sequential(nk.Linear(3), nk.ReLU()), nk.Sequential(nk.ReLU(), nk.Linear(3)))


def test_activation_after_pooling_inside_a_branch():
    """Pooling computes its own variances, so a ReLU may follow it inside a branch. Reference:
    the kernels of a block are the sums of its branches' kernels, each computed on its own
    (the shortcut alone runs on same-position covariances, the branch on pixel pairs)."""
    def branch():
        return nk.Sequential(nk.Conv2d(4, 3, W_std=1.3, b_std=0.1), nk.AvgPool2d(2), nk.ReLU(),
                             nk.Conv2d(4, 3, W_std=1.2))

    def shortcut():
        return nk.Conv2d(4, 3, stride=2, W_std=1.1, b_std=0.2)

    x = torch.tensor(np.random.default_rng(4).standard_normal((3, 2, 6, 6)))
    block = nk.Sequential(nk.Residual(branch(), shortcut()), nk.Flatten())
    parts = [nk.Sequential(branch(), nk.Flatten()), nk.Sequential(shortcut(), nk.Flatten())]
    for x2 in (None, x[:2] * 0.7):
        got = block.kernel(x, x2)
        want = [p.kernel(x, x2) for p in parts]
        torch.testing.assert_close(got.nngp, want[0].nngp + want[1].nngp, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got.ntk, want[0].ntk + want[1].ntk, rtol=1e-12, atol=1e-13)


def test_mismatched_branch_shapes_are_refused():
    arch = nk.Sequential(nk.Linear(5), nk.Residual(nk.Linear(7)), nk.Linear(1))
    with pytest.raises(ValueError, match="different output shapes"):
        arch.kernel(np.ones((2, 3)))
    with pytest.raises(ValueError, match="different output shapes"):
        arch.init((3,))
    conv = nk.Sequential(nk.Conv2d(4, 3), nk.Residual(nk.Conv2d(4, 3, stride=2)), nk.Flatten(),
                         nk.Linear(1))
    with pytest.raises(ValueError, match="different output shapes"):
        conv.kernel(np.ones((2, 1, 4, 4)))


def test_residual_does_not_disturb_the_input_state():
    # the identity branch reads the input state; the other branch works on a copy
    x = torch.tensor(_flat_inputs())
    a = nk.Sequential(nk.Linear(4, W_std=1.3, b_std=0.1), nk.ReLU(), nk.Linear(4, W_std=1.1))
    block = nk.Sequential(nk.Linear(4, W_std=1.3, b_std=0.1), nk.ReLU(),
                          nk.Residual(nk.Linear(4, W_std=1.1)))
    inner = a[:2].kernel(x)
    ka, kb = a.kernel(x), block.kernel(x)
    torch.testing.assert_close(kb.nngp, inner.nngp + ka.nngp, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(kb.ntk, inner.ntk + ka.ntk, rtol=1e-13, atol=1e-13)


# -- neural-tangents -------------------------------------------------------------------------------
def _dense(n, w, b, p="ntk"):
    return ["Dense", {"args": [n], "kwargs": {"W_std": w, "b_std": b, "parameterization": p}}]


def _conv(n, w, b, stride=1, p="ntk"):
    return ["Conv", {"args": [n, [3, 3]], "kwargs": {"strides": [stride, stride], "padding": "SAME",
                                                     "W_std": w, "b_std": b, "parameterization": p}}]


def _flat_cases(p):
    ours = [
        nk.Sequential(nk.Linear(8, W_std=1.3, b_std=0.2, parameterization=p),
                      nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(8, W_std=1.2, b_std=0.1, parameterization=p),
                                                nk.ReLU(), nk.Linear(8, W_std=0.9, b_std=0.3, parameterization=p))),
                      nk.ReLU(), nk.Linear(1, W_std=1.1, b_std=0.05, parameterization=p)),
        nk.Sequential(nk.Linear(8, W_std=1.1, b_std=0.1, parameterization=p),
                      nk.ParallelSum(nk.Linear(8, W_std=0.7, b_std=None, parameterization=p),
                                     nk.Sequential(nk.Erf(), nk.Linear(8, W_std=1.4, b_std=0.2, parameterization=p)),
                                     None),
                      nk.LayerNorm(), nk.GELU(), nk.Linear(1, W_std=1.0, b_std=0.1, parameterization=p)),
    ]
    theirs = [
        [_dense(8, 1.3, 0.2, p),
         ["Sum", {"branches": [[["Relu", {}], _dense(8, 1.2, 0.1, p), ["Relu", {}], _dense(8, 0.9, 0.3, p)], []]}],
         ["Relu", {}], _dense(1, 1.1, 0.05, p)],
        [_dense(8, 1.1, 0.1, p),
         ["Sum", {"branches": [[_dense(8, 0.7, None, p)], [["Erf", {}], _dense(8, 1.4, 0.2, p)], []]}],
         ["LayerNorm", {}], ["Gelu", {}], _dense(1, 1.0, 0.1, p)],
    ]
    return ours, theirs


def _image_cases(p):
    def block(c, stride, conv_shortcut):
        branch = nk.Sequential(nk.ReLU(), nk.Conv2d(c, 3, stride=stride, W_std=S2, b_std=0.1, parameterization=p),
                               nk.ReLU(), nk.Conv2d(c, 3, W_std=1.1, b_std=None, parameterization=p))
        short = nk.Conv2d(c, 3, stride=stride, W_std=1.2, b_std=None, parameterization=p) if conv_shortcut else None
        return nk.Residual(branch, short)

    def nt_block(c, stride, conv_shortcut):
        branch = [["Relu", {}], _conv(c, S2, 0.1, stride, p), ["Relu", {}], _conv(c, 1.1, None, 1, p)]
        short = [_conv(c, 1.2, None, stride, p)] if conv_shortcut else []
        return ["Sum", {"branches": [branch, short]}]

    ours = [  # pixel pairs (pooling readout): a WideResNet-like net with a strided group
        nk.Sequential(nk.Conv2d(6, 3, W_std=1.0, b_std=None, parameterization=p), block(6, 1, False),
                      block(8, 2, True), nk.AvgPool2d(3), nk.Flatten(),
                      nk.Linear(1, W_std=1.0, b_std=0.0, parameterization=p)),
        # same-position regime (Flatten readout), LayerNorm over channels after a block
        nk.Sequential(nk.Conv2d(6, 3, W_std=1.3, b_std=0.2, parameterization=p), block(6, 1, False),
                      nk.LayerNorm(), nk.ReLU(), nk.Flatten(), nk.Linear(1, W_std=1.0, b_std=0.1, parameterization=p)),
        # a branch ending with pooling: the block's variances come from the once-per-input pass
        nk.Sequential(nk.Conv2d(6, 3, W_std=1.3, b_std=0.2, parameterization=p),
                      nk.Residual(nk.Sequential(nk.ReLU(), nk.Conv2d(6, 3, W_std=S2, b_std=None, parameterization=p),
                                                nk.AvgPool2d(2)),
                                  nk.Conv2d(6, 3, stride=2, W_std=1.2, b_std=None, parameterization=p)),
                      nk.ReLU(), nk.GlobalAvgPool2d(), nk.Linear(1, W_std=1.0, b_std=0.1, parameterization=p)),
    ]
    theirs = [
        [_conv(6, 1.0, None, 1, p), nt_block(6, 1, False), nt_block(8, 2, True),
         ["AvgPool", {"args": [[3, 3]], "kwargs": {"strides": [3, 3]}}], ["Flatten", {}], _dense(1, 1.0, 0.0, p)],
        [_conv(6, 1.3, 0.2, 1, p), nt_block(6, 1, False), ["LayerNorm", {}], ["Relu", {}],
         ["Flatten", {}], _dense(1, 1.0, 0.1, p)],
        [_conv(6, 1.3, 0.2, 1, p),
         ["Sum", {"branches": [[["Relu", {}], _conv(6, S2, None, 1, p),
                                ["AvgPool", {"args": [[2, 2]], "kwargs": {"strides": [2, 2]}}]],
                               [_conv(6, 1.2, None, 2, p)]]}],
         ["Relu", {}], ["GlobalAvgPool", {}], _dense(1, 1.0, 0.1, p)],
    ]
    return ours, theirs


@pytest.mark.peer
@pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")
@pytest.mark.parametrize("images", [False, True])
def test_residual_kernels_match_neural_tangents_float64(images):
    rng = np.random.default_rng(1)
    if images:
        x1, x2 = rng.standard_normal((3, 2, 6, 6)), rng.standard_normal((2, 2, 6, 6))
        to_nt = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731  NCHW -> NHWC
        cases = [_image_cases(p) for p in ("ntk", "standard")]
    else:
        x1, x2 = _flat_inputs(), rng.standard_normal((3, 6))
        to_nt = lambda a: a  # noqa: E731
        cases = [_flat_cases(p) for p in ("ntk", "standard")]
    ours = [a for o, _ in cases for a in o]
    specs = [s for _, t in cases for s in t]
    check_against_peer(ours, specs, x1, x2, to_nt)


def check_against_peer(ours, specs, x1, x2, to_nt, self_only=()):
    """One neural-tangents run on x = [x1; x2] (its self-kernels hold the cross block too):
    kernel(x1, x2) and kernel(x1) to 1e-10, except the NTK of an input with itself, where
    neural-tangents' ReLU NTK at correlation 1 is only ~1e-8 accurate (shared/peer/README.md).
    ``self_only``: (arch, spec) pairs compared on kernel(x) alone (same-input semantics)."""
    n1 = len(x1)
    x = np.concatenate([x1, x2])
    refs = nt_kernels(to_nt(x), None, list(specs) + [s for _, s in self_only], script="nt_graph.py")
    for (arch, _), (nngp, ntk) in zip(self_only, refs[len(specs):]):
        k = arch.kernel(x)
        np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-10, atol=1e-13)
    off = ~np.eye(n1, dtype=bool)
    for arch, (nngp, ntk) in zip(ours, refs):
        k = arch.kernel(x1, x2)
        np.testing.assert_allclose(k.nngp.numpy(), nngp[:n1, n1:], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(k.ntk.numpy(), ntk[:n1, n1:], rtol=1e-10, atol=1e-13)
        ks = arch.kernel(x1)
        np.testing.assert_allclose(ks.nngp.numpy(), nngp[:n1, :n1], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(ks.ntk.numpy()[off], ntk[:n1, :n1][off], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(np.diag(ks.ntk.numpy()), np.diag(ntk)[:n1], rtol=1e-7)


# -- finite networks -------------------------------------------------------------------------------
def _mc_nngp(arch, x, n_init):
    """Per-initialization estimates of E[f(x) f(x')], each the mean over the independent readout
    units; returns (mean, standard error)."""
    vals = []
    with torch.no_grad():
        for seed in range(n_init):
            f = arch.init(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)(x).flatten(1)
            vals.append((f @ f.T / f.shape[1]).numpy())
    vals = np.array(vals)
    return vals.mean(0), vals.std(0, ddof=1) / math.sqrt(n_init)


def test_finite_residual_module_computes_shortcut_plus_branch():
    arch = nk.Sequential(nk.Linear(5), nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(5)), nk.Linear(5)))
    net = arch.init((3,), seed=0, dtype=torch.float64)
    block = net[1]
    assert isinstance(block, nk.ResidualBlock)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = net[0](x)
    torch.testing.assert_close(net(x), block.shortcut(h) + block.branch(h), rtol=0, atol=0)
    ident = nk.Sequential(nk.Linear(5), nk.Residual(nk.Linear(5))).init((3,), seed=0, dtype=torch.float64)
    h = ident[0](x)
    torch.testing.assert_close(ident(x), h + ident[1].branch(h), rtol=0, atol=0)


@pytest.mark.parametrize("images", [False, True])
def test_residual_nngp_matches_monte_carlo_of_finite_networks(images):
    """Width n hidden layers, 2048 independent readout units per net, 24 nets. Bound: 5 SE plus
    a finite-width bias allowance of 3/n relative to the largest entry (the O(1/n) correction
    of ReLU layers). Measured: the largest |MC - kernel| is 0.30 (flat) and 0.12 (images) of
    the bound."""
    n = 256 if images else 512
    if images:
        x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        body = [nk.Conv2d(n, 3, W_std=S2, b_std=0.1),
                nk.Residual(nk.Sequential(nk.ReLU(), nk.Conv2d(n, 3, stride=2, W_std=S2, b_std=None)),
                            nk.Conv2d(n, 3, stride=2, W_std=1.0, b_std=None)),
                nk.Residual(nk.Sequential(nk.ReLU(), nk.Conv2d(n, 3, W_std=S2, b_std=0.1))),
                nk.ReLU(), nk.GlobalAvgPool2d()]
    else:
        x = torch.tensor(_flat_inputs())
        body = [nk.Linear(n, W_std=1.2, b_std=0.1),
                nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(n, W_std=S2, b_std=0.2))),
                nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(n, W_std=0.8, b_std=None)),
                            nk.Linear(n, W_std=1.0, b_std=0.1)),
                nk.ReLU()]
    arch = nk.Sequential(*body, nk.Linear(2048, W_std=1.0, b_std=None))
    mean, se = _mc_nngp(arch, x, 24)
    ref = arch.kernel(x, get="nngp").nngp.numpy()
    bound = 5 * se + 3.0 / n * np.abs(ref).max()
    assert np.all(np.abs(mean - ref) <= bound), (np.abs(mean - ref) / bound).max()


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_residual_ntk_matches_empirical_ntk_of_wide_net(parameterization):
    """Empirical NTK of nets of width 4096 (flat), mean over 4 seeds; its fluctuation is
    O(width^-1/2): asserted within 6% of the largest entry (measured: 0.2% and 0.3% for the two
    parameterizations; single nets 4% to 7%)."""
    p = parameterization
    n = 4096
    arch = nk.Sequential(nk.Linear(n, W_std=1.2, b_std=0.1, parameterization=p),
                         nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(n, W_std=S2, b_std=0.2, parameterization=p)),
                                     nk.Linear(n, W_std=1.0, b_std=None, parameterization=p)),
                         nk.ReLU(), nk.Linear(1, W_std=1.0, b_std=0.1, parameterization=p))
    x = torch.tensor(_flat_inputs()[:3])
    ref = arch.kernel(x).ntk.numpy()
    emp = np.mean([nk.empirical_ntk(arch.init((6,), seed=s, dtype=torch.float64), x).numpy()
                   for s in range(4)], axis=0)
    assert np.abs(emp - ref).max() <= 0.06 * np.abs(ref).max(), np.abs(emp - ref).max() / np.abs(ref).max()


# -- from_torch ------------------------------------------------------------------------------------
class _MyBlock(torch.nn.Module):
    """A user's residual block in the documented shape: .branch, .shortcut, shortcut(x) + branch(x)."""

    def __init__(self, c):
        super().__init__()
        self.branch = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(c, c, 3, padding=1, bias=False))
        self.shortcut = torch.nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.branch(x)


def test_from_torch_recognises_residual_blocks():
    from torch import nn
    from ntkit.layers.residual import BranchSum
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nk.ResidualBlock(nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False)),
        _MyBlock(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        BranchSum([nn.Linear(8, 4), nn.Sequential(nn.Tanh(), nn.Linear(8, 4, bias=False))]),
        nn.LayerNorm(4, elementwise_affine=False), nn.Linear(4, 1))
    arch = nk.from_torch(model, W_std=1.2, b_std=0.1)
    hand = nk.Sequential(
        nk.Conv2d(8, 3, W_std=1.2, b_std=0.1),
        nk.Residual(nk.Sequential(nk.ReLU(), nk.Conv2d(8, 3, W_std=1.2, b_std=0.1)),
                    nk.Conv2d(8, 3, W_std=1.2, b_std=None)),
        nk.Residual(nk.Sequential(nk.ReLU(), nk.Conv2d(8, 3, W_std=1.2, b_std=None))),
        nk.ReLU(), nk.GlobalAvgPool2d(), nk.Flatten(),
        nk.ParallelSum(nk.Linear(4, W_std=1.2, b_std=0.1), nk.Sequential(nk.Tanh(), nk.Linear(4, W_std=1.2, b_std=None))),
        nk.LayerNorm(eps=1e-5), nk.Linear(1, W_std=1.2, b_std=0.1))
    assert repr(arch) == repr(hand)
    x = np.random.default_rng(3).normal(size=(3, 2, 4, 4))
    ka, kb = arch.kernel(x), hand.kernel(x)
    assert torch.equal(ka.nngp, kb.nngp) and torch.equal(ka.ntk, kb.ntk)
    # the torch model runs on the same shapes
    assert model(torch.tensor(x, dtype=torch.float32)).shape == (3, 1)
    with pytest.raises(ValueError, match="elementwise_affine"):
        nk.from_torch(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))


def test_architecture_file_syntax_for_blocks():
    from ntkit.commands.archspec import parse_arch
    arch = parse_arch('[{Linear: [4]}, {Residual: {branch: [ReLU, {Linear: [4]}], shortcut: {Linear: [4]}}},'
                      ' {ParallelSum: [null, [ReLU, {Linear: [4]}]]}, {Linear: [1]}]')
    hand = nk.Sequential(nk.Linear(4), nk.Residual(nk.Sequential(nk.ReLU(), nk.Linear(4)), nk.Linear(4)),
                         nk.ParallelSum(None, nk.Sequential(nk.ReLU(), nk.Linear(4))), nk.Linear(1))
    assert repr(arch) == repr(hand)
