"""Benchmark: fully-connected NNGP+NTK, depth-3 ReLU, d = 784, ntkit vs neural-tangents.

Prints one JSON object: per (dtype, n, x2 given / x2=None) the seconds and kernel entries per
second of ntkit and of neural-tangents (run side by side in the same invocation through
.peer-venv when it exists), their ratio, and the floor on this machine: the X·Xᵀ product plus
one read+write pass over the NNGP and NTK matrices per layer (memory-bound elementwise work).

    .venv/bin/python benchmarks/fc_kernel.py [--sizes 2000 10000] [--repeats 3] [--no-peer]
        [--data normal|mnist]

``--data mnist``: x1 the first n MNIST training digits, x2 the next n (scaled to [0, 1], from
../shared/data/mnist next to the checkout), instead of standard normal inputs; the native
C++ path is turned off by NTKIT_NATIVE=0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from _timing import median_time

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".peer-venv" / "bin" / "python"
D, DEPTH = 784, 3


def arch():
    layers = []
    for _ in range(DEPTH):
        layers += [nk.Linear(512, W_std=1.5, b_std=0.05), nk.ReLU()]
    return nk.Sequential(*layers, nk.Linear(1, W_std=1.5, b_std=0.05))


def floor_seconds(x1, x2, repeats):
    """X·Xᵀ product + per layer one pass reading and writing two n1 x n2 matrices."""
    other = x1 if x2 is None else x2
    gemm = median_time(lambda: x1 @ other.T, repeats)[0]
    a = torch.empty(x1.shape[0], other.shape[0], dtype=x1.dtype)
    a.fill_(1.0)
    b = a.clone()
    one_pass = median_time(lambda: (a.mul_(1.0000001), b.add_(a)), repeats)[0]
    passes = DEPTH + 1
    if x2 is None:  # one triangle is enough
        return (gemm + passes * one_pass) / 2 + 0.0, gemm, one_pass
    return gemm + passes * one_pass, gemm, one_pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--data", choices=["normal", "mnist"], default="normal")
    args = p.parse_args()
    net = arch()
    rng = np.random.default_rng(0)
    result = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
              "arch": f"depth-{DEPTH} ReLU FC, W_std=1.5, b_std=0.05, d={D}", "data": args.data,
              "native": os.environ.get("NTKIT_NATIVE", "1"), "cases": {}}
    digits = None
    if args.data == "mnist":
        from ntkit.data.mnist import load_mnist
        digits = load_mnist(ROOT.parent / "shared" / "data" / "mnist", dtype=np.float64).x_train
    peer = {}
    if PEER.exists() and not args.no_peer and digits is None:
        cfg = json.dumps({"sizes": args.sizes, "dtypes": args.dtypes, "repeats": args.repeats,
                          "d": D, "depth": DEPTH})
        proc = subprocess.run([str(PEER), str(Path(__file__).with_name("peer") / "nt_fc_kernel.py"), cfg],
                              capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode == 0:
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            result["peer_error"] = proc.stderr[-2000:]
    for dt in args.dtypes:
        tdt = getattr(torch, dt)
        for n in args.sizes:
            if digits is None:
                x1 = torch.as_tensor(rng.normal(size=(n, D)), dtype=tdt)
                x2 = torch.as_tensor(rng.normal(size=(n, D)), dtype=tdt)
            else:
                x1, x2 = (torch.as_tensor(digits[k * n:(k + 1) * n], dtype=tdt) for k in (0, 1))
            for mode in ("x2", "x2=None"):
                other = x2 if mode == "x2" else None
                t = median_time(lambda: net.kernel(x1, other), args.repeats)[0]
                floor, gemm, one_pass = floor_seconds(x1, other, args.repeats)
                key = f"{dt}/{n}/{mode}"
                case = {"ntkit_s": t, "entries_per_s": n * n / t, "floor_s": floor,
                        "gemm_s": gemm, "elementwise_pass_s": one_pass,
                        "ntkit_over_floor": t / floor}
                if key in peer:
                    case["neural_tangents_s"] = peer[key]
                    case["speedup_vs_neural_tangents"] = peer[key] / t
                result["cases"][key] = case
                print(key, json.dumps(case), file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
