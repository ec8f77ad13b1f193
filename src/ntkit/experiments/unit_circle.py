"""Jacot et al. 2018 (seed 002), Fig. 1 "NTK at initialization (L=4)": the NTK on the unit circle.

Θ(x₀, x) for x₀ = (1, 0) and x = (cos γ, sin γ), γ ∈ [−π, π], for depth-4 ReLU networks (four
Linear layers, three hidden of width n) in the NTK parameterization with W_std = 1 and
b_std = β = 0.1, as in the paper (§6), with the infinite-width limit ``arch.kernel`` drawn over
them; then the same curves after 200 steps of full-batch gradient descent at learning rate 1.0
on f*(x) = x₁x₂ (the paper's task), with N = 8 training inputs from N(0, I₂) and the loss
L = (1/2N) Σ (f(x_i) − y_i)². At the small width the kernel visibly moves during training
("inflates"); at the large one it barely does.

Configurations (the figure's title and results.json state the widths actually used):
- full: the paper's widths 500 and 10,000, depth 4, β = 0.1, 200 steps at learning rate 1.0;
  10 initializations at width 500 as in the paper, 9 at width 10,000 (the paper: 10). A
  width-10,000 network reads its two 10,000 × 10,000 weight matrices twice per gradient-descent
  step (about 1.6 GB of memory traffic); its 200 steps took 3.5 to 13 minutes on the loaded
  shared 2-core machine of the kept run, where the tenth did not finish in time (``--inits 10``
  gives the paper's count). The run is long: split it with ``--shard i/k`` or resume it (the
  units are kept). The paper does not give N; 8 is used.
- quick (tests, demo): widths 64 and 512, 3 initializations, 30 steps.

Writes ``unit_circle.png`` (left: at initialization, the paper's figure; right: after training)
and ``results.json`` (curves, distances to the limit, relative change during training). The
units (one width × one initialization) are kept under ``OUT_DIR/units`` (resumable;
``--shard i/k`` splits them across processes, the run without a shard merges).

    python -m ntkit.experiments.unit_circle OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ntkit.empirical import empirical_ntk
from ntkit.empirical.lowrank_gd import gradient_descent, to_lowrank

from .common import pyplot, save_figure, standalone_main, start_run, write_results
from .rates import jacot_mlp, run_units, timing, unit_key

FULL = {"widths": [500, 10000], "inits": [10, 9], "depth": 4, "W_std": 1.0, "b_std": 0.1,
        "steps": 200, "lr": 1.0, "n_train": 8, "n_gamma": 121, "dtype": "float32"}
QUICK = {"widths": [64, 512], "inits": [3, 3], "depth": 4, "W_std": 1.0, "b_std": 0.1,
         "steps": 30, "lr": 1.0, "n_train": 8, "n_gamma": 41, "dtype": "float64"}


def circle(n_gamma: int):
    gamma = torch.linspace(-math.pi, math.pi, n_gamma, dtype=torch.float64)
    return gamma, torch.stack([torch.cos(gamma), torch.sin(gamma)], dim=1)


def training_set(n: int, seed: int):
    g = torch.Generator().manual_seed(int(seed) + 12345)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, (x[:, 0] * x[:, 1]).unsqueeze(1)


def inits_per_width(cfg: Dict) -> List[int]:
    """The number of initializations at each width: ``inits`` is one count for every width or
    one count per width."""
    inits = cfg["inits"]
    counts = [int(inits)] * len(cfg["widths"]) if np.isscalar(inits) else [int(c) for c in inits]
    if len(counts) != len(cfg["widths"]) or min(counts) < 1:
        raise ValueError(f"inits must be one positive count or one per width "
                         f"({len(cfg['widths'])} widths), got {inits!r}")
    return counts


def one_network(width: int, init: int, cfg: dict, seed: int) -> Dict:
    """One unit: Θ(x₀, ·) on the circle at initialization and after training (lists), and the
    training loss before and after."""
    dtype = getattr(torch, cfg["dtype"])
    _, xs = circle(cfg["n_gamma"])
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    x_train, y_train = training_set(cfg["n_train"], seed)
    net = jacot_mlp(width, cfg).init((2,), seed=seed * 1000 + init, dtype=dtype).eval()
    at_init = empirical_ntk(net, x0, xs)[0].double()
    lazy = to_lowrank(net, cfg["steps"], x_train.shape[0])
    del net
    loss = gradient_descent(lazy, x_train.to(dtype), y_train.to(dtype), cfg["steps"], cfg["lr"])
    trained = empirical_ntk(lazy, x0, xs)[0].double()
    return {"init": at_init.tolist(), "trained": trained.tolist(), "loss": [loss[0], loss[-1]]}


def plot(path: Path, gamma, limit, curves, cfg, quick: bool) -> None:
    plt = pyplot()

    g = gamma.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, when in zip(axes, ("init", "trained")):
        # the limit underneath, so that the curves of the wide networks stay visible on it
        ax.plot(g, limit.numpy(), color="black", lw=3.0, alpha=0.6, zorder=1,
                label=r"n = $\infty$")
        for c, width in zip(colors, sorted(curves)):
            if when == "trained":  # initial curves faintly, for reference
                for row in curves[width]["init"]:
                    ax.plot(g, row, color=c, lw=0.6, alpha=0.2)
            rows = curves[width][when]
            for j, row in enumerate(rows):
                ax.plot(g, row, color=c, lw=0.9, alpha=0.85, ls="-" if when == "init" else "--",
                        label=f"n = {width:,} ({len(rows)} inits)" if j == 0 else None,
                        zorder=2)
        ax.set_xlabel(r"$\gamma$  (x = (cos $\gamma$, sin $\gamma$))")
        ax.set_xlim(-math.pi, math.pi)
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi])
        ax.set_xticklabels([r"$-\pi$", r"$-\pi/2$", "0", r"$\pi/2$", r"$\pi$"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    widths = " and ".join(f"{w:,}" for w in sorted(curves))
    which = "quick configuration" if quick else "full configuration"
    axes[0].set_ylabel(r"$\Theta(x_0, x)$,  $x_0 = (1, 0)$")
    axes[0].set_title(f"NTK at initialization, L={cfg['depth']}, β={cfg['b_std']:g}: "
                      f"widths {widths} ({which})", fontsize=10)
    axes[1].set_title(f"after {cfg['steps']} GD steps (lr {cfg['lr']:g}) on $f^*(x)=x_1x_2$",
                      fontsize=10)
    save_figure(fig, path, dpi=100)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    widths = [int(w) for w in cfg["widths"]]
    counts = inits_per_width(cfg)
    by_key = {unit_key(w, i): (w, i) for w, k in zip(widths, counts) for i in range(k)}
    values, partial = run_units(out_dir, "unit-circle", cfg, seed, list(by_key),
                                lambda key: one_network(*by_key[key], cfg, seed), shard,
                                progress)
    if partial is not None:
        return partial
    gamma, xs = circle(cfg["n_gamma"])
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    limit = jacot_mlp(1, cfg).kernel(x0, xs, get="ntk").ntk[0]
    ln = torch.linalg.norm(limit)
    curves, summary = {}, {}
    for w, k in zip(widths, counts):
        units = [values[unit_key(w, i)] for i in range(k)]
        init = torch.tensor([u["init"] for u in units], dtype=torch.float64)
        trained = torch.tensor([u["trained"] for u in units], dtype=torch.float64)
        curves[w] = {"init": init.numpy(), "trained": trained.numpy()}
        change = [float(torch.linalg.norm(b - a) / torch.linalg.norm(a))
                  for a, b in zip(init, trained)]
        summary[str(w)] = {
            "inits": k,
            "relative_distance_to_limit_init": [float(torch.linalg.norm(r - limit) / ln)
                                                for r in init],
            "relative_distance_to_limit_trained": [float(torch.linalg.norm(r - limit) / ln)
                                                   for r in trained],
            "relative_change_during_training": change,
            "mean_relative_change_during_training": float(np.mean(change)),
            "loss_initial_final": [u["loss"] for u in units],
            "curves_init": init.tolist(), "curves_trained": trained.tolist()}
    plot(out_dir / "unit_circle.png", gamma, limit, curves, cfg, quick)
    means = {w: summary[str(w)]["mean_relative_change_during_training"] for w in widths}
    result = {"experiment": "unit-circle", "quick": quick, "config": cfg, "seed": seed,
              "widths_used": " and ".join(f"{w:,}" for w in widths)
                             + (" (quick configuration)" if quick else " (the paper's)"),
              "inits_used": counts,
              **{f"mean_relative_change_n{w}": means[w] for w in widths},
              **{f"mean_distance_to_limit_at_init_n{w}":
                 float(np.mean(summary[str(w)]["relative_distance_to_limit_init"]))
                 for w in widths},
              "gamma": gamma.tolist(), "limit": limit.tolist(), "widths": summary,
              "figures": ["unit_circle.png"], "seconds": time.perf_counter() - t0,
              **timing(values)}
    if len(widths) == 2 and min(means.values()) > 0:
        # descriptive, not a fitted rate (two widths): the rates are judged in ntk-drift
        result["change_exponent_between_the_two_widths"] = float(
            math.log(means[widths[1]] / means[widths[0]]) / math.log(widths[1] / widths[0]))
    write_results(out_dir, result, indent=None)
    return result


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {k: v for k, v in r.items()
                                             if k.startswith("mean_") or k == "seconds"}, argv)


if __name__ == "__main__":
    main()
