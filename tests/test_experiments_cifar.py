"""The cifar10-cntk experiment in quick mode (tiny subsets; skipped without the shared data).

Reference: the CNTK of Arora et al. 2019 written out here in numpy float64 from its definition
(3x3 "same" convolutions with c_σ/q² = W_std²/9, the ReLU arc-cosine expectations of Cho & Saul
2009, the V readout as the mean over positions of the same-position kernel, the GAP readout as
the mean over all pixel pairs), then kernel regression on the targets -0.1 + e_c by
numpy.linalg.solve: the accuracies the experiment reports must equal those of the reference
kernels, and its architectures' kernels must equal the reference to 1e-10.
"""
import json
import math

import numpy as np
import pytest

from ntkit.data.paths import default_data_dir
from ntkit.experiments import cifar10_cntk, get

NPZ = default_data_dir() / "cifar10" / "cifar10_subset.npz"
W2 = 2.0  # c_σ of ReLU


def _shift_sum(m, pairs: bool):
    """Σ over offsets δ ∈ {-1, 0, 1}² of m at p + δ (zero outside the image), for same-position
    maps (..., H, W) or, with ``pairs``, pixel-pair maps (..., H, W, H, W) shifted together."""
    if not pairs:
        h, w = m.shape[-2:]
        p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
        return sum(p[..., a:a + h, b:b + w] for a in range(3) for b in range(3))
    h, w = m.shape[-2:]
    p = np.pad(m, [(0, 0)] * (m.ndim - 4) + [(1, 1), (1, 1)] * 2)
    return sum(p[..., a:a + h, b:b + w, a:a + h, b:b + w] for a in range(3) for b in range(3))


def _relu(c, v1, v2):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for Var u = v1, Var v = v2, Cov = c."""
    sv = np.sqrt(v1 * v2)
    rho = np.clip(c / sv, -1.0, 1.0)
    rho = np.where(np.abs(rho) > 1 - 4 * np.finfo(float).eps, np.sign(rho), rho)
    th = np.arccos(rho)
    return sv * (np.sin(th) + (math.pi - th) * np.cos(th)) / (2 * math.pi), (math.pi - th) / (2 * math.pi)


def reference_cntk(x1, x2, depth: int, gap: bool):
    """NTK (n1, n2) of ``cifar10_cntk.cntk(depth, gap)``: depth - 1 × [conv 3x3 same, W_std √2,
    no bias, ReLU], then Flatten + trainable Linear(W_std 1) (V), or GAP + frozen Linear with the
    first conv frozen too (GAP). Inputs (n, C, H, W); input kernel Σ_c x_c x'_c / C."""
    c = x1.shape[1]
    if gap:   # pixel pairs: cov[a, b, p, q]; variances var[a, p, q] (the diagonal p = q is used)
        cov = np.einsum("achw,bcij->abhwij", x1, x2) / c
        v1 = np.einsum("achw,acij->ahwij", x1, x1) / c
        v2 = np.einsum("achw,acij->ahwij", x2, x2) / c
        diag = lambda v: np.einsum("ahwhw->ahw", v)  # noqa: E731
        vv = lambda a, b: (diag(a)[:, None, :, :, None, None], diag(b)[None, :, None, None])  # noqa: E731
        own = lambda v: (diag(v)[:, :, :, None, None], diag(v)[:, None, None])  # noqa: E731
    else:     # same positions: cov[a, b, p]; var[a, p]
        cov = np.einsum("achw,bchw->abhw", x1, x2) / c
        v1 = np.einsum("achw,achw->ahw", x1, x1) / c
        v2 = np.einsum("achw,achw->ahw", x2, x2) / c
        vv = lambda a, b: (a[:, None], b[None])  # noqa: E731
        own = lambda v: (v, v)  # noqa: E731
    ntk = None
    for layer in range(depth - 1):
        cov, v1, v2 = (W2 / 9 * _shift_sum(m, gap) for m in (cov, v1, v2))
        if ntk is not None:
            ntk = W2 / 9 * _shift_sum(ntk, gap)
        if not (gap and layer == 0):
            ntk = cov.copy() if ntk is None else ntk + cov
        cov, dot = _relu(cov, *vv(v1, v2))
        ntk = None if ntk is None else ntk * dot
        v1, v2 = _relu(v1, *own(v1))[0], _relu(v2, *own(v2))[0]
    axes = tuple(range(2, cov.ndim))
    pooled_cov, pooled_ntk = cov.mean(axis=axes), ntk.mean(axis=axes)
    return pooled_ntk if gap else pooled_ntk + pooled_cov   # the V readout Linear is trainable


