"""ntkit.predict's neural-tangents-compatible functions against neural-tangents 0.6.5 itself.

Runs tests/peer/nt_predict.py in .peer-venv (skipped when absent) on a small float64 problem and
compares every output (gradient_descent_mse, gradient_descent_mse_ensemble with covariances,
gp_inference incl. 'ntkgp', max_learning_rate) to 1e-10 relative.
"""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import predict

from peer.runner import PEER_PYTHON, peer_available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not peer_available(), reason="neural-tangents .peer-venv absent")]

SPEC = [["Dense", {"args": [64], "kwargs": {"W_std": 1.5, "b_std": 0.1}}], ["Relu", {}],
        ["Dense", {"args": [64], "kwargs": {"W_std": 1.5, "b_std": 0.1}}], ["Relu", {}],
        ["Dense", {"args": [1], "kwargs": {"W_std": 1.5, "b_std": 0.1}}]]
ARCH = nk.Sequential(nk.Linear(64, W_std=1.5, b_std=0.1), nk.ReLU(),
                     nk.Linear(64, W_std=1.5, b_std=0.1), nk.ReLU(),
                     nk.Linear(1, W_std=1.5, b_std=0.1))
LR, REG = 0.7, 1e-3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    data = dict(x_train=rng.normal(size=(9, 5)), y_train=rng.normal(size=(9, 2)),
                x_test=rng.normal(size=(4, 5)), fx_train_0=rng.normal(size=(9, 2)),
                fx_test_0=rng.normal(size=(4, 2)), ts=np.array([0.0, 0.3, 2.0, 50.0]),
                learning_rate=np.array(LR), diag_reg=np.array(REG), spec=np.array(json.dumps(SPEC)))
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.npz", Path(d) / "out.npz"
        np.savez(inp, **data)
        subprocess.run([str(PEER_PYTHON), "nt_predict.py", str(inp), str(out)], check=True,
                       capture_output=True, timeout=600, cwd=Path(__file__).parent / "peer",
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
        ref = dict(np.load(out))
    return data, ref


def close(a, b, rtol=1e-10):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    scale = max(np.abs(b).max(), 1e-300)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def test_gradient_descent_mse_matches_nt(problem):
    d, ref = problem
    kdd = ARCH.kernel(d["x_train"])
    ktd = ARCH.kernel(d["x_test"], d["x_train"])
    fn = predict.gradient_descent_mse(kdd.ntk, d["y_train"], LR, REG)
    tr, te = fn(d["ts"], d["fx_train_0"], d["fx_test_0"], ktd.ntk)
    close(tr, ref["gd_train_t"])
    close(te, ref["gd_test_t"])
    tr, te = fn(None, d["fx_train_0"], d["fx_test_0"], ktd.ntk)
    close(tr, ref["gd_train_inf"])
    close(te, ref["gd_test_inf"])
    close(fn(d["ts"], d["fx_train_0"]), ref["gd_train_only_t"])
    close(fn(d["ts"], None, d["fx_test_0"], ktd.ntk), ref["gd_test_only_t"])


@pytest.mark.parametrize("tag", ["t", "inf"])
@pytest.mark.parametrize("where", ["test", "train"])
def test_gradient_descent_mse_ensemble_matches_nt(problem, tag, where):
    d, ref = problem
    fn = predict.gradient_descent_mse_ensemble(ARCH, d["x_train"], d["y_train"], LR, REG)
    res = fn(d["ts"] if tag == "t" else None, d["x_test"] if where == "test" else None,
             ("nngp", "ntk"), True)
    for g in ("nngp", "ntk"):
        close(getattr(res, g).mean, ref[f"ens_{tag}_{where}_{g}_mean"])
        close(getattr(res, g).covariance, ref[f"ens_{tag}_{where}_{g}_cov"])


def test_gp_inference_and_max_lr_match_nt(problem):
    d, ref = problem
    kdd = ARCH.kernel(d["x_train"])
    ktd = ARCH.kernel(d["x_test"], d["x_train"])
    ktt = ARCH.kernel(d["x_test"])
    res = predict.gp_inference(kdd, d["y_train"], REG)(("nngp", "ntk", "ntkgp"), ktd, ktt)
    for g in ("nngp", "ntk", "ntkgp"):
        close(getattr(res, g).mean, ref[f"gp_{g}_mean"])
        close(getattr(res, g).covariance, ref[f"gp_{g}_cov"])
    close(np.array(predict.max_learning_rate(kdd.ntk, d["y_train"].size)), ref["max_lr"])
