"""Test-wide settings.

Under pytest-xdist (``make test`` runs ``-n 2`` on 2 cores) every worker would start as many
torch threads as there are cores; two workers x two threads oversubscribe the machine and
small parallel regions then wait on preempted threads (measured ~20x slowdowns). One torch
thread per worker avoids that.
"""
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems (thread-pool overhead dominates them on a
    shared machine, also outside xdist); restores the previous count afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global torch and numpy random state, whatever ran
    before it in the same worker: a failure reproduces when the test is rerun alone."""
    import numpy as np
    torch.manual_seed(0)
    np.random.seed(0)
    yield
