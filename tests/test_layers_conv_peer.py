"""Cross-check of the convolutional kernels against neural-tangents 0.6.5 (stax.Conv, AvgPool,
GlobalAvgPool, Flatten), run in its own virtualenv; skipped when .peer-venv is absent.
neural-tangents takes NHWC images, ntkit NCHW: the same images are passed transposed."""
import numpy as np
import pytest

import ntkit as nk
from tests.peer.runner import nt_kernels, peer_available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")]

S2 = float(np.sqrt(2.0))


def _pair(ours, theirs):
    return ours, theirs


CASES = [
    # (ntkit layers, neural-tangents spec)
    _pair([nk.Conv2d(8, 3, W_std=S2, b_std=None), nk.ReLU(), nk.Conv2d(8, 3, W_std=S2, b_std=None),
           nk.ReLU(), nk.Flatten(), nk.Linear(1, W_std=1.0, b_std=None)],
          [["Conv", {"args": [8, [3, 3]], "kwargs": {"padding": "SAME", "W_std": S2, "b_std": None}}],
           ["Relu", {}],
           ["Conv", {"args": [8, [3, 3]], "kwargs": {"padding": "SAME", "W_std": S2, "b_std": None}}],
           ["Relu", {}], ["Flatten", {}], ["Dense", {"args": [1], "kwargs": {"W_std": 1.0, "b_std": None}}]]),
    _pair([nk.Conv2d(8, (2, 3), stride=(2, 1), padding="valid", W_std=1.3, b_std=0.2), nk.Erf(),
           nk.Conv2d(8, 3, padding="circular", W_std=1.1, b_std=0.1, parameterization="standard"),
           nk.ReLU(), nk.GlobalAvgPool2d(), nk.Linear(3, W_std=1.2, b_std=0.3), nk.ReLU(),
           nk.Linear(1, W_std=1.0, b_std=0.1)],
          [["Conv", {"args": [8, [2, 3]], "kwargs": {"strides": [2, 1], "padding": "VALID", "W_std": 1.3, "b_std": 0.2}}],
           ["Erf", {}],
           ["Conv", {"args": [8, [3, 3]], "kwargs": {"padding": "CIRCULAR", "W_std": 1.1, "b_std": 0.1,
                                                   "parameterization": "standard"}}],
           ["Relu", {}], ["GlobalAvgPool", {}], ["Dense", {"args": [3], "kwargs": {"W_std": 1.2, "b_std": 0.3}}],
           ["Relu", {}], ["Dense", {"args": [1], "kwargs": {"W_std": 1.0, "b_std": 0.1}}]]),
    _pair([nk.Conv2d(8, 3, W_std=S2, b_std=0.1), nk.ReLU(), nk.AvgPool2d(2, stride=1, padding="same"),
           nk.Conv2d(8, 2, W_std=1.5, b_std=None), nk.ReLU(), nk.AvgPool2d(2), nk.Flatten(),
           nk.Linear(1, W_std=1.0, b_std=0.0)],
          [["Conv", {"args": [8, [3, 3]], "kwargs": {"padding": "SAME", "W_std": S2, "b_std": 0.1}}],
           ["Relu", {}], ["AvgPool", {"args": [[2, 2]], "kwargs": {"strides": [1, 1], "padding": "SAME"}}],
           ["Conv", {"args": [8, [2, 2]], "kwargs": {"padding": "SAME", "W_std": 1.5, "b_std": None}}],
           ["Relu", {}], ["AvgPool", {"args": [[2, 2]], "kwargs": {"strides": [2, 2]}}], ["Flatten", {}],
           ["Dense", {"args": [1], "kwargs": {"W_std": 1.0, "b_std": 0.0}}]]),
]


def test_conv_kernels_match_neural_tangents_float64():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((3, 2, 5, 6))
    x2 = rng.standard_normal((2, 2, 5, 6))
    specs = [spec for _, spec in CASES]
    ref_cross = nt_kernels(x1.transpose(0, 2, 3, 1), x2.transpose(0, 2, 3, 1), specs)
    ref_self = nt_kernels(x1.transpose(0, 2, 3, 1), None, specs)
    for (layers, _), (nngp, ntk), (nngp_s, ntk_s) in zip(CASES, ref_cross, ref_self):
        arch = nk.Sequential(*layers)
        k = arch.kernel(x1, x2)
        np.testing.assert_allclose(k.nngp.numpy(), nngp, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(k.ntk.numpy(), ntk, rtol=1e-10, atol=1e-13)
        ks = arch.kernel(x1)
        off = ~np.eye(len(x1), dtype=bool)
        np.testing.assert_allclose(ks.nngp.numpy(), nngp_s, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(ks.ntk.numpy()[off], ntk_s[off], rtol=1e-10, atol=1e-13)
        # an input against itself: neural-tangents' ReLU NTK at correlation 1 is ~1e-8 accurate
        # (shared/peer/README.md); ntkit's is exact there (tests/test_layers_conv.py)
        np.testing.assert_allclose(np.diag(ks.ntk.numpy()), np.diag(ntk_s), rtol=1e-7)
