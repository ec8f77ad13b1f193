"""The rate verdicts of width-sweep, ntk-drift and linearization, and the units of all four width
experiments (with unit-circle).

Verdict tests replace the measurement of one unit by a synthetic power law with seeded lognormal
noise (the independent reference: the law the data were drawn from) and run the experiment's own
path (units, fit, bootstrap interval, verdict, figure, results.json): a drift that shrinks like
m^-1/2 must be reported as inconsistent with the m^-1 that seed 001 states, one that shrinks like
m^-1 as consistent. Sharded runs merged by the unsharded run must equal an unsharded run.
"""
import json

import numpy as np
import pytest

from ntkit.experiments import linearization, ntk_drift, unit_circle, width_sweep
from ntkit.experiments.statistics import CONSISTENT, NOT_CONSISTENT

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = [128, 256, 512, 1024, 2048]


def power_law(width: int, init: int, rate: float, scale: float = 0.5, noise: float = 0.3,
              salt: int = 0) -> float:
    """scale · m^rate · exp(noise · z), z standard normal seeded by (width, init, salt)."""
    z = np.random.default_rng([int(width), int(init), salt]).standard_normal()
    return float(scale * width ** rate * np.exp(noise * z))


@pytest.mark.parametrize("drift_rate, verdict", [(-0.5, NOT_CONSISTENT), (-1.0, CONSISTENT)])
def test_ntk_drift_verdict_tells_half_rate_from_the_stated_one(tmp_path, monkeypatch,
                                                               drift_rate, verdict):
    def fake(width, init, cfg, seed):
        return {"drift": power_law(width, init, drift_rate, salt=1),
                "dist": power_law(width, init, -0.5, salt=2),
                "drift_train": power_law(width, init, drift_rate, salt=1),  # the drift's draw
                "loss_initial": 1.0, "loss_final": 0.1}

    monkeypatch.setattr(ntk_drift, "measure", fake)
    res = ntk_drift.run(tmp_path, quick=True, widths=WIDTHS, inits=8, x_min=128)
    assert res["rates"]["drift"]["stated_rate"] == -1.0
    assert res["rates"]["drift"]["verdict"] == verdict == res["drift_verdict"]
    assert res["rates"]["dist"]["verdict"] == CONSISTENT
    assert res["rates"]["drift_train"]["verdict"] == verdict
    lo, hi = res["rates"]["drift"]["interval"]
    assert lo < drift_rate < hi        # 30% noise, 8 inits, 5 widths: the interval is ±0.15
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rates"]["drift"]["verdict"] == verdict and saved["quick"] is True
    assert (tmp_path / "ntk_drift.png").stat().st_size > 10_000


def test_ntk_drift_fits_only_the_asymptotic_range(tmp_path, monkeypatch):
    # the narrowest width is off the law by a factor 3: a fit from x_min = 256 ignores it
    def fake(width, init, cfg, seed):
        bump = 3.0 if width == 128 else 1.0
        return {"drift": bump * power_law(width, init, -1.0, noise=0.1),
                "dist": power_law(width, init, -0.5, noise=0.1),
                "drift_train": power_law(width, init, -1.0, noise=0.1), "loss_initial": 1.0,
                "loss_final": 0.1}

    monkeypatch.setattr(ntk_drift, "measure", fake)
    res = ntk_drift.run(tmp_path, quick=True, widths=WIDTHS, inits=4, x_min=256)
    assert res["rates"]["drift"]["x"] == [256, 512, 1024, 2048]
    assert res["drift_verdict"] == CONSISTENT


