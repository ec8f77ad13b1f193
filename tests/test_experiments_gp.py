"""ntk-gp, two-layer-sigmoid and lazy-training (seeds 002, 003, 004): quick runs of real training
against the closed forms of ntkit.predict, and tests that their checks fail when the theory
they check is wrong (a kernel scaled by 2, a λ_min too large, a wrong kernel). All seeded."""
import json

import numpy as np
import pytest
import torch

from ntkit import experiments
from ntkit.experiments import lazy_training, ntk_gp, two_layer_sigmoid

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(out, names):
    for name in names:
        assert (out / name).stat().st_size > 1000
    return json.loads((out / "results.json").read_text())


# -- ntk-gp ---------------------------------------------------------------------------------------
def _spd(s: int, rng) -> np.ndarray:
    a = rng.normal(size=(s, s))
    return a @ a.T / s + 0.1 * np.eye(s)


def test_variance_test_passes_the_true_covariance_and_fails_a_factor_2():
    """Reference: draws of N(μ, Σ) by numpy. 200 draws of 8 inputs (the full run's size): the true
    Σ passes; 2Σ, Σ/2 and a shifted mean fail."""
    rng = np.random.default_rng(0)
    cov, mean = _spd(8, rng), rng.normal(size=8)
    draws = rng.multivariate_normal(mean, cov, size=200)
    assert ntk_gp.variance_test(draws, mean, cov)["verdict"] == "consistent"
    for wrong in (2 * cov, cov / 2):
        t = ntk_gp.variance_test(draws, mean, wrong)
        assert t["verdict"] == "not consistent", t
    shifted = mean + 0.5 * np.sqrt(np.diag(cov))
    assert ntk_gp.variance_test(draws, shifted, cov)["verdict"] == "not consistent"
    # too few draws to tell a factor 2 apart: "undetermined", never "consistent"
    assert ntk_gp.variance_test(draws[:3, :2], mean[:2], cov[:2, :2])["verdict"] == "undetermined"


def test_variance_test_interval_has_its_coverage():
    """Over 2000 independent data sets (5 draws of 4 inputs) the 95% interval holds the true
    factor 1 in 95% of them: binomial s.d. 0.005, tolerance 0.015 (3 s.d.)."""
    rng = np.random.default_rng(1)
    cov, mean = _spd(4, rng), np.zeros(4)
    hits = [ntk_gp.variance_test(rng.multivariate_normal(mean, cov, size=5), mean,
                                 cov)["interval"] for _ in range(2000)]
    cover = np.mean([lo <= 1.0 <= hi for lo, hi in hits])
    assert abs(cover - 0.95) < 0.015


