"""Quick runs of the experiments deep-limits, kernel-pca and error-prediction, asserting what
could fail: kernel-PCA eigenvalues against a numpy eigendecomposition of an independently
computed NTK; classifier agreements against chance; the predicted deep limits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ntkit.experiments import REGISTRY, get

pytestmark = pytest.mark.usefixtures("one_thread")


def _chance(p, q):
    return p * q + (1 - p) * (1 - q)


def test_registered():
    for name in ("deep-limits", "kernel-pca", "error-prediction"):
        assert name in REGISTRY and callable(get(name))


def test_deep_limits_quick(tmp_path):
    res = get("deep-limits")(tmp_path, quick=True, settings=["d2"], n_train=150, n_test=150,
                             depths=[1, 20])
    assert (tmp_path / "deep_limits.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["experiment"] == "deep-limits"
    s = res["settings"]["d2"]
    acts = s["activations"]
    assert [acts[a]["limit"] for a in ("relu", "h2+h3", "erf", "phi_opt")] == [
        "majority", "nearest-neighbour", "singular", "singular"]
    assert acts["phi_opt"]["alpha"] == pytest.approx(2.0, rel=1e-12)
    # the deep phi_opt NTK classifier agrees with its predicted singular-kernel limit far above
    # the agreement of two independent classifiers with the same accuracies
    e = acts["phi_opt"]
    agree, acc = e["ntk"]["agreement"][-1], e["ntk"]["accuracy"][-1]
    assert agree >= 0.9
    assert agree > _chance(acc, e["predicted_accuracy"]) + 0.2
    # prior 0.4: the majority vote says -1, right on about 60% of the test points
    assert 0.5 < s["baseline_accuracy"]["majority"] < 0.7
    assert s["baseline_accuracy"]["bayes"] > s["baseline_accuracy"]["majority"]


def _relu_ntk_numpy(x, depth=4, w=1.0, b=0.1):
    """Jacot et al.'s recursion (seed 002) in numpy: Σ¹ = w² x·x'/d + b², Θ¹ = Σ¹, then per
    ReLU layer the arc-cosine maps."""
    d = x.shape[1]
    s = w * w * (x @ x.T) / d + b * b
    t = s.copy()
    for _ in range(depth - 1):
        v = np.sqrt(np.diag(s))
        c = np.clip(s / np.outer(v, v), -1, 1)
        np.fill_diagonal(c, 1.0)
        th = np.arccos(c)
        e = np.outer(v, v) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
        ed = (np.pi - th) / (2 * np.pi)
        s = w * w * e + b * b
        t = w * w * t * ed + s
    return t


def test_kernel_pca_eigenvalues_match_numpy(tmp_path):
    res = get("kernel-pca")(tmp_path, quick=True, n=48)
    assert (tmp_path / "kernel_pca.png").stat().st_size > 0
    from ntkit.data import default_data_dir, load_digits, load_mnist
    try:
        x = load_mnist(default_data_dir() / "mnist", dtype=np.float64).x_train[:48]
        assert res["data"] == "mnist"
    except FileNotFoundError:
        x = load_digits(standardize=False).x_train[:48]
    ref = np.sort(np.linalg.eigvalsh(_relu_ntk_numpy(x)))[::-1]
    np.testing.assert_allclose(res["inputs"]["pixels"]["eigenvalues_K"][:5], ref[:5], rtol=1e-9)
    np.testing.assert_allclose(res["inputs"]["pixels"]["eigenvalues_K_over_n"][:5], ref[:5] / 48,
                               rtol=1e-9)


def test_error_prediction_quick(tmp_path):
    res = get("error-prediction")(tmp_path, quick=True, n_train=80, n_test=120, width=256,
                                  steps=80, seeds=1)
    assert (tmp_path / "error_prediction.png").stat().st_size > 0
    net = res["networks"][0]["vs_ntk"]
    assert sum(net["confusion"].values()) == 120
    assert 0 < net["error_rate_b"] < 0.7
    # the NTK predicts the trained network's errors far better than chance
    assert net["agreement"] > net["chance_agreement"] + 0.15
    assert net["cohen_kappa"] > 0.4
