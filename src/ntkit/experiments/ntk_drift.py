"""The NTK during training: how far full-batch gradient descent moves the empirical NTK, by width.

Depth-4 ReLU networks in the NTK parameterization (W_std=√2, b_std=0.1, three hidden layers of
width n) are trained by full-batch gradient descent on L = (1/2N) Σ (f(x_i) - y_i)², with N
training inputs on the unit sphere of R^d and targets y = d·x₁x₂. On a fixed batch (the training
inputs and as many test inputs) we measure

    drift(n) = ||Θ_T - Θ_0||_F / ||Θ_0||_F      (the kernel moves less as the width grows),
    dist(n)  = ||Θ_0 - Θ_∞||_F / ||Θ_∞||_F      (distance at init to the infinite-width limit),

the two curves of Jacot et al.'s poster (seed 002, "Convergence of the NTK"). Theory: dist is
O(n^-1/2) (fluctuations of the kernel at init, Jacot et al. 2018); drift is at most O(n^-1/2)
(Jacot et al. 2018; Lee et al. 2019) and its time derivative is O(1/n) (Dyer & Gur-Ari 2020),
so its fitted slope lies between -1/2 and -1 (the full run gives about -0.86, and -0.45 for
dist). The learning rate is 1.0, lowered to
1/λ_max(Θ_∞/N) when that is smaller (gradient descent is stable below 2/λ_max).

Writes ``ntk_drift.png`` (log-log, with fitted slopes) and ``results.json``.

    python -m ntkit.experiments.ntk_drift OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ntkit.empirical import empirical_ntk
from ntkit.empirical.lowrank_gd import gradient_descent, to_lowrank
from .common import (fit_loglog, progress_bar, pyplot, relative_frobenius, relu_mlp,
                     save_figure, sphere_inputs, standalone_main, start_run, write_results)

FULL = {"widths": [64, 128, 256, 512, 1024, 2048, 4096], "seeds": 4, "n_train": 16,
        "n_test": 16, "d": 4, "depth": 4, "steps": 200, "dtype": "float32"}
QUICK = {"widths": [64, 256, 1024], "seeds": 2, "n_train": 8, "n_test": 8, "d": 4, "depth": 4,
         "steps": 30, "dtype": "float64"}


def task(n_train: int, n_test: int, d: int, seed: int):
    x = sphere_inputs(n_train + n_test, d, seed + 777)
    y = d * (x[:n_train, 0] * x[:n_train, 1]).unsqueeze(1)
    return x[:n_train], y, x


def learning_rate(limit_train: torch.Tensor) -> float:
    lam = float(torch.linalg.eigvalsh(limit_train / limit_train.shape[0]).max())
    return min(1.0, 1.0 / lam)


def plot(path: Path, widths, drift, dist, fits, cfg) -> None:
    plt = pyplot()

    w = np.asarray(widths, float)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for vals, fit, label, c in ((drift, fits["drift"], "after training vs at init", "tab:blue"),
                                (dist, fits["init_vs_limit"], "at init vs infinite-width limit",
                                 "tab:orange")):
        m = np.array([np.mean(vals[x]) for x in widths])
        s = np.array([np.std(vals[x]) for x in widths])
        ax.errorbar(w, m, yerr=s, fmt="o", color=c, capsize=3,
                    label=f"{label} (slope {fit[0]:.2f})")
        ax.plot(w, np.exp(fit[1]) * w ** fit[0], "-", color=c, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel("relative Frobenius distance of NTKs")
    ax.set_title(f"NTK drift during {cfg['steps']} GD steps (depth {cfg['depth']} ReLU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    dtype = getattr(torch, cfg["dtype"])
    x_train, y_train, x_all = task(cfg["n_train"], cfg["n_test"], cfg["d"], seed)
    limit = relu_mlp(1, cfg["depth"] - 1).kernel(x_all, get="ntk").ntk
    n = cfg["n_train"]
    lr = learning_rate(limit[:n, :n])
    drift, dist, losses = {}, {}, {}
    for width in progress_bar(cfg["widths"], "ntk drift", progress):
        arch = relu_mlp(width, cfg["depth"] - 1)
        drift[width], dist[width], losses[width] = [], [], []
        for s in range(cfg["seeds"]):
            net = arch.init((cfg["d"],), seed=seed * 1000 + s, dtype=dtype).eval()
            k0 = empirical_ntk(net, x_all).double()
            lazy = to_lowrank(net, cfg["steps"], n)
            del net
            loss = gradient_descent(lazy, x_train.to(dtype), y_train.to(dtype), cfg["steps"], lr)
            kt = empirical_ntk(lazy, x_all).double()
            del lazy
            drift[width].append(relative_frobenius(kt, k0))
            dist[width].append(relative_frobenius(k0, limit))
            losses[width].append([loss[0], loss[-1]])
    widths = list(cfg["widths"])
    fits = {"drift": fit_loglog(widths, [np.mean(drift[w]) for w in widths]),
            "init_vs_limit": fit_loglog(widths, [np.mean(dist[w]) for w in widths])}
    plot(out_dir / "ntk_drift.png", widths, drift, dist, fits, cfg)
    result = {"experiment": "ntk-drift", "config": cfg, "seed": seed, "learning_rate": lr,
              "widths": widths,
              "drift_per_seed": {str(w): drift[w] for w in widths},
              "init_vs_limit_per_seed": {str(w): dist[w] for w in widths},
              "mean_drift": [float(np.mean(drift[w])) for w in widths],
              "mean_init_vs_limit": [float(np.mean(dist[w])) for w in widths],
              "loss_initial_final": {str(w): losses[w] for w in widths},
              "fitted_slope_drift": fits["drift"][0],
              "fitted_slope_init_vs_limit": fits["init_vs_limit"][0],
              "theory_slope": {"init_vs_limit": -0.5, "drift": "between -1/2 and -1"},
              "seconds": time.perf_counter() - t0}
    write_results(out_dir, result)
    return result


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {"fitted_slope_drift": r["fitted_slope_drift"],
                                             "mean_drift": r["mean_drift"],
                                             "seconds": r["seconds"]}, argv)


if __name__ == "__main__":
    main()
