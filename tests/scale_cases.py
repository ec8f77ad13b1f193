"""Shared cases of the ntkit.scale tests: a small ReLU MLP, seeded inputs, a two-process
LocalCluster fixture (import ``client`` into a test module to use it)."""
import numpy as np
import pytest

import ntkit as nk

W0, B0, W1, B1 = 1.5, 0.1, 1.3, 0.05


def mlp(w1=W1):
    return nk.Sequential(nk.Linear(64, W_std=W0, b_std=B0), nk.ReLU(),
                         nk.Linear(1, W_std=w1, b_std=B1))


def inputs(n, seed, d=6):
    return np.random.default_rng(seed).standard_normal((n, d))


@pytest.fixture(scope="module")
def client():
    """A real LocalCluster of two single-threaded worker processes."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c