@pytest.mark.parametrize("lin_rate, verdict", [(-0.5, NOT_CONSISTENT), (-1.0, CONSISTENT)])
def test_linearization_verdict_tells_half_rate_from_the_stated_one(tmp_path, monkeypatch,
                                                                   lin_rate, verdict):
    steps = 10
    t = len(linearization.recorded_steps(steps))

    def fake(width, init, cfg, seed):
        return {"err_lin": power_law(width, init, lin_rate, salt=3),
                "err_inf": power_law(width, init, -0.5, salt=4), "final_train_loss": 1e-3,
                "f": np.zeros((t, 20)).tolist(), "lin": np.zeros((t, 20)).tolist()}

    monkeypatch.setattr(linearization, "one_network", fake)
    res = linearization.run(tmp_path, quick=True, widths=WIDTHS, inits=8, steps=steps,
                            x_min=128)
    assert res["rates"]["linearized"]["stated_rate"] == -1.0
    assert res["linearized_verdict"] == verdict
    assert res["analytic_ntk_verdict"] == CONSISTENT
    assert (tmp_path / "linearization.png").stat().st_size > 10_000


def test_width_sweep_verdict_rejects_the_quarter_rate(tmp_path, monkeypatch):
    # the bound rate m^-1/4 of seed 001 is not the CLT rate m^-1/2 the experiment states
    monkeypatch.setattr(width_sweep, "distance",
                        lambda w, s, x, *a: power_law(w, s % 1000, -0.25, noise=0.2))
    res = width_sweep.run(tmp_path, quick=True, widths=WIDTHS, seeds=8)
    assert res["rate"]["stated_rate"] == -0.5
    assert res["distance_verdict"] == NOT_CONSISTENT
    lo, hi = res["rate"]["interval"]
    assert lo < -0.25 < hi


def test_width_sweep_figure_ticks_are_the_widths_and_do_not_overlap(tmp_path, monkeypatch):
    from ntkit.experiments.common import pyplot
    from ntkit.experiments.rates import width_axis

    plt = pyplot()
    widths = width_sweep.FULL["widths"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(widths, np.asarray(widths, float) ** -0.5, "o")
    width_axis(ax, widths)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert [t.get_text().replace(",", "") for t in labels] == [str(w) for w in widths]
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))     # no two labels touch
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)


def _same_units(a, b):
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def test_ntk_drift_sharded_and_merged_equals_unsharded(tmp_path):
    tiny = dict(widths=[16, 32, 64], inits=2, steps=3, n_train=4, n_test=4, x_min=16)
    whole = ntk_drift.run(tmp_path / "whole", quick=True, **tiny)
    parts = [ntk_drift.run(tmp_path / "split", quick=True, shard=f"{i}/2", **tiny)
             for i in (1, 2)]
    assert [p["partial"] for p in parts] == [True, True]
    assert parts[0]["units_done"] == 3 and parts[1]["units_done"] == 6
    assert parts[0]["units_total"] == 6
    assert not (tmp_path / "split" / "results.json").exists()
    merged = ntk_drift.run(tmp_path / "split", quick=True, **tiny)
    for key in ("drift_per_init", "init_vs_limit_per_init", "rates", "loss_initial_final"):
        assert _same_units(merged[key], whole[key]), key
    assert (tmp_path / "split" / "ntk_drift.png").exists()


def test_unit_circle_sharded_and_merged_equals_unsharded(tmp_path):
    tiny = dict(widths=[8, 16], inits=[2, 1], steps=2, n_gamma=5)
    whole = unit_circle.run(tmp_path / "whole", quick=True, **tiny)
    unit_circle.run(tmp_path / "split", quick=True, shard="2/2", **tiny)
    merged = unit_circle.run(tmp_path / "split", quick=True, **tiny)
    assert _same_units(merged["widths"], whole["widths"])
    assert merged["inits_used"] == [2, 1]
    assert [len(merged["widths"][w]["curves_init"]) for w in ("8", "16")] == [2, 1]


def test_unit_circle_states_the_widths_it_used(tmp_path):
    res = unit_circle.run(tmp_path, quick=True, widths=[8, 16], inits=1, steps=1, n_gamma=5)
    assert res["widths_used"] == "8 and 16 (quick configuration)"
    assert res["quick"] is True and res["config"]["dtype"] == "float64"
    assert unit_circle.FULL["widths"] == [500, 10000]   # the paper's widths
    with pytest.raises(ValueError, match="one per width"):
        unit_circle.run(tmp_path / "bad", quick=True, widths=[8, 16], inits=[1, 2, 3])


