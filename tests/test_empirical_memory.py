"""Memory bound and call settings of the empirical NTK: the block size the budget allows
(closed form), peak memory of a default-budget call in a fresh process (the per-example
Jacobians of all examples would not fit; the blocked computation must), the progress bar, and
the intra-op thread limit restored after a call."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ntkit.empirical import empirical_ntk
from ntkit.empirical import memory, threads

ROOT = Path(__file__).resolve().parents[1]


def test_block_size_is_the_largest_that_fits():
    """b·(3F + T) + b²·t ≤ budget, checked against a brute-force scan over b."""
    for feat, trans, tile, budget, n in [(1e6, 5e5, 4, 2 ** 30, 10 ** 5), (40e6, 0, 4, 2 ** 31, 1000),
                                         (10.0, 3.0, 400.0, 10 ** 6, 10 ** 4), (1e9, 1e9, 8, 10, 50)]:
        def fits(b):
            return b * (3 * feat + trans) + b * b * tile <= budget

        best = max([b for b in range(1, n + 1) if fits(b)], default=1)
        assert memory.block_size(feat, trans, tile, budget, n) == best
        # x2=None: one block of all n holding its features `copies` times, when that fits
        for copies in (1.0, 2.0):
            whole = n * (copies * feat + trans) + n * n * tile <= budget
            assert memory.block_size(feat, trans, tile, budget, n, copies) == (
                n if whole else best)
    assert memory.block_size(1e6, 0, 4, 10 ** 8 + 4 * 10 ** 4, 100, 1.0) == 100  # 3F: 33
    assert memory.block_size(1e6, 0, 4, 10 ** 8 + 4 * 10 ** 4, 100) == 33


def test_default_budget_is_capped():
    b = memory.default_budget()
    assert 64 * 2 ** 20 <= b <= memory.DEFAULT_CAP


SCRIPT = r"""
import json, resource, sys, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from ntkit.empirical import empirical_ntk
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(1000, 1000), nn.Tanh(), nn.Linear(1000, 1))  # 1.0 M params
x = torch.randn(200, 1000)
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
k = empirical_ntk(model, x, implementation="jacobian", memory_budget=192 * 2 ** 20, threads=1,
                  progress=False)
with open("/proc/self/status") as f:  # VmHWM: this image's peak (ru_maxrss can carry the
    peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM")][0]  # parent's)
# reference entries: two per-example gradients by autograd
def grad(i):
    model.zero_grad()
    model(x[i:i + 1]).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])
ref = [float(grad(i) @ grad(j)) for i, j in [(0, 0), (3, 150), (199, 7)]]
got = [float(k[i, j]) for i, j in [(0, 0), (3, 150), (199, 7)]]
print(json.dumps({"base": base, "peak": peak, "ref": ref, "got": got}))
"""


def test_blocked_jacobian_peak_memory_in_a_fresh_process():
    """200 examples x 1.0 M parameters: all per-example Jacobians take 800 MB (float32), more
    than the unblocked call's peak; with a 192 MB budget the call must stay within 500 MB above
    the memory before it (the budget plus the allocator's slack: 1.8x measured)."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "src")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["peak"] - res["base"] < 500, (res, proc.stderr[-3000:])
    for g, r in zip(res["got"], res["ref"]):
        assert math.isclose(g, r, rel_tol=1e-4), (g, r)


def test_progress_bar_and_thread_limit_restored(capsys):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    before = torch.get_num_threads()
    empirical_ntk(model, x, batch_size=2, progress=True, threads=1)
    assert "empirical_ntk" in capsys.readouterr().err  # tqdm writes to stderr
    assert torch.get_num_threads() == before
    empirical_ntk(model, x, batch_size=2, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="threads"):
        empirical_ntk(model, x, threads=0)


def test_idle_cores_within_the_affinity():
    idle = threads.idle_cores()
    if idle is not None:  # Linux
        assert 1 <= idle <= len(os.sched_getaffinity(0))
    assert 1 <= threads.auto_threads() <= torch.get_num_threads()


def test_a_kernel_larger_than_memory_is_refused_before_any_work():
    model = nn.Linear(2, 100)
    x = torch.zeros(1, 2).expand(10 ** 6, 2)  # 10^12 x 10^4 entries in "full" mode
    with pytest.raises(MemoryError, match="the kernel itself needs"):
        empirical_ntk(model, x, mode="full")


CONV_SCRIPT = r"""
import json, resource, sys, torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from ntkit.empirical import empirical_ntk
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16 * 16, 10))
x = torch.randn(300, 3, 16, 16)
with open("/proc/self/statm") as f:
    base = int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
k = empirical_ntk(model, x, implementation="structured", memory_budget=64 * 2 ** 20, threads=1,
                  progress=False)
with open("/proc/self/status") as f:
    peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM")][0]
def grads(i):  # (10, P): per-output gradients of example i by autograd
    rows = []
    for c in range(10):
        model.zero_grad()
        model(x[i:i + 1])[0, c].backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)
pairs = [(0, 0), (3, 150), (299, 7)]
ref = [float((grads(i) * grads(j)).sum(1).mean()) for i, j in pairs]
got = [float(k[i, j]) for i, j in pairs]
print(json.dumps({"base": base, "peak": peak, "ref": ref, "got": got}))
"""


def test_blocked_structured_conv_peak_memory_in_a_fresh_process():
    """Structured derivatives of a CNN (10 outputs) on 300 images: kept features ~1.4 MB per
    example, ~400 MB for one block of all; with a 64 MB budget the call must stay within 200 MB
    above the memory before it (blocks sized by the structured memory model; 3x slack as above)."""
    proc = subprocess.run([sys.executable, "-c", CONV_SCRIPT, str(ROOT / "src")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["peak"] - res["base"] < 200, (res, proc.stderr[-3000:])
    for g, r in zip(res["got"], res["ref"]):
        assert math.isclose(g, r, rel_tol=1e-4), (g, r)
