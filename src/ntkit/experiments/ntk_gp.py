"""Jacot et al. 2018 (seed 002): the outputs of many finite networks at the end of training
against the NTK-GP, the Gaussian distribution of an infinite ensemble of infinitely wide
networks trained to the same time (Lee et al. 2019 section 2.3, ``ntkit.predict.ntk_ensemble``).

Two configurations of one experiment, both ReLU nets in the NTK parameterization with
W_std = 1, b_std = 0.1 (Jacot's β = 0.1), inputs on the unit circle x = (cos γ, sin γ), full-batch
gradient descent on L = 1/(2N) Σ (f − y)² (N training points; Jacot's cost), learning rate 1.0
for 1000 steps (neural-tangents' time convention, discrete steps):
- "poster": depth 3 (3 Linear layers), width 100, many networks (the poster's "Distribution of
  the network function at the end of learning"): percentiles of the trained networks against
  the NTK-GP mean and 80% band, and the fraction of networks inside the band (0.8 expected);
- "paper" (Jacot et al. 2018 figure 2): depth 4, widths 50 and 1000, four training points on the
  circle, the 10th/50th/90th percentiles of the networks against the NTK-GP ones.
Depth counts Linear layers (Jacot's L). The training targets are fixed values at chosen angles
(the paper does not list them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .. import layers as L
from ..predict import ntk_ensemble
from .common import (one_thread, progress_bar, pyplot, relu_mlp, save_figure, start_run,
                     train_ensemble, unit_circle, write_results)

Z80 = 1.2815515655446004          # the 90% quantile of N(0, 1): mean ± Z80·σ holds 80%
TRAIN_ANGLES = np.array([-2.0, -1.2, 0.4, 1.6])
TRAIN_TARGETS = np.array([-0.4, 0.3, 0.6, -0.2])
FULL = {"n_nets": 200, "steps": 1000, "n_test": 81, "paper_nets": 10, "paper_widths": [50, 1000]}
QUICK = {"n_nets": 12, "steps": 100, "n_test": 21, "paper_nets": 4, "paper_widths": [50, 200]}


def relu_net(depth: int, width: int) -> L.Sequential:
    """``depth`` Linear layers (depth - 1 hidden ReLU layers of ``width``), W_std=1, b_std=0.1."""
    return relu_mlp(width, depth - 1, W_std=1.0, b_std=0.1)


def compare(depth: int, width: int, n_nets: int, steps: int, n_test: int, seed: int,
            lr: float = 1.0) -> Dict:
    """Train ``n_nets`` networks and compute the NTK-GP at the same step count."""
    arch = relu_net(depth, width)
    gammas = np.linspace(-np.pi, np.pi, n_test)
    xtr, xte = unit_circle(TRAIN_ANGLES), unit_circle(gammas)
    y = TRAIN_TARGETS[:, None]
    t64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    outs = train_ensemble(arch, (2,), [seed * 100003 + i for i in range(n_nets)], t64(xtr),
                          t64(y), t64(xte), learning_rate=lr, steps=steps, loss="mean")[:, 0, :, 0]
    kdd, ktd, ktt = arch.kernel(xtr), arch.kernel(xte, xtr), arch.kernel(xte, get="nngp")
    gp = ntk_ensemble(kdd, y, ktd, ktt.nngp, t=steps, learning_rate=lr, loss="mean",
                      discrete=True, compute_cov=True)
    mean = gp.mean[:, 0].numpy()
    std = np.sqrt(np.clip(np.diag(gp.covariance.numpy()), 0, None))
    lo, hi = mean - Z80 * std, mean + Z80 * std
    inside = (outs >= lo) & (outs <= hi)
    q10, q50, q90 = np.percentile(outs, [10, 50, 90], axis=0)
    return dict(depth=depth, width=width, n_nets=n_nets, steps=steps, learning_rate=lr,
                gammas=gammas, outs=outs, mean=mean, lo=lo, hi=hi, q10=q10, q50=q50, q90=q90,
                fraction_inside_80=float(inside.mean()),
                mean_abs_err_median_vs_gp_mean=float(np.abs(q50 - mean).mean()),
                rel_err_empirical_mean=float(np.linalg.norm(outs.mean(0) - mean)
                                             / np.linalg.norm(mean)),
                rel_err_empirical_std=float(np.linalg.norm(outs.std(0) - std)
                                            / np.linalg.norm(std)))


def _plot_band(ax, r, title: str, show_nets: int = 0):
    g = r["gammas"]
    ax.fill_between(g, r["lo"], r["hi"], color="tab:green", alpha=0.25,
                    label="NTK-GP 80% band")
    ax.plot(g, r["mean"], color="tab:green", lw=2, label="NTK-GP mean")
    for k in range(min(show_nets, r["outs"].shape[0])):
        ax.plot(g, r["outs"][k], color="tab:blue", lw=0.5, alpha=0.3)
    ax.plot(g, r["q50"], color="tab:blue", lw=1.5, label="networks: median")
    ax.plot(g, r["q10"], "--", color="tab:blue", lw=1, label="networks: 10th/90th pct")
    ax.plot(g, r["q90"], "--", color="tab:blue", lw=1)
    ax.scatter(TRAIN_ANGLES, TRAIN_TARGETS, color="k", zorder=5, label="training points")
    ax.set_xlabel("γ (input (cos γ, sin γ))")
    ax.set_ylabel("f(x) after training")
    ax.set_title(title, fontsize=9)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    """Both configurations; writes ntk_gp_poster.png, ntk_gp_paper.png and results.json.

    options: n_nets (poster, default 200; quick 12), steps (1000; quick 100),
    n_test (81; quick 21), paper_nets (10 per width, as Jacot et al.; quick 4),
    paper_widths ((50, 1000); quick (50, 200)).
    """
    cfg, out_dir, _ = start_run(out_dir, quick, options, QUICK, FULL)
    n_nets, steps, n_test = int(cfg["n_nets"]), int(cfg["steps"]), int(cfg["n_test"])
    paper_nets = int(cfg["paper_nets"])
    paper_widths = tuple(int(w) for w in cfg["paper_widths"])
    with one_thread():
        runs = [(3, 100, n_nets, seed)] + [(4, w, paper_nets, seed + 1) for w in paper_widths]
        poster, *paper = [compare(depth, width, nets, steps, n_test, s) for depth, width, nets, s
                          in progress_bar(runs, "ntk-gp", progress)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _plot_band(ax, poster, f"depth 3, width 100, {n_nets} networks, {steps} steps: "
                           f"{100 * poster['fraction_inside_80']:.1f}% of outputs inside the "
                           f"80% band", show_nets=30)
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "ntk_gp_poster.png")
    fig, axes = plt.subplots(1, len(paper), figsize=(5.5 * len(paper), 4.0), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), paper):
        _plot_band(ax, r, f"depth 4, width {r['width']}, {r['n_nets']} networks: "
                          f"{100 * r['fraction_inside_80']:.0f}% inside", show_nets=r["n_nets"])
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save_figure(fig, out_dir / "ntk_gp_paper.png")
    keep = ("depth", "width", "n_nets", "steps", "learning_rate", "fraction_inside_80",
            "mean_abs_err_median_vs_gp_mean", "rel_err_empirical_mean", "rel_err_empirical_std")
    results = {
        "experiment": "ntk-gp", "quick": quick, "seed": seed,
        "setup": "ReLU, NTK parameterization, W_std=1, b_std=0.1, unit-circle inputs, full-batch "
                 "GD on 1/(2N) sum (f-y)^2, lr 1.0; NTK-GP = ntkit.predict.ntk_ensemble "
                 "(discrete=True, loss='mean') at the same step count",
        "train_angles": TRAIN_ANGLES.tolist(), "train_targets": TRAIN_TARGETS.tolist(),
        "poster": {k: poster[k] for k in keep},
        "paper": [{k: r[k] for k in keep} for r in paper],
        "figures": ["ntk_gp_poster.png", "ntk_gp_paper.png"],
    }
    return write_results(out_dir, results)
