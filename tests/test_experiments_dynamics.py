"""Quick runs of the training-dynamics experiments (real training of finite networks against the
closed forms of ntkit.predict); each checks the files and the effect the seed predicts.
All runs are seeded, hence deterministic. (ntk-gp, two-layer-sigmoid and lazy-training are
tested in test_experiments_gp.py.)"""
import json

import pytest

from ntkit import experiments


pytestmark = pytest.mark.usefixtures("one_thread")


def _files(out, names):
    for name in names:
        assert (out / name).stat().st_size > 1000
    return json.loads((out / "results.json").read_text())


def test_linearization_error_small_and_shrinks_with_width(tmp_path):
    res = experiments.get("linearization")(tmp_path, quick=True, widths=[64, 256, 1024],
                                           inits=2, steps=40)
    saved = _files(tmp_path, ["linearization.png"])
    assert saved["widths"] == res["widths"]
    narrow, _, wide = res["widths"]
    # the net follows its own linearization (empirical NTK): error small, shrinking with width
    assert wide["rel_err_linearized"] < 0.05
    assert wide["rel_err_linearized"] < 0.5 * narrow["rel_err_linearized"]
    # the infinite-width prediction is further away than the own linearization, and improves too
    assert wide["rel_err_analytic_ntk"] > wide["rel_err_linearized"]
    assert wide["rel_err_analytic_ntk"] < narrow["rel_err_analytic_ntk"]
    assert saved["rates"]["linearized"]["stated_rate"] == -1.0
    assert wide["final_train_loss"] < 1e-3

