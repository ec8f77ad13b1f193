"""Benchmark: where the time of the ``deep-limits`` experiment goes, per activation, at one
training-set size: the depth recursion on the n × n train-train correlations and on the m × n
test rows (``ntkit.theory.deep_kernels``, blocked as in the experiment and, with
``--whole``, one whole-matrix step per layer for comparison), the solves K⁻¹y (two kernels
per depth; a singular K falls back to the minimum-norm eigendecomposition), and the
baselines (distances, 1-NN, the Hilbert estimate, Bayes). One JSON object on stdout.

    .venv/bin/python benchmarks/deep_limits.py [--n 1000] [--depths 1,2,5,10,20,50,100]
        [--setting d2] [--threads 1] [--whole]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ntkit import theory
from ntkit.experiments import deep_limits as dl


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="n_train = n_test")
    p.add_argument("--depths", default="1,2,5,10,20,50,100")
    p.add_argument("--setting", default="d2", choices=sorted(dl.SETTINGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--whole", action="store_true",
                   help="also time the whole-matrix recursion (one block)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    depths = [int(v) for v in a.depths.split(",")]
    setting = dl.SETTINGS[a.setting]
    rng = np.random.default_rng(0)
    x_tr, y_tr, _ = dl.sample(setting, a.n, 0.4, rng)
    x_te, y_te, p_te = dl.sample(setting, a.n, 0.4, rng)
    rho_tt = torch.from_numpy(x_tr @ x_tr.T)
    rho_st = torch.from_numpy(x_te @ x_tr.T)
    y = torch.from_numpy(y_tr)
    out = {"n_train": a.n, "n_test": a.n, "setting": a.setting, "depths": depths,
           "threads": a.threads, "block": theory.DEEP_BLOCK, "activations": {}}
    t0 = time.perf_counter()
    dist = np.sqrt(np.clip(2 - 2 * x_te @ x_tr.T, 0, None))
    y_tr[np.argmin(dist, axis=1)]
    dl.singular_estimate(dist, y_tr, setting["d"] - 1)
    dl.bayes(p_te, setting, 0.4)
    out["baselines_seconds"] = time.perf_counter() - t0
    for name, act in dl.activations(setting["d"]).items():
        rec = {}
        t0 = time.perf_counter()
        kernels = {depth: (nngp.clone(), ntk.clone())
                   for depth, nngp, ntk in theory.deep_kernels(act, rho_tt, depths)}
        rec["train_recursion_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in theory.deep_kernels(act, rho_st, depths):
            pass
        rec["test_recursion_seconds"] = time.perf_counter() - t0
        if a.whole:
            t0 = time.perf_counter()
            for _ in theory.deep_kernels(act, rho_tt, depths, block=rho_tt.numel()):
                pass
            rec["train_recursion_whole_matrix_seconds"] = time.perf_counter() - t0
        rec["microseconds_per_entry_layer"] = (
            1e6 * (rec["train_recursion_seconds"] + rec["test_recursion_seconds"])
            / (2 * a.n * a.n * max(depths)))
        t0 = time.perf_counter()
        singular = 0
        for nngp, ntk in kernels.values():
            for k in (nngp, ntk):
                singular += dl.dual_coefficients(k, y)[1]
        rec["solves_seconds"] = time.perf_counter() - t0
        rec["solves"] = 2 * len(kernels)
        rec["singular_solves"] = int(singular)
        out["activations"][name] = rec
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