def test_variance_test_names_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        ntk_gp.variance_test(np.zeros((4, 2)), np.zeros(2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(n, S\)"):
        ntk_gp.variance_test(np.zeros((4, 2)), np.zeros(3), np.eye(2))


def test_ntk_gp_networks_follow_the_ntk_gp_and_not_the_ntk_prior_posterior(tmp_path):
    res = experiments.get("ntk-gp")(tmp_path, quick=True, n_nets=24, steps=60, n_test=15,
                                    paper_nets=3, paper_widths=(50, 400))
    saved = _files(tmp_path, ["ntk_gp_poster.png", "ntk_gp_paper.png"])
    assert saved["poster"] == json.loads(json.dumps(res["poster"]))
    tests = res["poster"]["variance_tests"]
    # 24 networks x 8 inputs = 192 degrees of freedom: the NTK-GP passes ...
    assert tests["ntk_gp"]["dof"] == 192 and tests["ntk_gp"]["verdict"] == "consistent"
    # ... the same outputs against the NNGP kernel scaled by 2 (covariance x 2) fail ...
    assert tests["ntk_gp_nngp_kernel_x2"]["verdict"] == "not consistent"
    assert tests["ntk_gp_nngp_kernel_x2"]["interval"][1] < 1.0
    # ... and the posterior for the NTK prior (the poster's pink band) is not what they follow
    assert tests["ntk_prior_posterior"]["verdict"] == "not consistent"
    assert res["verdict"] == "consistent" and res["config"]["dtype"] == "float64"
    assert [p["width"] for p in res["paper"]] == [50, 400] and res["paper"][0]["depth"] == 4


def test_ntk_gp_sharded_then_merged_equals_unsharded(tmp_path):
    opts = dict(quick=True, n_nets=60, steps=10, n_test=9, paper_nets=2, paper_widths=(20, 30))
    run = experiments.get("ntk-gp")
    parts = [run(tmp_path / "split", shard=f"{i}/2", **opts) for i in (1, 2)]
    assert all(p["partial"] for p in parts) and parts[0]["units_total"] == 4
    assert parts[1]["units_done"] == 4            # shard 2 sees shard 1's units too
    assert not (tmp_path / "split" / "results.json").exists()
    merged = run(tmp_path / "split", **opts)
    whole = run(tmp_path / "whole", **opts)
    for key in ("poster", "paper"):
        assert merged[key] == whole[key]


# -- two-layer-sigmoid --------------------------------------------------------------------------
def test_discrete_bound_fails_with_a_wrong_lambda_min():
    """The closed form with K^∞ (an independent eigendecomposition by numpy): the discrete
    bound ‖y − u_k‖² ≤ ‖y‖²(1 − ηλ)^{2k} holds with λ = λ_min(K^∞), is violated with 2λ_min,
    and the closed form itself matches (I − ηK)^k y computed by matrix powers."""
    x, y = two_layer_sigmoid.make_data(0)
    k = two_layer_sigmoid.architecture(1, 5).kernel(x).ntk.numpy()
    lam = np.linalg.eigvalsh(k)
    eta, steps = 1.0 / lam[-1], 300
    u = two_layer_sigmoid.closed_form(torch.as_tensor(k), y, eta, steps)
    step = np.eye(6) - eta * k
    ref = y[:, 0] - np.linalg.matrix_power(step, 37) @ y[:, 0]
    assert np.allclose(u[37], ref, atol=1e-12)
    resid2 = ((u - y[:, 0]) ** 2).sum(1)
    y2 = float((y ** 2).sum())
    assert two_layer_sigmoid.bound_holds(resid2, y2, lam[0], eta)
    assert not two_layer_sigmoid.bound_holds(resid2, y2, 2 * lam[0], eta)
    assert two_layer_sigmoid.decay_factor(resid2) == pytest.approx(1 - eta * lam[0], rel=1e-3)


def test_two_layer_sigmoid_approaches_the_discrete_closed_form(tmp_path):
    res = experiments.get("two-layer-sigmoid")(tmp_path, quick=True)
    _files(tmp_path, ["two_layer_sigmoid.png"])
    # part (a): the homework's bound holds along every trajectory, with 2λ̄ it fails everywhere
    assert res["bound_holds_everywhere"] and res["bound_with_2x_lambda_fails_everywhere"]
    assert res["part_b_bound_holds_everywhere"]        # part (b): max_r movement ≤ C/√m
    # the slowest mode decays at the rate of λ_min(K^∞): 1 − ηλ_min within 1% at width 512
    wide = res["widths"][-1]
    assert np.allclose(wide["decay_factor"], res["predicted_decay_factor"], rtol=0.01)
    rates = res["rates"]
    # the approach to K^∞ is a power law in m whose interval holds -1/2 and excludes 0, while
    # the closed form with a wrong kernel (G^∞, readout only) is not approached at all
    assert rates["dist_to_K_inf"]["verdict"] == "consistent"
    assert rates["dist_to_G_inf"]["verdict"] == "not consistent"
    assert min(wide["dist_to_G_inf"]) > 5 * max(wide["dist_to_K_inf"])
    # part (b): the weights move like m^-1/2 (max over neurons; the rms has a narrower
    # interval, whose verdict at these small widths is left to the full run)
    assert rates["max_dw"]["verdict"] == "consistent"
    assert rates["rms_dw"]["interval"][0] < -0.45 and rates["rms_dw"]["interval"][1] < -0.4


# -- lazy-training ------------------------------------------------------------------------------
def test_hessian_norm_matches_a_dense_reference():
    """‖∇²y‖ of a small net against the dense Hessians (torch.autograd.functional.hessian) and
    a brute-force maximization over u on a fine grid of the unit circle (N = 2 outputs)."""
    net = lazy_training.architecture(6).init((1,), seed=3, dtype=torch.float64)
    x = torch.as_tensor(lazy_training.make_data()[0])
    w0, fn = lazy_training._flat(net)
    f = lambda w: fn(w, x)  # noqa: E731
    hess = [torch.autograd.functional.hessian(lambda w, i=i: f(w)[i], w0) for i in range(2)]
    ref = max(float(torch.linalg.matrix_norm(np.cos(p) * hess[0] + np.sin(p) * hess[1], ord=2))
              for p in np.linspace(0, np.pi, 2001))
    got = lazy_training.hessian_norm(f, w0, steps=60, rounds=8)
    assert got == pytest.approx(ref, rel=1e-4)
    assert got <= ref * (1 + 1e-9)      # a value of the map: never above its norm


def test_lazy_training_rates_against_theory(tmp_path):
    res = experiments.get("lazy-training")(tmp_path, quick=True)
    _files(tmp_path, ["lazy_training.png"])
    assert res["all_converged"]
    # the relative weight change falls like m^-1 (two hidden layers: ‖w₀‖ ∝ m), not m^-1/2
    assert res["rates"]["rel_weight_change"]["verdict"] == "consistent"
    assert res["rates"]["rel_weight_change"]["interval"][1] < -0.5
    # ‖∇²y‖ ∝ m^-1/2 (NTK parameterization)
    assert res["rates"]["hessian_norm"]["verdict"] == "consistent"
    # ‖∇_w y(w₀)‖² is λ_max of the empirical NTK, which tends to λ_max of the analytic NTK
    # (arch.kernel): the mean over the inits at width 300 within 3 standard errors, plus 2% for
    # the O(1/m) bias of the mean
    x, _ = lazy_training.make_data()
    lam = float(torch.linalg.eigvalsh(lazy_training.architecture(1).kernel(x).ntk)[-1])
    jac2 = np.array(res["widths"][-1]["jacobian_norm"]) ** 2
    assert jac2.mean() == pytest.approx(lam, rel=3 * jac2.std() / np.sqrt(len(jac2)) / lam + 0.02)