def _accuracy(k_train, k_test, y_train, y_test):
    t = np.full((len(y_train), 10), -0.1)
    t[np.arange(len(y_train)), y_train] = 0.9
    pred = (k_test @ np.linalg.solve(k_train, t)).argmax(1)
    return 100.0 * np.mean(pred == y_test)


def _quick_data():
    """The quick run's images: the first 20 lossless training images, every 500th test image
    (20, class-balanced); GAP: the first 10 of those and every 2nd of the 20, pooled to 8x8."""
    from ntkit.data.cifar10 import load_cifar10

    x_tr, y_tr, x_te, y_te = load_cifar10(None, lossless=True, n_train=20, dtype=np.float64)
    te = np.arange(20) * (len(x_te) // 20)
    x_te, y_te = x_te[te], y_te[te]
    pool = lambda x: x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5))  # noqa: E731
    gap = (pool(x_tr[:10]), y_tr[:10], pool(x_te[::2]), y_te[::2])
    return (x_tr, y_tr, x_te, y_te), gap


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_architectures_match_the_reference_cntk():
    (x_tr, _, x_te, _), (g_tr, _, g_te, _) = _quick_data()
    for depth, gap, a, b in ((3, False, x_tr[:3], x_te[:2]), (4, False, x_tr[:2], x_te[:2]),
                             (3, True, g_tr[:3], g_te[:2])):
        got = cifar10_cntk.cntk(depth, gap).kernel(a, b, get="ntk").ntk.numpy()
        np.testing.assert_allclose(got, reference_cntk(a, b, depth, gap), rtol=1e-10)


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_quick_run_accuracies_equal_the_reference(tmp_path):
    res = get("cifar10-cntk")(tmp_path, quick=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == res["rows"] and [r["depth"] for r in res["rows"]] == [3, 4]
    (x_tr, y_tr, x_te, y_te), (g_tr, gy_tr, g_te, gy_te) = _quick_data()
    for r in res["rows"]:
        d = r["depth"]
        ref = _accuracy(reference_cntk(x_tr, x_tr, d, False), reference_cntk(x_te, x_tr, d, False),
                        y_tr, y_te)
        assert r["ntkit_v"] == pytest.approx(ref, abs=1e-9)
    ref_gap = _accuracy(reference_cntk(g_tr, g_tr, 3, True), reference_cntk(g_te, g_tr, 3, True),
                        gy_tr, gy_te)
    assert res["rows"][0]["ntkit_gap"] == pytest.approx(ref_gap, abs=1e-9)
    assert res["rows"][1]["ntkit_gap"] is None          # quick: GAP at depth 3 only
    assert (tmp_path / "cifar10_cntk.png").stat().st_size > 0
    assert res["figure_depth_ticks"] == ["3", "4"]          # integer ticks at the depths


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_quick_run_states_its_data_and_shows_no_paper_column_of_another_size(tmp_path):
    """20 training images: the paper's 2K columns must not appear (table, rows, figure data);
    the data statement names the lossless training images, the JPEG test images and the
    channel statistics, which must equal the statistics of the first 20 lossless images
    computed here from the npz (independent of the loader)."""
    res = get("cifar10-cntk")(tmp_path, quick=True, device="cpu")
    table = (tmp_path / "table.md").read_text()
    assert "40.94" not in table and "49.71" not in table and "paper CNTK" not in table
    assert all(r["paper_v_2k"] is None and r["paper_gap_2k"] is None for r in res["rows"])
    assert "ntkit CNTK-V (20 train / 20 test)" in table
    assert "ntkit CNTK-GAP (10 train / 10 test)" in table
    data = res["data"]
    assert data["test_images_jpeg"] is True and "JPEG" in data["test"] and "JPEG" in table
    assert "lossless" in data["train"] and "first 20" in data["train"]
    with np.load(NPZ) as z:
        raw = z["x_train_first4000_lossless"][:20].astype(np.float64) / 255.0
    np.testing.assert_allclose(data["channel_mean"], raw.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(data["channel_std"], raw.std(axis=(0, 1, 2)), atol=1e-6)
    assert len(res["paper_columns_not_shown"]) == 2
    for r in res["rows"]:   # the Wilson interval contains the accuracy, within [0, 100]
        lo, hi = r["ntkit_v_interval"]
        assert 0 <= lo <= r["ntkit_v"] <= hi <= 100


def test_paper_column_shown_only_at_the_papers_training_size(tmp_path, monkeypatch):
    """With 2,000 training images the paper's CNTK-V-2K value sits next to ntkit's (the
    kernels replaced by a fake: this checks the table logic, not the kernels)."""
    from ntkit.data.splits import TrainTest

    rng = np.random.default_rng(0)
    fake = TrainTest(rng.normal(size=(2000, 3, 2, 2)), rng.integers(0, 10, 2000),
                     rng.normal(size=(100, 3, 2, 2)), np.repeat(np.arange(10), 10))
    monkeypatch.setattr("ntkit.data.cifar10.load_cifar10", lambda *a, **k: fake)
    flat = lambda a, b: (a.reshape(len(a), -1) @ b.reshape(len(b), -1).T + 1e-3 * (a is b))  # noqa: E731
    monkeypatch.setattr(cifar10_cntk, "_kernels",
                        lambda arch, xa, xb, dev, dt: (flat(xa, xa) + 50 * np.eye(len(xa)),
                                                       flat(xb, xa)))
    res = cifar10_cntk.run(tmp_path, depths=[3], n_train=2000, n_test=100, device="cpu",
                           data_path=tmp_path)
    assert res["rows"][0]["paper_v_2k"] == 40.94
    assert "| 3 | 40.94 |" in (tmp_path / "table.md").read_text()
    assert res["paper_columns_not_shown"] == []


def test_wilson_interval_against_the_closed_form():
    """Wilson (1927): p = 0.5, n = 100, z = 1.96 -> [0.4038, 0.5962]."""
    lo, hi = cifar10_cntk.wilson_interval(50.0, 100)
    assert lo == pytest.approx(40.383, abs=1e-3) and hi == pytest.approx(59.617, abs=1e-3)


def test_device_auto_follows_cuda_availability(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cifar10_cntk._device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        cifar10_cntk._device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cifar10_cntk._device("auto").type == "cuda"


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_sharded_run_and_merge_equal_the_unsharded_run(tmp_path):
    """Shards 1/2 and 2/2 then the merge give the rows of one unsharded run."""
    run = get("cifar10-cntk")
    cfg = dict(quick=True, device="cpu", gap_depths=[])
    whole = run(tmp_path / "whole", **cfg)
    for i in (1, 2):
        part = run(tmp_path / "sharded", shard=f"{i}/2", **cfg)
        assert part["partial"] is True and part["units_total"] == 2
        assert not (tmp_path / "sharded" / "results.json").exists()
    merged = run(tmp_path / "sharded", **cfg)
    assert merged["rows"] == whole["rows"]


@pytest.mark.skipif(not NPZ.is_file(), reason="shared CIFAR-10 subset absent")
def test_a_run_with_more_depths_reuses_the_finished_ones(tmp_path, monkeypatch):
    run = get("cifar10-cntk")
    first = run(tmp_path, quick=True, device="cpu", depths=[3], gap_depths=[])
    computed = []
    real = cifar10_cntk._kernels
    monkeypatch.setattr(cifar10_cntk, "_kernels",
                        lambda arch, *a: computed.append(arch) or real(arch, *a))
    second = run(tmp_path, quick=True, device="cpu", depths=[3, 4], gap_depths=[])
    assert len(computed) == 1                      # depth 4 only
    assert second["rows"][0] == first["rows"][0] and second["rows"][1]["depth"] == 4
    with pytest.raises(ValueError, match="n_test"):   # other images: other units, refused
        run(tmp_path, quick=True, device="cpu", depths=[3], gap_depths=[], n_test=10)
