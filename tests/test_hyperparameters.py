"""Hyperparameters that are NaN, infinite or meaningless are refused when the layer is made,
with an error naming the layer, the argument and the value."""
from __future__ import annotations

import math

import pytest
import torch

import ntkit as nk
from ntkit import theory

NAN, INF = float("nan"), float("inf")

BAD = [
    (lambda: nk.Linear(1, W_std=NAN), "Linear: W_std"),
    (lambda: nk.Linear(1, W_std=INF), "Linear: W_std"),
    (lambda: nk.Linear(1, W_std=-1.0), "Linear: W_std"),
    (lambda: nk.Linear(1, b_std=-0.1), "Linear: b_std"),
    (lambda: nk.Linear(1, b_std=NAN), "Linear: b_std"),
    (lambda: nk.Linear(1, W_std="big"), "Linear: W_std"),
    (lambda: nk.Linear(0), "Linear: out_features"),
    (lambda: nk.Linear(-3), "Linear: out_features"),
    (lambda: nk.Linear(2.5), "Linear: out_features"),
    (lambda: nk.Linear(NAN), "Linear: out_features"),
    (lambda: nk.Linear(True), "Linear: out_features"),
    (lambda: nk.Conv2d(0), "Conv2d: out_channels"),
    (lambda: nk.Conv2d(4, W_std=NAN), "Conv2d: W_std"),
    (lambda: nk.Conv2d(4, b_std=-1.0), "Conv2d: b_std"),
    (lambda: nk.Erf(a=NAN), "Erf: a"),
    (lambda: nk.Erf(b=INF), "Erf: b"),
    (lambda: nk.Sin(c=NAN), "Sin: c"),
    (lambda: nk.Elementwise(torch.tanh, tol=NAN), "Elementwise: tol"),
    (lambda: nk.Elementwise(torch.tanh, tol=2.0), "Elementwise: tol"),
    (lambda: nk.Elementwise(torch.tanh, max_terms=10), "Elementwise: max_terms"),
    (lambda: nk.Elementwise(torch.tanh, degree=1), "Elementwise: degree"),
    (lambda: theory.HermitePolynomial([0, NAN]), "HermitePolynomial"),
    (lambda: theory.PhiOpt(INF), "PhiOpt"),
]


@pytest.mark.parametrize("make,name", BAD, ids=[b[1] + f"#{i}" for i, b in enumerate(BAD)])
def test_bad_hyperparameters_refused(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_valid_edge_values_accepted():
    assert nk.Linear(512.0, W_std=0.0, b_std=None).out_features == 512
    assert nk.Linear(1, W_std=2, b_std=0).b_std == 0.0
    assert nk.Conv2d(3, W_std=math.sqrt(2), b_std=None).W_std == math.sqrt(2)
    assert nk.Erf(a=-1.0).a == -1.0          # a, b, c are coefficients, not scales


@pytest.mark.parametrize("make", [lambda: nk.LeakyReLU(float("nan")), lambda: nk.ABReLU(0.0, float("inf")),
                                  lambda: nk.ABReLU("x", 1.0)])
def test_relu_family_slopes_must_be_finite(make):
    with pytest.raises(ValueError, match="finite real number"):
        make()
