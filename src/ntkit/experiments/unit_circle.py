"""Jacot et al. 2018 (seed 002), "NTK at initialization (L=4)": the NTK on the unit circle.

Θ(x₀, x) for x₀ = (1, 0) and x = (cos γ, sin γ), γ ∈ [-π, π], for depth-4 ReLU networks (four
Linear layers, three hidden of width n) in the NTK parameterization with W_std = 1 and
b_std = β = 0.1, as in the paper; widths 500 and 10,000, ten initializations each, with the
infinite-width limit ``arch.kernel`` drawn over them. The same curves after 200 steps of
full-batch gradient descent at learning rate 1.0 on f*(x) = x₁x₂, with N = 8 training inputs from
N(0, I₂) and the loss L = (1/2N) Σ (f(x_i) - y_i)² (the paper's normalization by the dataset size).
At width 500 the kernel visibly moves during training; at 10,000 it barely does.

Writes ``unit_circle.png`` (left: at initialization, the paper's figure; right: after training)
and ``results.json`` (curves, distances to the limit, relative change during training).

    python -m ntkit.experiments.unit_circle OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import ntkit as nk
from ntkit.empirical import empirical_ntk
from ntkit.empirical.lowrank_gd import gradient_descent, to_lowrank

from .common import (progress_bar, pyplot, relu_mlp, save_figure, standalone_main, start_run,
                     write_results)

FULL = {"widths": [500, 10000], "inits": 10, "depth": 4, "W_std": 1.0, "b_std": 0.1,
        "steps": 200, "lr": 1.0, "n_train": 8, "n_gamma": 121, "dtype": "float32", "first_init": 0}
QUICK = {"widths": [64, 512], "inits": 3, "depth": 4, "W_std": 1.0, "b_std": 0.1,
         "steps": 30, "lr": 1.0, "n_train": 8, "n_gamma": 41, "dtype": "float64", "first_init": 0}


def circle(n_gamma: int):
    gamma = torch.linspace(-math.pi, math.pi, n_gamma, dtype=torch.float64)
    return gamma, torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)


def architecture(width: int, cfg: dict) -> nk.Sequential:
    return relu_mlp(width, cfg["depth"] - 1, W_std=cfg["W_std"], b_std=cfg["b_std"])


def training_set(n: int, seed: int):
    g = torch.Generator().manual_seed(int(seed) + 12345)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, (x[:, 0] * x[:, 1]).unsqueeze(1)


def curves_for_width(width: int, cfg: dict, seed: int, x0, xs, x_train, y_train,
                     show: Optional[bool] = None):
    """Θ(x₀, ·) at init and after training for each initialization: two (inits, n_gamma) arrays."""
    arch = architecture(width, cfg)
    dtype = getattr(torch, cfg["dtype"])
    init, trained, losses = [], [], []
    first = int(cfg["first_init"])  # to split the initializations over processes
    for i in progress_bar(range(first, first + cfg["inits"]), f"width {width}", show):
        net = arch.init((2,), seed=seed * 1000 + i, dtype=dtype).eval()
        init.append(empirical_ntk(net, x0, xs)[0].double())
        lazy = to_lowrank(net, cfg["steps"], x_train.shape[0])
        del net
        loss = gradient_descent(lazy, x_train.to(dtype), y_train.to(dtype), cfg["steps"], cfg["lr"])
        trained.append(empirical_ntk(lazy, x0, xs)[0].double())
        losses.append([loss[0], loss[-1]])
        del lazy
    return torch.stack(init), torch.stack(trained), losses


def plot(path: Path, gamma, limit, curves, cfg) -> None:
    plt = pyplot()

    g = gamma.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, when in zip(axes, ("init", "trained")):
        for c, width in zip(colors, sorted(curves)):
            if when == "trained":  # initial curves faintly, for reference
                for row in curves[width]["init"]:
                    ax.plot(g, row, color=c, lw=0.6, alpha=0.2)
            for j, row in enumerate(curves[width][when]):
                ax.plot(g, row, color=c, lw=0.8, alpha=0.8, ls="-" if when == "init" else "--",
                        label=f"n = {width:,}" if j == 0 else None)
        ax.plot(g, limit.numpy(), color="black", lw=2.2, label=r"n = $\infty$")
        ax.set_xlabel(r"$\gamma$  (x = (cos $\gamma$, sin $\gamma$))")
        ax.set_xlim(-math.pi, math.pi)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel(r"$\Theta(x_0, x)$,  $x_0 = (1, 0)$")
    axes[0].set_title(f"NTK at initialization (L={cfg['depth']}, {cfg['inits']} inits per width)")
    axes[1].set_title(f"after {cfg['steps']} GD steps (lr {cfg['lr']}) on $f^*(x)=x_1x_2$")
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    gamma, xs = circle(cfg["n_gamma"])
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    x_train, y_train = training_set(cfg["n_train"], seed)
    limit = architecture(1, cfg).kernel(x0, xs, get="ntk").ntk[0]
    curves, summary = {}, {}
    for width in cfg["widths"]:
        init, trained, losses = curves_for_width(width, cfg, seed, x0, xs, x_train, y_train,
                                                  progress)
        curves[width] = {"init": init.numpy(), "trained": trained.numpy()}
        ln = torch.linalg.norm(limit)
        summary[str(width)] = {
            "relative_distance_to_limit_init": [float(torch.linalg.norm(r - limit) / ln) for r in init],
            "relative_distance_to_limit_trained": [float(torch.linalg.norm(r - limit) / ln)
                                                   for r in trained],
            "relative_change_during_training": [float(torch.linalg.norm(b - a) / torch.linalg.norm(a))
                                                for a, b in zip(init, trained)],
            "loss_initial_final": losses,
            "curves_init": init.tolist(), "curves_trained": trained.tolist()}
        s = summary[str(width)]
        s["mean_relative_change_during_training"] = float(np.mean(s["relative_change_during_training"]))
    plot(out_dir / "unit_circle.png", gamma, limit, curves, cfg)
    result = {"experiment": "unit-circle", "config": cfg, "seed": seed,
              "gamma": gamma.tolist(), "limit": limit.tolist(), "widths": summary,
              "seconds": time.perf_counter() - t0}
    write_results(out_dir, result, indent=None)
    return result


def merge_runs(out_dir: Path, part_dirs) -> dict:
    """Combine runs over disjoint initializations (``first_init``/``inits`` options, e.g. one
    process per core) into one figure and results.json, as if run in one process."""
    parts = [json.loads((Path(p) / "results.json").read_text()) for p in part_dirs]
    merged = {**parts[0], "config": {**parts[0]["config"], "first_init": 0,
                                     "inits": sum(p["config"]["inits"] for p in parts)},
              "seconds": sum(p["seconds"] for p in parts), "merged_from": [str(p) for p in part_dirs]}
    curves = {}
    for width in parts[0]["widths"]:
        entry = {key: [v for p in parts for v in p["widths"][width][key]]
                 for key in parts[0]["widths"][width] if isinstance(parts[0]["widths"][width][key], list)}
        entry["mean_relative_change_during_training"] = float(
            np.mean(entry["relative_change_during_training"]))
        merged["widths"][width] = entry
        curves[int(width)] = {"init": np.array(entry["curves_init"]),
                              "trained": np.array(entry["curves_trained"])}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(out_dir / "unit_circle.png", torch.tensor(merged["gamma"]), torch.tensor(merged["limit"]),
         curves, merged["config"])
    write_results(out_dir, merged, indent=None)
    return merged


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {w: v["mean_relative_change_during_training"]
                                             for w, v in r["widths"].items()}, argv)


if __name__ == "__main__":
    main()