def test_full_configurations_follow_jacot(tmp_path):
    # Jacot et al. 2018 §6: depth 4, ReLU, W ~ N(0, 1) (W_std = 1), β = 0.1
    for mod in (width_sweep, ntk_drift, linearization, unit_circle):
        assert mod.FULL["depth"] == 4 and mod.FULL["W_std"] == 1.0 and mod.FULL["b_std"] == 0.1
    assert ntk_drift.FULL["steps"] == unit_circle.FULL["steps"] == 200
    assert ntk_drift.FULL["lr"] == unit_circle.FULL["lr"] == 1.0


def test_a_run_with_too_few_widths_reports_numbers_without_a_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(width_sweep, "distance",
                        lambda w, s, x, *a: power_law(w, s % 1000, -0.5))
    res = width_sweep.run(tmp_path, quick=True, widths=[64, 128], seeds=2)
    assert res["rate"]["verdict"] == "not fitted" and "3 widths" in res["rate"]["reason"]
    assert "distance_slope" not in res and len(res["mean_relative_distance"]) == 2
    assert (tmp_path / "width_sweep.png").exists()


def test_width_sweep_quick_run_measures_the_clt_rate(tmp_path):
    # real networks (quick configuration: widths 128 … 2048, 8 inits each, float64): the 95%
    # interval of the fitted exponent contains -1/2 and excludes the bound rate -1/4. Measured:
    # slope -0.514, interval [-0.594, -0.435]; a kernel whose fluctuations shrank like m^-1/4
    # (or not at all) fails here.
    res = width_sweep.run(tmp_path, quick=True)
    assert res["distance_verdict"] == CONSISTENT
    lo, hi = res["rate"]["interval"]
    assert lo < -0.5 < hi and hi < -0.25


def test_activation_option_builds_the_smooth_control_and_names_bad_values():
    import ntkit as nk
    from ntkit.experiments.rates import jacot_mlp

    cfg = dict(ntk_drift.QUICK, activation="erf")
    assert any(isinstance(layer, nk.Erf) for layer in jacot_mlp(8, cfg).layers)
    assert not any(isinstance(layer, nk.Erf) for layer in jacot_mlp(8, ntk_drift.QUICK).layers)
    with pytest.raises(ValueError, match="activation must be one of relu, erf"):
        jacot_mlp(8, dict(cfg, activation="tanh"))


def test_linearization_control_runs_alongside_and_is_judged_apart(tmp_path, monkeypatch):
    steps = 10
    t = len(linearization.recorded_steps(steps))
    seen = []

    def fake(width, init, cfg, seed):   # ReLU falls like m^-1/2, the erf control like m^-1
        seen.append(cfg["activation"])
        rate = -1.0 if cfg["activation"] == "erf" else -0.5
        return {"err_lin": power_law(width, init, rate, salt=3),
                "err_inf": power_law(width, init, -0.5, salt=4), "final_train_loss": 1e-3,
                "f": np.zeros((t, 20)).tolist(), "lin": np.zeros((t, 20)).tolist()}

    monkeypatch.setattr(linearization, "one_network", fake)
    res = linearization.run(tmp_path, quick=True, widths=WIDTHS, inits=8, steps=steps,
                            x_min=128, control="erf")
    assert seen.count("erf") == seen.count("relu") == 40
    assert res["linearized_verdict"] == NOT_CONSISTENT
    assert res["erf_control_linearized_verdict"] == CONSISTENT
    assert res["control"]["rates"]["linearized"]["stated_rate"] == -1.0
    assert (tmp_path / "units" / "erf_w128_i0.json").exists()
    with pytest.raises(ValueError, match="control must be another activation"):
        linearization.run(tmp_path / "bad", quick=True, control="relu")
