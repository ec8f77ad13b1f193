"""Benchmark: exact activation kernels (Hermite series, the default) against the former fixed
Gauss–Hermite defaults (Tanh degree 64, Sigmoid 48, Elementwise 32), cost and accuracy.

Architecture: Linear(W_std=1.5, b_std=0.1) -> [φ -> Linear(W_std=1.5, b_std=0.1)] x 3 (the
issue's case), inputs N(0, I_d)/√d·√q scaled so that the first-layer variances spread over
[1, 4] (d = 32). For each activation and n it prints the seconds of the NNGP+NTK (x1 against
itself) and the largest error relative to the matrix's largest entry, on the off-diagonal
entries and on the diagonal separately, against a reference computed by the Hermite series at
tol = 1e-15 with up to 4096 terms. One JSON object on stdout.

    .venv/bin/python benchmarks/activation_kernels.py [--sizes 200 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

import ntkit as nk
from _timing import median_time

W, B, DEPTH, D = 1.5, 0.1, 3, 32

ACTIVATIONS = {
    "Tanh": (lambda **kw: nk.Tanh(**kw), 64),
    "Sigmoid": (lambda **kw: nk.Sigmoid(**kw), 48),
    "Elementwise(softplus)": (lambda **kw: nk.Elementwise(torch.nn.functional.softplus, **kw), 32),
}


def arch(act) -> nk.Sequential:
    layers = [nk.Linear(512, W_std=W, b_std=B)]
    for _ in range(DEPTH):
        layers += [act, nk.Linear(512, W_std=W, b_std=B)]
    return nk.Sequential(*layers)


def inputs(n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, D))
    target = rng.uniform(1.0, 4.0, size=n)           # first-layer variance W²|x|²/d + b²
    x *= np.sqrt((target - B * B) / (W * W) * D / (x * x).sum(1))[:, None]
    return torch.from_numpy(x)


def errors(k, ref) -> dict:
    out = {}
    for name in ("nngp", "ntk"):
        a, r = getattr(k, name).numpy(), getattr(ref, name).numpy()
        scale = np.abs(r).max()
        off = ~np.eye(len(a), dtype=bool)
        out[name] = {"max_rel_offdiag": float(np.abs(a - r)[off].max() / scale),
                     "max_rel_diag": float((np.abs(np.diag(a) - np.diag(r)) / np.abs(np.diag(r))).max())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    results = {"config": {"W_std": W, "b_std": B, "depth": DEPTH, "d": D,
                          "first_layer_variance": [1.0, 4.0], "threads": torch.get_num_threads()},
               "runs": []}
    for name, (make, old_degree) in ACTIVATIONS.items():
        for n in args.sizes:
            x = inputs(n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = arch(make(tol=1e-15) if name != "Elementwise(softplus)" else
                           nk.Elementwise(torch.nn.functional.softplus, tol=1e-15,
                                          max_terms=4096)).kernel(x)
            entry = {"activation": name, "n": n}
            for label, act in (("hermite_default", make()), (f"gauss_hermite_{old_degree}",
                                                             make(degree=old_degree))):
                seconds, k = median_time(lambda: arch(act).kernel(x), args.repeats, slow_after=30)
                entry[label] = {"seconds": seconds, "errors": errors(k, ref)}
            entry["speedup_vs_gauss_hermite"] = (entry[f"gauss_hermite_{old_degree}"]["seconds"]
                                                 / entry["hermite_default"]["seconds"])
            results["runs"].append(entry)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
