"""Optional cross-check: ntkit vs neural-tangents (stax) on fully-connected architectures, float64.

Runs neural-tangents 0.6.5 in its own virtualenv (.peer-venv) through tests/peer/runner.py; the
test is skipped when that venv is absent. One subprocess computes every architecture on
X = [x; y] against itself; ntkit is checked with x2=None on X and with x2 given on (x, y).

Tolerance: 1e-10 relative to each entry (DESIGN.md's bar; floor 1e-3 of the matrix scale),
except pairs whose input correlation is within 1e-5 of ±1 and the diagonal: there
neural-tangents takes arccos of a correlation near ±1 and is only ~1e-8 accurate (measured up
to 1.2e-8 on the diagonal, 4e-9 on antipodal pairs, where the exact ReLU NTK without bias is 0),
so those entries are compared at 1e-7 of the matrix scale. ntkit's own accuracy there is checked
against mpmath in test_layers_dense_closed_forms.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import ntkit as nk
from peer.runner import nt_kernels, peer_available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not peer_available(), reason="neural-tangents venv (.peer-venv) absent")]

# (activation name, ntkit constructor, stax name, stax kwargs)
ACTS = {
    "relu": (nk.ReLU, (), "Relu", {}),
    "leaky": (nk.LeakyReLU, (0.2,), "LeakyRelu", {"alpha": 0.2}),
    "abrelu": (nk.ABReLU, (-0.4, 1.3), "ABRelu", {"a": -0.4, "b": 1.3}),
    "erf": (nk.Erf, (1.2, 0.8, 0.1), "Erf", {"a": 1.2, "b": 0.8, "c": 0.1}),
    "gelu": (nk.GELU, (), "Gelu", {"approximate": False}),
    "sin": (nk.Sin, (1.1, 0.7, 0.3), "Sin", {"a": 1.1, "b": 0.7, "c": 0.3}),
    "identity": (nk.Identity, (), "Identity", {}),
}

# (activation, parameterization, W_std, b_std, widths)
ARCHS = [
    ("relu", "ntk", 1.5, 0.05, [64, 64, 64, 1]),
    ("relu", "standard", 1.4, 0.3, [64, 32, 16, 1]),
    ("relu", "standard", 1.4, None, [48, 1]),
    ("leaky", "ntk", 1.3, None, [64, 64, 1]),
    ("abrelu", "standard", 1.2, 0.0, [32, 64, 1]),
    ("abrelu", "ntk", 1.2, 0.0, [32, 64, 1]),
    ("erf", "ntk", 1.6, 0.2, [64, 64, 64, 1]),
    ("erf", "standard", 1.1, None, [16, 8, 1]),
    ("gelu", "ntk", 1.3, 0.1, [64, 64, 1]),
    ("gelu", "standard", 1.3, 0.0, [64, 64, 1]),
    ("sin", "standard", 1.2, None, [64, 32, 1]),
    ("sin", "ntk", 0.9, 0.4, [64, 64, 1]),
    ("identity", "ntk", 1.1, 0.5, [64, 64, 1]),
]


def _ntkit_arch(act, par, W, b, widths):
    cls, args, _, _ = ACTS[act]
    layers = [nk.Linear(widths[0], W_std=W, b_std=b, parameterization=par)]
    for w in widths[1:]:
        layers += [cls(*args), nk.Linear(w, W_std=W, b_std=b, parameterization=par)]
    return nk.Sequential(*layers)


def _stax_spec(act, par, W, b, widths):
    _, _, name, kw = ACTS[act]
    dense = lambda w: ["Dense", {"args": [w], "kwargs": {"W_std": W, "b_std": b,
                                                         "parameterization": par}}]
    spec = [dense(widths[0])]
    for w in widths[1:]:
        spec += [[name, {"kwargs": kw}], dense(w)]
    return spec


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 10))
    y = rng.normal(size=(6, 10))
    y[0] = x[0] * (1 + 1e-7)  # nearly equal across the sets
    y[1] = -x[1]              # antipodal
    y[2] = x[2]               # exact duplicate
    x[3] = 0.0                # zero row
    return x, y


def _near_mask(X):
    """Pairs where neural-tangents' arccos is ill-conditioned: |input correlation| > 1 - 1e-5
    (nearly equal or antipodal rows) and the diagonal (incl. a zero row with itself, whose
    correlation becomes 1 after a bias)."""
    n = np.linalg.norm(X, axis=1)
    safe = np.where(n > 0, n, 1.0)
    corr = (X @ X.T) / np.outer(safe, safe)
    return (np.abs(corr) > 1 - 1e-5) | np.eye(len(X), dtype=bool)


def test_fc_matches_neural_tangents():
    """All architectures in one test, so that one neural-tangents subprocess serves them all
    (also under pytest-xdist); every failing architecture is reported."""
    x, y = _data()
    X = np.vstack([x, y])
    nx = len(x)
    results = nt_kernels(X, X, [_stax_spec(*a) for a in ARCHS])
    near = _near_mask(X)
    failures = []
    for spec, (nngp_nt, ntk_nt) in zip(ARCHS, results):
        arch = _ntkit_arch(*spec)
        kx = arch.kernel(X)
        kxy = arch.kernel(X[:nx], X[nx:])
        for name, ref in (("nngp", nngp_nt), ("ntk", ntk_nt)):
            for path, got, want, mask in (
                    ("x2=None", getattr(kx, name).numpy(), ref, near),
                    ("x2 given", getattr(kxy, name).numpy(), ref[:nx, nx:], near[:nx, nx:])):
                scale = np.abs(want).max()
                err = np.abs(got - want)
                rel = (err / np.maximum(np.abs(want), 1e-3 * scale))[~mask].max(initial=0)
                # near ±1 correlation: entries may be ~0 (antipodal ReLU), compare to the scale
                near_err = err[mask].max(initial=0) / scale
                if rel >= 1e-10 or near_err >= 1e-7:
                    failures.append(f"{spec} {name} {path}: rel {rel:.2e}, near {near_err:.2e}")
    assert not failures, "\n".join(failures)
