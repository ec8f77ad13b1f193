"""Near-duplicate training inputs: detection against brute force, the warning from the
estimators' fit, the pairs named by SingularKernelError, and the drop/merge remedies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit.predict import MSEDynamics, NearDuplicateWarning, SingularKernelError
from ntkit.predict.duplicates import (drop_duplicates, kernel_near_duplicates, merge_duplicates,
                                      near_duplicates)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    x[7] = x[3]                          # exact copy
    x[20] = x[11] * (1 + 3e-10)          # relative distance 3e-10
    x[30] = x[11] + 1e-12                # a third member of the same group
    x[33] = x[2] * (1 + 1e-6)            # not a near-duplicate at rtol 1e-8
    return x


def test_near_duplicates_match_brute_force():
    x = _data()
    rtol = 1e-8
    brute = []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            d = np.linalg.norm(x[i] - x[j]) / max(np.linalg.norm(x[i]), np.linalg.norm(x[j]))
            if d <= rtol:
                brute.append((i, j))
    found = near_duplicates(x, rtol, block=16)
    assert [(i, j) for i, j, _ in found] == brute == [(3, 7), (11, 20), (11, 30), (20, 30)]
    assert [(i, j) for i, j, _ in near_duplicates(x, 1e-5)][:1] == [(2, 33)]


def test_estimator_fit_warns_naming_the_pairs():
    x = _data()
    y = np.arange(len(x)) % 2
    with pytest.warns(NearDuplicateWarning, match=r"\(3, 7"):
        nk.NTKClassifier(diag_reg=1e-6).fit(x, y)


def test_singular_kernel_error_names_the_duplicates():
    x = _data()
    k = nk.Sequential(nk.Linear(8), nk.ReLU(), nk.Linear(1)).kernel(torch.from_numpy(x)).ntk
    pairs = kernel_near_duplicates(k)
    assert (3, 7) in [(i, j) for i, j, _ in pairs]
    with pytest.raises(SingularKernelError, match=r"\(3, 7: kernel distance"):
        MSEDynamics(k, torch.ones(len(x), dtype=torch.float64)).predict(None)


def test_drop_and_merge():
    x = _data()
    y = np.arange(len(x), dtype=float)
    xd, yd, kept = drop_duplicates(x, y)
    assert len(xd) == len(x) - 3 and 7 not in kept and 20 not in kept and 30 not in kept
    assert near_duplicates(xd) == []
    xm, ym, groups = merge_duplicates(x, y)
    assert len(xm) == len(x) - 3
    assert ym[list(np.flatnonzero(groups == np.arange(len(x)))).index(11)] == pytest.approx(
        (11 + 20 + 30) / 3)
