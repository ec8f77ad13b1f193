"""Presets ntkit.layers.presets: myrtle, wide_resnet, cntk.

References: the papers' layer lists written out here (Shankar et al. 2020; the
neural-tangents README's WideResnet; Arora et al. 2019), and neural-tangents' kernels of the
same networks (float64, 1e-10; skipped without the peer venv) on 16x16 images, where the
final pool is 4x4 (8x8 on 32x32): Myrtle's final pool written as the paper's repeated 2x2
pools, which must give the same kernel.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ntkit as nk
from tests.peer.runner import peer_available
from tests.test_layers_residual import check_against_peer

pytestmark = pytest.mark.usefixtures("one_thread")
S2 = math.sqrt(2.0)


def _convs(arch):
    return [l for l in arch.layers if isinstance(l, nk.Conv2d)]


@pytest.mark.parametrize("depth,stages", [(5, (2, 1, 1)), (7, (2, 2, 2)), (10, (3, 3, 3))])
def test_myrtle_layer_list(depth, stages):
    arch = nk.myrtle(depth)
    names = [type(l).__name__ for l in arch.layers]
    want = (["Conv2d", "ReLU"] * stages[0] + ["AvgPool2d"] + ["Conv2d", "ReLU"] * stages[1]
            + ["AvgPool2d"] + ["Conv2d", "ReLU"] * stages[2] + ["AvgPool2d", "Flatten", "Linear"])
    assert names == want
    assert all(c.W_std == S2 and c.b_std is None and c.kernel_size == (3, 3) and c.padding == "same"
               for c in _convs(arch))
    assert arch.layers[-3].kernel_size == (8, 8) and arch.layers[-1].W_std == S2
    assert arch.out_shape((3, 32, 32)) == (10,)
    with pytest.raises(ValueError, match="depth"):
        nk.myrtle(6)


def test_wide_resnet_layer_list_and_finite_net():
    arch = nk.wide_resnet(16, k=2)  # n = 2 blocks per group
    blocks = [l for l in arch.layers if isinstance(l, nk.Residual)]
    assert len(blocks) == 6
    assert [b.shortcut is not None for b in blocks] == [True, False] * 3
    assert [b.branch.layers[1].stride for b in blocks] == [(1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert [b.branch.layers[1].out_channels for b in blocks] == [32, 32, 64, 64, 128, 128]
    assert arch.out_shape((3, 32, 32)) == (10,)
    net = nk.wide_resnet(10, k=1).init((3, 32, 32), seed=0)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n"):
        nk.wide_resnet(12, 1)


def test_cntk_preset_is_arora_et_al():
    for readout, pool in (("gap", nk.GlobalAvgPool2d), ("flatten", nk.Flatten)):
        arch = nk.cntk(4, readout=readout)
        convs = _convs(arch)
        assert len(convs) == 3 and all(c.W_std == S2 and c.b_std is None for c in convs)
        assert isinstance(arch.layers[-2], pool)
        gap = readout == "gap"
        assert convs[0].trainable is not gap and arch.layers[-1].trainable is not gap
    with pytest.raises(ValueError, match="readout"):
        nk.cntk(3, readout="lap")


def _conv(n, w, b, stride=1):
    return ["Conv", {"args": [n, [3, 3]], "kwargs": {"strides": [stride, stride], "padding": "SAME",
                                                     "W_std": w, "b_std": b}}]


def _pool(k):
    return ["AvgPool", {"args": [[k, k]], "kwargs": {"strides": [k, k]}}]


def _nt_myrtle5():
    relu = ["Relu", {}]
    return ([_conv(1, S2, 0.0), relu] * 2 + [_pool(2)] + [_conv(1, S2, 0.0), relu] + [_pool(2)]
            + [_conv(1, S2, 0.0), relu] + [_pool(2)] * 2
            + [["Flatten", {}], ["Dense", {"args": [10], "kwargs": {"W_std": S2, "b_std": 0.0}}]])


def _nt_wrn10(k):
    def block(c, stride, mismatch):
        main = [["Relu", {}], _conv(c, 1.0, None, stride), ["Relu", {}], _conv(c, 1.0, None)]
        return ["Sum", {"branches": [main, [_conv(c, 1.0, None, stride)] if mismatch else []]}]
    return [_conv(16, 1.0, None), block(16 * k, 1, True), block(32 * k, 2, True),
            block(64 * k, 2, True), ["AvgPool", {"args": [[4, 4]]}], ["Flatten", {}],
            ["Dense", {"args": [10], "kwargs": {"W_std": 1.0, "b_std": 0.0}}]]


@pytest.mark.peer
@pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")
def test_presets_match_neural_tangents_float64():
    rng = np.random.default_rng(7)
    x1, x2 = rng.standard_normal((2, 3, 16, 16)), rng.standard_normal((1, 3, 16, 16))
    ours = [nk.myrtle(5, pool_size=4), nk.wide_resnet(10, k=1, pool_size=4)]
    specs = [_nt_myrtle5(), _nt_wrn10(1)]
    check_against_peer(ours, specs, x1, x2, lambda a: a.transpose(0, 2, 3, 1))
