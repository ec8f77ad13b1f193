"""Quick runs of the experiments of issue 3 (width-sweep, unit-circle, ntk-drift): they write
their figure and results.json, and their numbers show what the theory says."""
import json

import pytest

from ntkit.experiments import get


pytestmark = pytest.mark.usefixtures("one_thread")


def test_width_sweep_quick(tmp_path):
    # smaller than QUICK (whose slope is asserted in test_empirical.py): outputs only
    res = get("width-sweep")(tmp_path, quick=True, widths=[64, 128, 256], seeds=2, x_min=64)
    assert (tmp_path / "width_sweep.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["widths"] == [64, 128, 256] and saved["rate"]["stated_rate"] == -0.5
    assert saved["rate"]["verdict"] in ("consistent", "not consistent", "undetermined")
    assert res["mean_relative_distance"][2] < res["mean_relative_distance"][0]


def test_unit_circle_quick(tmp_path):
    res = get("unit-circle")(tmp_path, quick=True)
    assert (tmp_path / "unit_circle.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["limit"]) == len(saved["gamma"]) == res["config"]["n_gamma"]
    narrow, wide = (res["widths"][str(w)] for w in res["config"]["widths"])
    # the kernel moves during training, much less at the larger width (lazy training)
    assert wide["mean_relative_change_during_training"] < \
        0.5 * narrow["mean_relative_change_during_training"]
    # training reduced the loss for every initialization
    assert all(final < initial for initial, final in wide["loss_initial_final"])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    assert mean(wide["relative_distance_to_limit_init"]) < \
        mean(narrow["relative_distance_to_limit_init"])


def test_ntk_drift_quick(tmp_path):
    res = get("ntk-drift")(tmp_path, quick=True)
    assert (tmp_path / "ntk_drift.png").stat().st_size > 10_000
    drift = res["mean_drift"]
    assert drift[-1] < drift[0]  # the NTK moves less for wider networks
    # both distances shrink with width; with 3 inits the intervals are wide (about ±0.25), so
    # only the sign of the slope is asserted here (the rates are judged in the full run)
    assert res["rates"]["drift"]["interval"][1] < 0
    assert res["rates"]["dist"]["interval"][1] < 0
    # training reduced the loss of every network
    assert all(final < initial for pairs in res["loss_initial_final"].values()
               for initial, final in pairs)
