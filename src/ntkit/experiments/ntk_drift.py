"""The NTK during training: how far full-batch gradient descent moves the empirical NTK, by width.

The two curves of Jacot et al.'s poster (seed 002, "Convergence of the NTK in the infinite-width
limit": the NTK at initialization against its limit, and against itself at the end of training),
measured on Jacot et al.'s networks: depth L = 4 (four Linear layers, three hidden ReLU layers of
width m), NTK parameterization with W_std = 1 and b_std = β = 0.1 (Jacot et al. 2018, §6),
trained by full-batch gradient descent at learning rate 1.0 for 200 steps (their §6) on
L = (1/2N) Σ (f(x_i) − y_i)², N = 8 training inputs on the unit sphere of R^4, targets
y = d·x₁x₂. On a fixed batch (the training inputs and 8 test inputs) each initialization gives

    drift(m) = ||Θ_T − Θ_0||_F / ||Θ_0||_F      (how much training moves the kernel),
    dist(m)  = ||Θ_0 − Θ_∞||_F / ||Θ_∞||_F      (distance at init to the limit ``arch.kernel``),

and drift_train, the drift of the training-set Gram matrix H(t) = Θ_t(X, X) alone (the
quantity of seed 001, ||H(t) − H(0)||_F, here relative to ||H(0)||_F).

Rates, fitted over widths m ≥ ``x_min`` with 95% bootstrap intervals over initializations
(``rates.judge``) and judged against the rate the seeds state:
- drift: seed 001 (Arora et al. 2019, citing Lee et al. 2019) states that in practice the change
  of the NTK during training is O(m^-1); the alternative is m^-1/2, the order of the proven
  bounds (Jacot et al. 2018; Lee et al. 2019, Thm 2.1);
- dist: m^-1/2, the central-limit fluctuation of the empirical NTK around its limit (Jacot et al.
  2018, Thm 1 gives the limit); the alternative m^-1/4 is the rate of seed 001's bound for ReLU.
The verdicts come from the intervals (``statistics.rate_verdict``), never from a fixed window.
The full run's numbers are in ``results/ntk-drift/results.json`` (the module states none).

``--activation erf`` runs the same measurement on erf networks (a smooth control: the m^-1
statements for the change of the NTK are derived for smooth activations, e.g. Dyer & Gur-Ari
2020); the full configuration is ReLU, as in the paper.

Departures from the seed: the poster gives no widths, data or number of initializations; the
widths (128 … 4096, fit from 256) and 8 initializations per width are sized to finish in
about ten minutes on two cores, the batch is small (16 inputs) for the same reason; float32
(quick: float64).

The units (one width × one initialization) are kept under ``OUT_DIR/units`` (resumable; split
across processes with ``--shard i/k``, merged by the run without a shard).

    python -m ntkit.experiments.ntk_drift OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ntkit.empirical import empirical_ntk
from ntkit.empirical.lowrank_gd import gradient_descent, to_lowrank
from .common import (pyplot, relative_frobenius, save_figure, sphere_inputs, standalone_main,
                     start_run, write_results)
from .rates import (STATED, flat_summary, jacot_mlp, judge, per_width, rate_panel, run_units,
                    setup_title, timing, unit_key)

FULL = {"widths": [128, 256, 512, 1024, 2048, 4096], "inits": 8, "n_train": 8, "n_test": 8,
        "d": 4, "depth": 4, "activation": "relu", "W_std": 1.0, "b_std": 0.1, "steps": 200,
        "lr": 1.0, "x_min": 256, "dtype": "float32"}
QUICK = {"widths": [64, 128, 256, 512], "inits": 3, "n_train": 8, "n_test": 8, "d": 4,
         "depth": 4, "activation": "relu", "W_std": 1.0, "b_std": 0.1, "steps": 30, "lr": 1.0,
         "x_min": 64, "dtype": "float64"}

def task(n_train: int, n_test: int, d: int, seed: int):
    """(training inputs, targets d·x₁x₂, all inputs: training then test), on the sphere."""
    x = sphere_inputs(n_train + n_test, d, seed + 777)
    y = d * (x[:n_train, 0] * x[:n_train, 1]).unsqueeze(1)
    return x[:n_train], y, x


def measure(width: int, init: int, cfg: Dict, seed: int) -> Dict[str, float]:
    """One unit: drift and dist (module docstring) of one network of ``width`` initialized with
    seed ``seed·1000 + init``, and its training loss before and after."""
    dtype = getattr(torch, cfg["dtype"])
    x_train, y_train, x_all = task(cfg["n_train"], cfg["n_test"], cfg["d"], seed)
    arch = jacot_mlp(width, cfg)
    limit = arch.kernel(x_all, get="ntk").ntk
    net = arch.init((cfg["d"],), seed=seed * 1000 + init, dtype=dtype).eval()
    k0 = empirical_ntk(net, x_all).double()
    lazy = to_lowrank(net, cfg["steps"], cfg["n_train"])
    del net
    loss = gradient_descent(lazy, x_train.to(dtype), y_train.to(dtype), cfg["steps"], cfg["lr"])
    kt = empirical_ntk(lazy, x_all).double()
    n = cfg["n_train"]
    return {"drift": relative_frobenius(kt, k0), "dist": relative_frobenius(k0, limit),
            "drift_train": relative_frobenius(kt[:n, :n], k0[:n, :n]),
            "loss_initial": loss[0], "loss_final": loss[-1]}


def plot(path: Path, widths, samples: Dict, verdicts: Dict, cfg: Dict, quick: bool) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    rate_panel(ax, widths, [
        (samples["drift"], verdicts["drift"], "tab:blue",
         f"after {cfg['steps']} GD steps vs at init", "o"),
        (samples["drift_train"], verdicts["drift_train"], "tab:green",
         "same, training-set Gram matrix H only", "^"),
        (samples["dist"], verdicts["dist"], "tab:orange", "at init vs infinite-width limit", "s")],
        r"relative Frobenius distance $\|\Theta_a - \Theta_b\|_F / \|\Theta_b\|_F$",
        "NTK drift: " + setup_title(cfg, cfg["inits"], quick))
    save_figure(fig, path, dpi=110)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    widths = [int(w) for w in cfg["widths"]]
    inits = int(cfg["inits"])
    keys = [unit_key(w, i) for w in widths for i in range(inits)]
    by_key = {unit_key(w, i): (w, i) for w in widths for i in range(inits)}
    values, partial = run_units(out_dir, "ntk-drift", cfg, seed, keys,
                                lambda k: measure(*by_key[k], cfg, seed), shard, progress)
    if partial is not None:
        return partial
    samples = {name: per_width(values, widths, inits, name)
               for name in ("drift", "dist", "drift_train")}
    verdicts = {"drift": judge(widths, samples["drift"], *STATED["ntk_change"], x_min=cfg["x_min"]),
                "dist": judge(widths, samples["dist"], *STATED["ntk_at_init"], x_min=cfg["x_min"]),
                "drift_train": judge(widths, samples["drift_train"], *STATED["ntk_change"],
                                     x_min=cfg["x_min"])}
    plot(out_dir / "ntk_drift.png", widths, samples, verdicts, cfg, quick)
    result = {"experiment": "ntk-drift", "quick": quick, "config": cfg, "seed": seed,
              "architecture": f"depth-{cfg['depth']} {cfg['activation']} MLP, NTK "
                              f"parameterization, W_std={cfg['W_std']}, b_std={cfg['b_std']}",
              "widths": widths,
              **flat_summary("drift", verdicts["drift"]),
              **flat_summary("dist", verdicts["dist"]),
              **flat_summary("drift_train", verdicts["drift_train"]),
              "rates": verdicts,
              "mean_drift": [float(np.mean(s)) for s in samples["drift"]],
              "mean_init_vs_limit": [float(np.mean(s)) for s in samples["dist"]],
              "drift_per_init": {str(w): s for w, s in zip(widths, samples["drift"])},
              "init_vs_limit_per_init": {str(w): s for w, s in zip(widths, samples["dist"])},
              "drift_train_per_init": {str(w): s for w, s in zip(widths, samples["drift_train"])},
              "loss_initial_final": {str(w): [[values[unit_key(w, i)]["loss_initial"],
                                               values[unit_key(w, i)]["loss_final"]]
                                              for i in range(inits)] for w in widths},
              "figures": ["ntk_drift.png"], "seconds": time.perf_counter() - t0,
              **timing(values)}
    write_results(out_dir, result)
    return result


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {k: r[k] for k in ("drift_slope", "drift_interval",
                                                               "drift_verdict", "dist_slope",
                                                               "dist_interval", "dist_verdict",
                                                               "seconds") if k in r}, argv)


if __name__ == "__main__":
    main()
