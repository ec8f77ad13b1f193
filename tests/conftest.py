"""Test-wide settings.

Under pytest-xdist (``make test`` runs ``-n 2`` on 2 cores) every worker would start as many
torch threads as there are cores; two workers x two threads oversubscribe the machine and
small parallel regions then wait on preempted threads (measured ~20x slowdowns). One torch
thread per worker avoids that.
"""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
