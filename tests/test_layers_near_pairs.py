"""The first differences of the ReLU kernel's F = s − θc that carry nearly equal images through
pooling (ntkit.layers.near_pairs), against mpmath at 50 digits: exact to rounding relative to
the difference itself, where subtracting the two values loses everything."""
import mpmath
import numpy as np
import pytest
import torch

from ntkit.layers.near_pairs import _first_difference


def _F(qa, qb, c):
    s = mpmath.sqrt(qa * qb - c * c)
    return s - mpmath.atan2(s, c) * c


@pytest.mark.parametrize("scale", [1e-3, 1e-7, 1e-11])
def test_first_difference_against_mpmath(scale):
    rng = np.random.default_rng(3)
    n = 40
    qa = rng.uniform(0.5, 2.0, n)
    qb = rng.uniform(0.5, 2.0, n)
    rho = rng.uniform(-0.95, 0.95, n)
    c0 = rho * np.sqrt(qa * qb)
    dqb = scale * rng.uniform(-1, 1, n) * qb
    dc = scale * rng.uniform(-1, 1, n) * np.sqrt(qa * qb)
    got = _first_difference(*(torch.tensor(v) for v in (qa, qb, c0, dqb, dc))).numpy()
    with mpmath.workdps(50):
        for i in range(n):
            a, b, c, db, d = (mpmath.mpf(float(v[i])) for v in (qa, qb, c0, dqb, dc))
            ref = _F(a, b + db, c + d) - _F(a, b, c)
            assert abs(got[i] - float(ref)) <= 1e-13 * abs(float(ref)) + 1e-300, (scale, i)
    # the naive difference of the two values is off by far more at small increments
    if scale <= 1e-7:
        naive = []
        for i in range(n):
            f = lambda b_, c_: np.sqrt(qa[i] * b_ - c_ * c_) - np.arctan2(
                np.sqrt(qa[i] * b_ - c_ * c_), c_) * c_
            naive.append(f(qb[i] + dqb[i], c0[i] + dc[i]) - f(qb[i], c0[i]))
        rel = np.abs(np.array(naive) - got) / np.abs(got)
        assert rel.max() > 1e-9
