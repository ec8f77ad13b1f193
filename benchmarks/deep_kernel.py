"""Benchmark: kernels of very deep fully-connected networks (the per-layer power-of-two scale,
``KernelState.log2_scale``) and what the per-layer scale bookkeeping costs.

Architecture: [Linear(W_std=2, b_std=0.1), φ] x L, Linear(W_std=2, b_std=0.1), φ = ReLU or Erf
(W_std=1 for Erf), n inputs of dimension 3, NNGP+NTK of x against itself with
``normalize=True``. For each (φ, L, n) it prints the seconds, the microseconds per layer
application, the kernel's log2_scale, and the seconds spent in ``KernelState.renormalized``
(profiled separately; the profiler inflates both). One JSON object on stdout.

    .venv/bin/python benchmarks/deep_kernel.py [--depths 1000 10000] [--sizes 4 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats

import torch

import ntkit as nk
from ntkit.engine import KernelOptions
from _timing import median_time


def arch(name: str, depth: int) -> nk.Sequential:
    act, w = (nk.ReLU(), 2.0) if name == "ReLU" else (nk.Erf(), 1.0)
    return nk.Sequential(*[nk.Linear(1, W_std=w, b_std=0.1), act] * depth,
                         nk.Linear(1, W_std=w, b_std=0.1))


def renormalize_seconds(fn) -> float:
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats
    return sum(v[3] for k, v in stats.items() if k[2] in ("renormalized",))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 256])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (tiny matrices: 1 avoids thread-pool overhead)")
    args = p.parse_args()
    rows = []
    for name in ("ReLU", "Erf"):
        for depth in args.depths:
            for n in args.sizes:
                x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
                net = arch(name, depth)
                opts = KernelOptions(threads=args.threads)
                run = lambda: net.kernel(x, normalize=True, options=opts)  # noqa: E731
                seconds, k = median_time(run, args.repeats, slow_after=5.0)
                rows.append({"activation": name, "depth": depth, "n": n, "seconds": seconds,
                             "us_per_layer": 1e6 * seconds / (2 * depth + 1),
                             "log2_scale": k.log2_scale,
                             "finite": bool(torch.isfinite(k.nngp).all()
                                            and torch.isfinite(k.ntk).all()),
                             "renormalize_seconds_profiled": renormalize_seconds(run)})
    print(json.dumps({"benchmark": "deep_kernel", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
