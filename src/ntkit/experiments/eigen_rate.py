"""Seed 002 (Jacot et al.'s poster): "learning governed by NTK PCA: conv. rate along v_i ∝ λ_i".
The rate at which a network trained by gradient descent learns each kernel principal direction,
against that direction's eigenvalue: the law says log r_i = log λ_i + const, a slope of 1.

Setup (see ``principal_dynamics``): the first N MNIST training digits, Jacot et al.'s depth-4
ReLU network (W_std = 1, β = 0.1, NTK parameterization), the kernel PCA Θ∞/N = Σ λ_i v_i v_iᵀ
of its limiting NTK, the target f* = a √N (v_1 + … + v_K), full-batch gradient descent on
(1/2N) Σ (f − f*)² at η = 1/λ_1. For each direction i ≤ K and each initialization, the residual
component c_i(t) = ⟨f_t − f*, v_i⟩/√N gives a per-step factor q_i (least squares of
c_i(t+1) ≈ q_i c_i(t) over the steps while the prediction (1 − ηλ_i)^t stays above e^{−3}) and
the rate r_i = (1 − q_i)/η: exactly λ_i for the infinite-width network (any η), e^{−ηr_i t}
the decay in gradient-flow time.

The exponent s of r ∝ λ^s is the least-squares slope of log(mean over inits of r_i) against
log λ_i. Its 95% interval is a percentile bootstrap over initializations, resampled jointly
for all directions (the K rates of one network are measured on the same training run, so the
initialization, not the (init, direction) pair, is the independent unit; otherwise as
``statistics.fit_slope_interval``). The verdict (``statistics.rate_verdict``) compares the
interval with the stated 1, and with the alternative 0 (every direction learned at the same
rate: no spectral bias). Two fits: all K directions (λ_1, nearly constant function, is far above
the rest), and directions 2..K alone.

Departures: N = 256 digits rather than Jacot's 512, widths 512 and 2,048, 80 steps (the
cost of training grows as N × width² × steps, and the rates need widths of a few thousand: at
width 512 on 64 digits the individual rates are off by up to 25%, at 2,048 by up to 8%); float32
networks (the kernel PCA in float64).

Full run (``results/eigen-rate``, float32, 553 s on two cores shared with other jobs, load
about 20): over the 16 directions the slope is 0.988 [0.975, 1.001] (95%) at width 2,048 and
0.987 [0.976, 1.001] at width 512, consistent with 1 (and far from 0); over directions 2..16
alone (λ spans a factor 5) 0.94 [0.88, 1.01] at 2,048 (consistent) and 0.93 [0.89, 0.99] at 512
(not consistent: the finite-width rates scatter by ±10–15% around λ_i).

Writes ``eigen_rate.png`` and ``results.json``; the run is split into units (one width × one
initialization) under ``OUT/units``, resumable and shardable (``shard="i/k"``).

    ntkit experiment eigen-rate [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .common import progress_bar, pyplot, save_figure, standalone_main, start_run, write_results
from .principal_dynamics import kernel_pca, mnist_digits, principal_target, trained_units
from .statistics import SlopeInterval, rate_verdict

FULL = {"n": 256, "depth": 4, "beta": 0.1, "widths": [512, 2048], "inits": 8, "steps": 80,
        "directions": 16, "target_scale": 0.05, "lr_times_lambda1": 1.0, "dtype": "float32"}
QUICK = {"n": 64, "depth": 4, "beta": 0.1, "widths": [512], "inits": 3, "steps": 40,
         "directions": 8, "target_scale": 0.05, "lr_times_lambda1": 1.0, "dtype": "float32"}

STATED, ALTERNATIVE = 1.0, 0.0
SOURCE = "seed 002 (Jacot et al. 2018 poster): conv. rate along v_i ∝ λ_i"


def paired_slope_interval(x, rates, *, level: float = 0.95, n_boot: int = 4000,
                          seed: int = 0) -> SlopeInterval:
    """The exponent s of mean(r) ∝ x^s from ``rates`` (inits, len(x)): the least-squares slope
    of log(mean over inits) against log x, with the percentile-bootstrap interval that
    resamples whole initializations (rows) with replacement. Needs ≥ 3 distinct positive x,
    ≥ 2 initializations and positive mean rates (a ValueError names what is wrong)."""
    x = np.asarray(x, float)
    r = np.asarray(rates, float)
    if r.ndim != 2 or r.shape[1] != x.size:
        raise ValueError(f"rates must be (inits, {x.size}), got shape {r.shape}")
    if x.size < 3 or np.any(x <= 0) or len(np.unique(x)) != x.size:
        raise ValueError(f"need ≥ 3 distinct positive x, got {x.tolist()}")
    if r.shape[0] < 2:
        raise ValueError("a bootstrap over initializations needs at least 2 of them")
    if not np.all(np.isfinite(r)) or np.any(r.mean(axis=0) <= 0):
        raise ValueError(f"mean rates must be positive and finite for a log-log fit, got "
                         f"{r.mean(axis=0).tolist()}")
    u = np.log(x)
    du = u - u.mean()

    def slope(means: np.ndarray) -> np.ndarray:
        v = np.log(np.clip(means, 1e-300, None))
        return ((v - v.mean(axis=-1, keepdims=True)) * du).sum(axis=-1) / (du * du).sum()

    means = r.mean(axis=0)
    s = float(slope(means))
    intercept = float(np.log(means).mean() - s * u.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r.shape[0], size=(n_boot, r.shape[0]))
    boot = slope(r[idx].mean(axis=1))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return SlopeInterval(s, intercept, float(low), float(high), float(level), int(n_boot),
                         x.tolist(), [int(r.shape[0])] * x.size)


def plot(path: Path, cfg: Dict, lam: np.ndarray, lr: float, runs: Dict[int, List[Dict]],
         verdicts: Dict[str, Dict]) -> None:
    plt = pyplot()
    widths = list(cfg["widths"])
    k = int(cfg["directions"])
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.15, 0.8, len(widths)))))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    ax = axes[0]
    lk = lam[:k]
    ax.plot(lk, lk, "k--", lw=1.4, label="stated: r_i = λ_i (slope 1; the n = ∞ network)")
    for w in widths:
        rates = np.asarray([r["rates"] for r in runs[w]])
        a, b = verdicts[str(w)]["all"], verdicts[str(w)]["without_first"]
        ax.errorbar(lk * (1 + 0.02 * widths.index(w)), rates.mean(axis=0),
                    yerr=rates.std(axis=0), fmt="o", ms=4, capsize=2, color=colors[w],
                    label=f"width {w:,}: slope {a['slope']:.3f} [{a['interval'][0]:.3f}, "
                          f"{a['interval'][1]:.3f}]; v_2..v_{k}: {b['slope']:.2f} "
                          f"[{b['interval'][0]:.2f}, {b['interval'][1]:.2f}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ_i of Θ∞/N")
    ax.set_ylabel("measured rate r_i = (1 − q_i)/η")
    ax.set_title(f"rate along v_i vs λ_i, i = 1..{k} (mean ± sd over {cfg['inits']} inits; "
                 f"95% intervals)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[1]
    w = widths[-1]
    shown = sorted({1, 2, max(2, k // 4), max(2, k // 2), k})
    cmap = plt.cm.plasma(np.linspace(0.0, 0.85, len(shown)))
    for color, i in zip(cmap, shown):
        c = np.asarray(runs[w][0]["components"])[:, i - 1]
        t = np.arange(len(c))
        ax.plot(t, np.abs(c / c[0]), "-", color=color, lw=1.5, label=f"v_{i}, width {w:,}")
        ax.plot(t, np.abs(1 - lr * lam[i - 1]) ** t, "--", color=color, lw=1.0)
    ax.plot([], [], "k--", lw=1.0, label="n = ∞: |1 − ηλ_i|^t")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 1.5)
    ax.set_xlabel("gradient-descent step t")
    ax.set_ylabel("|c_i(t) / c_i(0)|")
    ax.set_title("residual components (first init)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"Rate of learning along each NTK principal direction: {cfg['n']} MNIST digits, "
                 f"depth {cfg['depth']} ReLU, β = {cfg['beta']}, η = 1/λ_1 = {lr:.3g}",
                 fontsize=11)
    save_figure(fig, path, dpi=100)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        data_dir=None, shard: Optional[str] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    k = int(cfg["directions"])
    if k < 4:
        raise ValueError(f"directions must be at least 4 (fits over 1..K and 2..K), got {k}")
    if not 0.0 < float(cfg["lr_times_lambda1"]) < 2.0:
        raise ValueError(f"lr_times_lambda1 must lie in (0, 2), got {cfg['lr_times_lambda1']}")
    x, _ = mnist_digits(int(cfg["n"]), data_dir)
    if k >= len(x):
        raise ValueError(f"directions={k} must be fewer than the n={len(x)} digits")
    lam, v = kernel_pca(x, int(cfg["depth"]), float(cfg["beta"]))
    lr = float(cfg["lr_times_lambda1"]) / float(lam[0])
    target = principal_target(v, k, float(cfg["target_scale"]))
    widths = list(cfg["widths"])
    keys = {f"w{w}-s{s}": (w, s, int(cfg["steps"])) for w in widths
            for s in range(int(cfg["inits"]))}
    done, partial = trained_units("eigen-rate", out_dir, cfg, seed, keys, x, target, lam, v,
                                  lr=lr, top=k, shard=shard,
                                  progress=lambda it: progress_bar(it, "eigen-rate", progress))
    if partial is not None:
        return partial
    runs = {w: [done[key] for key, (ww, _, _) in keys.items() if ww == w] for w in widths}
    verdicts, per_width = {}, {}
    for w in widths:
        rates = np.asarray([r["rates"] for r in runs[w]])
        verdicts[str(w)] = {
            "all": rate_verdict(paired_slope_interval(lam[:k], rates, seed=seed), STATED,
                                ALTERNATIVE, SOURCE),
            "without_first": rate_verdict(paired_slope_interval(lam[1:k], rates[:, 1:],
                                                                seed=seed),
                                          STATED, ALTERNATIVE, SOURCE)}
        per_width[str(w)] = {"rates_mean": rates.mean(axis=0).tolist(),
                             "rates_per_init": rates.tolist(),
                             "rate_over_lambda_mean": (rates / lam[:k]).mean(axis=0).tolist(),
                             "loss_initial_final": [[r["loss"][0], r["loss"][-1]]
                                                    for r in runs[w]]}
    plot(out_dir / "eigen_rate.png", cfg, lam, lr, runs, verdicts)
    widest = str(widths[-1])
    out = {"experiment": "eigen-rate", "config": cfg, "seed": seed, "quick": bool(quick),
           "data": f"first {len(x)} MNIST training digits, pixels in [0, 1]",
           "learning_rate": lr, "lambda": lam[:k].tolist(),
           "lambda_normalization": "eigenvalues of Θ∞/N",
           "target": f"f* = {cfg['target_scale']} √N (v_1 + … + v_{k})",
           "rate_definition": "r_i = (1 − q_i)/η, q_i the fitted per-step factor of c_i(t); "
                              "λ_i exactly at infinite width",
           "per_width": per_width, "rates": verdicts,
           "verdict": verdicts[widest]["all"]["verdict"],
           "departure_from_stated": {w: {fit: abs(d[fit]["slope"] - STATED) for fit in d}
                                     for w, d in verdicts.items()},
           "verdict_width": int(widths[-1]),
           "unit_seconds": {key: done[key]["seconds"] for key in keys},
           "seconds": time.perf_counter() - t0}
    write_results(out_dir, out)
    return out


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {
        "slopes": {w: {k: [v["slope"], v["interval"], v["verdict"]] for k, v in d.items()}
                   for w, d in r["rates"].items()}, "seconds": r["seconds"]}, argv)


if __name__ == "__main__":
    main()
