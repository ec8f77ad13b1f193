"""Jacot et al. 2018 (seed 002, the poster's "Distribution of the network function at the end of
learning (L=3)"): the outputs of many finite networks at the end of training against two
Gaussian distributions of the infinite-width limit,

- green, the NTK-GP: the law of an infinitely wide network trained to the same step count,
  f₀ ~ GP(0, Σ) (the NNGP) carried by gradient descent with the NTK Θ (Lee et al. 2019,
  section 2.3; ``ntkit.predict.ntk_ensemble``): what the trained networks follow;
- pink, the posterior for the NTK prior: the Bayesian posterior of f ~ GP(0, Θ) given the
  noise-free training data (``ntkit.predict.gp_posterior`` with the NTK as prior kernel). Its
  mean is the NTK-GP's mean at t = ∞ (the poster's "common mean": kernel regression with Θ),
  its band is not the trained networks' one (Jacot et al. section 5).

Does the green band hold the networks? The variance test (``variance_test``): on ``n_check``
fixed inputs away from the plot's grid, the outputs f ∈ R^S of each network are whitened with
the NTK-GP, z = L⁻¹(f − μ) with L Lᵀ = Cov; if the networks follow the NTK-GP, the n·S
numbers z are independent N(0, 1) and Σ z² ~ χ²_{nS}. The ratio Σ z² / (nS) estimates the
factor c of Cov_true = c · Cov; its chi-square interval decides: ``consistent`` when it holds
c = 1, ``not consistent`` when not, ``undetermined`` when it also holds a factor 2 error
(c = 2 or 1/2: too few networks). The same test is run with the NNGP kernel scaled by 2
(which scales the NTK-GP covariance by exactly 2 and leaves its mean) as the test's power
check, and against the pink posterior. The test uses the NTK-GP mean, so a wrong mean fails it
too.

Two configurations, both ReLU nets in the NTK parameterization with W_std = 1, b_std = 0.1
(Jacot's β = 0.1), inputs on the unit circle x = (cos γ, sin γ), full-batch gradient descent on
L = 1/(2N) Σ (f − y)² (N training points; Jacot's cost), learning rate 1.0 for 1000 steps
(neural-tangents' time convention, discrete steps), float64:
- "poster": depth 3 (3 Linear layers, the poster's L = 3), width 100, 200 networks;
- "paper" (Jacot et al. 2018 figure 2): depth 4, widths 50 and 1000, 10 networks each, the
  10th/50th/90th percentiles of the networks against the NTK-GP ones.
The variance test is also run at depth-3 widths 50 and 200 (100 networks each): its factor
should tend to 1 as the width grows (finite-width corrections are O(1/width)).
Departures from the seed: the poster does not list its training points or the number of
networks; four fixed targets at chosen angles and 200 networks are used here. Depth counts
Linear layers (Jacot's L).

The networks are trained in units (``experiments.units``: chunks of 50 networks, one unit per
paper width), so a run resumes and splits with ``shard``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy import stats

from .. import layers as L
from ..predict import gp_posterior, ntk_ensemble
from .common import (one_thread, progress_bar, pyplot, relu_mlp, save_figure, start_run,
                     train_ensemble, unit_circle, write_results)
from .units import Shard, UnitStore

Z80 = 1.2815515655446004          # the 90% quantile of N(0, 1): mean ± Z80·σ holds 80%
TRAIN_ANGLES = np.array([-2.0, -1.2, 0.4, 1.6])
TRAIN_TARGETS = np.array([-0.4, 0.3, 0.6, -0.2])
CHUNK = 50                         # networks per unit of the poster configuration
FULL = {"n_nets": 200, "steps": 1000, "n_test": 81, "n_check": 8, "paper_nets": 10,
        "paper_widths": [50, 1000], "trend_widths": [50, 200], "trend_nets": 100}
QUICK = {"n_nets": 16, "steps": 100, "n_test": 21, "n_check": 8, "paper_nets": 4,
         "paper_widths": [50, 200], "trend_widths": [], "trend_nets": 0}


def relu_net(depth: int, width: int) -> L.Sequential:
    """``depth`` Linear layers (depth - 1 hidden ReLU layers of ``width``), W_std=1, b_std=0.1."""
    return relu_mlp(width, depth - 1, W_std=1.0, b_std=0.1)


def check_angles(n_check: int, margin: float = 0.4) -> np.ndarray:
    """The ``n_check`` inputs of the variance test: angles spread evenly over the part of the
    circle at least ``margin`` radians from every training angle (near a training point the
    predicted variance vanishes and the test would weigh finite-width residue there most)."""
    cand = np.linspace(-np.pi, np.pi, 720, endpoint=False)
    gap = np.abs((cand[:, None] - TRAIN_ANGLES[None, :] + np.pi) % (2 * np.pi) - np.pi).min(1)
    far = cand[gap >= margin]
    return far[(np.arange(n_check) * len(far)) // n_check + len(far) // (2 * n_check)]


# -- the variance test ---------------------------------------------------------------------------
def variance_test(outputs: np.ndarray, mean: np.ndarray, cov: np.ndarray, level: float = 0.95,
                  alternatives: Sequence[float] = (0.5, 2.0)) -> Dict:
    """Are the rows of ``outputs`` (n, S), independent draws, samples of N(``mean``, ``cov``)?

    With L the Cholesky factor of ``cov`` (S, S), z = L⁻¹(f − mean) has n·S independent N(0, 1)
    entries under the hypothesis, so T = Σ z² ~ χ²_{nS}. If instead Cov_true = c·cov (and the
    mean is right), T/c ~ χ²_{nS}: the interval for c at ``level`` is
    [T / χ²_{nS}((1+level)/2), T / χ²_{nS}((1−level)/2)]. Verdict: "consistent" when it holds 1
    (and none of ``alternatives``), "undetermined" when it holds 1 and an alternative factor,
    "not consistent" when it excludes 1. JSON-ready dict.
    """
    f = np.asarray(outputs, dtype=float)
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    if f.ndim != 2 or mean.shape != f.shape[1:] or cov.shape != (f.shape[1], f.shape[1]):
        raise ValueError(f"outputs must be (n, S) with mean (S,) and cov (S, S); got "
                         f"{f.shape}, {mean.shape}, {cov.shape}")
    if f.shape[0] < 2 or not np.all(np.isfinite(f)):
        raise ValueError("the variance test needs at least 2 rows of finite outputs")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError("cov is not positive definite: choose test inputs where the "
                         "predicted variance is positive (away from the training points)"
                         ) from None
    z = np.linalg.solve(chol, (f - mean).T)
    total, dof = float((z ** 2).sum()), int(z.size)
    alpha = (1.0 - level) / 2.0
    low = total / stats.chi2.ppf(1.0 - alpha, dof)
    high = total / stats.chi2.ppf(alpha, dof)
    holds = [a for a in alternatives if low <= a <= high]
    if not low <= 1.0 <= high:
        verdict = "not consistent"
        reason = f"the {level:.0%} interval [{low:.3f}, {high:.3f}] for the variance factor " \
                 f"excludes 1"
    elif holds:
        verdict = "undetermined"
        reason = f"the {level:.0%} interval [{low:.3f}, {high:.3f}] holds 1 and the factor(s) " \
                 f"{holds}: more networks are needed"
    else:
        verdict = "consistent"
        reason = f"the {level:.0%} interval [{low:.3f}, {high:.3f}] holds 1 and excludes " \
                 f"{list(alternatives)}"
    return {"variance_factor": total / dof, "interval": [low, high], "level": level,
            "chi2": total, "dof": dof, "networks": int(f.shape[0]), "inputs": int(f.shape[1]),
            "p_value": float(2 * min(stats.chi2.cdf(total, dof), stats.chi2.sf(total, dof))),
            "verdict": verdict, "reason": reason}


# -- one configuration ----------------------------------------------------------------------------
def _inputs(n_test: int, n_check: int):
    gammas = np.linspace(-np.pi, np.pi, n_test)
    return gammas, unit_circle(np.concatenate([gammas, check_angles(n_check)]))


def train_nets(depth: int, width: int, seeds: Sequence[int], steps: int, n_test: int,
               n_check: int, lr: float = 1.0) -> np.ndarray:
    """Outputs (len(seeds), n_test + n_check) of networks trained ``steps`` steps."""
    _, x = _inputs(n_test, n_check)
    t64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return train_ensemble(relu_net(depth, width), (2,), list(seeds),
                          t64(unit_circle(TRAIN_ANGLES)), t64(TRAIN_TARGETS[:, None]), t64(x),
                          learning_rate=lr, steps=steps, loss="mean")[:, 0, :, 0]


def predictions(depth: int, steps: int, n_test: int, n_check: int, lr: float = 1.0) -> Dict:
    """NTK-GP at ``steps`` (mean, covariance) and the NTK-prior posterior on the grid and the
    check inputs (infinite width: independent of the width)."""
    arch = relu_net(depth, 1)
    _, x = _inputs(n_test, n_check)
    xtr, y = unit_circle(TRAIN_ANGLES), TRAIN_TARGETS[:, None]
    kdd, ktd, ktt = arch.kernel(xtr), arch.kernel(x, xtr), arch.kernel(x)
    gp = ntk_ensemble(kdd, y, ktd, ktt.nngp, t=steps, learning_rate=lr, loss="mean",
                      discrete=True, compute_cov=True)
    prior = gp_posterior(kdd.ntk, y, ktd.ntk, ktt.ntk)
    return {"mean": gp.mean[:, 0].numpy(), "cov": gp.covariance.numpy(),
            "ntk_prior_mean": prior.mean[:, 0].numpy(), "ntk_prior_cov": prior.covariance.numpy()}


def compare(outs: np.ndarray, pred: Dict, n_test: int, **info) -> Dict:
    """Bands, percentiles and the variance tests of trained outputs ``outs`` against ``pred``."""
    grid = slice(0, n_test)
    chk = slice(n_test, None)
    std = np.sqrt(np.clip(np.diag(pred["cov"]), 0, None))
    pstd = np.sqrt(np.clip(np.diag(pred["ntk_prior_cov"]), 0, None))
    mean = pred["mean"]
    q10, q50, q90 = np.percentile(outs[:, grid], [10, 50, 90], axis=0)
    cc = np.ix_(range(n_test, len(mean)), range(n_test, len(mean)))
    tests = {
        "ntk_gp": variance_test(outs[:, chk], mean[chk], pred["cov"][cc]),
        "ntk_gp_nngp_kernel_x2": variance_test(outs[:, chk], mean[chk], 2 * pred["cov"][cc]),
        "ntk_prior_posterior": variance_test(outs[:, chk], pred["ntk_prior_mean"][chk],
                                             pred["ntk_prior_cov"][cc]),
    }
    lo, hi = (mean - Z80 * std)[grid], (mean + Z80 * std)[grid]
    inside = (outs[:, grid] >= lo) & (outs[:, grid] <= hi)
    return dict(info, outs=outs[:, grid], mean=mean[grid], lo=lo, hi=hi,
                plo=(pred["ntk_prior_mean"] - Z80 * pstd)[grid],
                phi=(pred["ntk_prior_mean"] + Z80 * pstd)[grid], q10=q10, q50=q50, q90=q90,
                variance_tests=tests, fraction_inside_80=float(inside.mean()),
                rel_err_empirical_mean=float(np.linalg.norm(outs[:, grid].mean(0) - mean[grid])
                                             / np.linalg.norm(mean[grid])),
                rel_err_empirical_std=float(np.linalg.norm(outs[:, grid].std(0) - std[grid])
                                            / np.linalg.norm(std[grid])))


# -- figures -------------------------------------------------------------------------------------
def _plot_band(ax, r, gammas, title: str, show_nets: int = 0, prior: bool = True):
    ax.fill_between(gammas, r["lo"], r["hi"], color="tab:green", alpha=0.25,
                    label="NTK-GP 80% band (Lee et al. 2019)")
    if prior:
        ax.fill_between(gammas, r["plo"], r["phi"], facecolor="none", edgecolor="deeppink",
                        hatch="///", lw=0.0, alpha=0.6, label="posterior for the NTK prior, 80%")
        ax.plot(gammas, r["plo"], color="deeppink", lw=0.8)
        ax.plot(gammas, r["phi"], color="deeppink", lw=0.8)
    ax.plot(gammas, r["mean"], color="tab:green", lw=2, label="NTK-GP mean")
    for k in range(min(show_nets, r["outs"].shape[0])):
        ax.plot(gammas, r["outs"][k], color="tab:blue", lw=0.5, alpha=0.3)
    ax.plot(gammas, r["q50"], color="tab:blue", lw=1.5, label="networks: median")
    ax.plot(gammas, r["q10"], "--", color="tab:blue", lw=1, label="networks: 10th/90th pct")
    ax.plot(gammas, r["q90"], "--", color="tab:blue", lw=1)
    ax.scatter(TRAIN_ANGLES, TRAIN_TARGETS, color="k", zorder=5, label="training points")
    ax.set_xlabel("γ (input (cos γ, sin γ))")
    ax.set_ylabel("f(x) after training")
    ax.set_title(title, fontsize=8)


def _plot_trend(ax, rows):
    """The variance factor of the NTK-GP test against the width (depth 3), with intervals."""
    w = [r["width"] for r in rows]
    t = [r["variance_tests"]["ntk_gp"] for r in rows]
    v = np.array([x["variance_factor"] for x in t])
    err = np.abs(np.array([x["interval"] for x in t]).T - v)
    ax.errorbar(w, v, yerr=err, fmt="o-", capsize=3, color="tab:green",
                label="variance factor (95% interval)")
    ax.axhline(1.0, color="k", lw=0.8, label="infinite width: 1")
    ax.axhline(2.0, color="gray", ls=":", lw=0.8, label="a factor-2 error")
    ax.axhline(0.5, color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(w)
    ax.set_xticklabels([str(x) for x in w])
    ax.minorticks_off()
    ax.set_xlabel("width (depth 3)")
    ax.set_ylabel("Σ z² / (n S)  (networks vs NTK-GP)")
    ax.set_title("variance test against the width", fontsize=8)
    ax.legend(fontsize=7)


def _test_line(t: Dict) -> str:
    lo, hi = t["interval"]
    return f"variance factor {t['variance_factor']:.2f} [{lo:.2f}, {hi:.2f}]: {t['verdict']}"


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    """Both configurations; writes ntk_gp_poster.png, ntk_gp_paper.png and results.json.

    options: n_nets (poster, default 200; quick 16), steps (1000; quick 100), n_test (grid
    points, 81; quick 21), n_check (inputs of the variance test, 8), paper_nets (10 per width,
    as Jacot et al.; quick 4), paper_widths ((50, 1000); quick (50, 200)), trend_widths and
    trend_nets (the variance test at more depth-3 widths: (50, 200) with 100 networks each;
    quick none). ``shard`` "I/K":
    train only this process's units (no figure, no results.json); without it the missing units
    are trained and everything assembled.
    """
    cfg, out_dir, start = start_run(out_dir, quick, options, QUICK, FULL)
    n_nets, steps, n_test = int(cfg["n_nets"]), int(cfg["steps"]), int(cfg["n_test"])
    n_check, paper_nets = int(cfg["n_check"]), int(cfg["paper_nets"])
    paper_widths = [int(w) for w in cfg["paper_widths"]]
    chunks = [list(range(c, min(c + CHUNK, n_nets))) for c in range(0, n_nets, CHUNK)]
    trend_widths, trend_nets = [int(w) for w in cfg["trend_widths"]], int(cfg["trend_nets"])
    keys = ([f"poster-{i}" for i in range(len(chunks))] + [f"paper-w{w}" for w in paper_widths]
            + [f"trend-w{w}" for w in trend_widths])

    def unit(key: str):
        kind, _, which = key.partition("-")
        if kind == "poster":
            seeds = [seed * 100003 + i for i in chunks[int(which)]]
            return train_nets(3, 100, seeds, steps, n_test, n_check).tolist()
        if kind == "trend":
            seeds = [(seed + 2) * 100003 + i for i in range(trend_nets)]
            return train_nets(3, int(which[1:]), seeds, steps, n_test, n_check).tolist()
        seeds = [(seed + 1) * 100003 + i for i in range(paper_nets)]
        return train_nets(4, int(which[1:]), seeds, steps, n_test, n_check).tolist()

    store = UnitStore(out_dir, "ntk-gp", cfg, seed)
    with one_thread():
        done = store.compute(keys, unit, shard=Shard.parse(shard) if shard else None,
                             progress=lambda k: progress_bar(k, "ntk-gp", progress))
    if shard:
        return {"experiment": "ntk-gp", "shard": str(shard), "units_done": len(done),
                "units_total": len(keys), "partial": True}
    gammas = np.linspace(-np.pi, np.pi, n_test)
    poster_outs = np.concatenate([np.asarray(done[f"poster-{i}"]) for i in range(len(chunks))])
    poster_pred = predictions(3, steps, n_test, n_check)
    poster = compare(poster_outs, poster_pred, n_test, depth=3, width=100, n_nets=n_nets)
    trend = [compare(np.asarray(done[f"trend-w{w}"]), poster_pred, n_test, depth=3, width=w,
                     n_nets=trend_nets) for w in trend_widths]
    paper_pred = predictions(4, steps, n_test, n_check)
    paper = [compare(np.asarray(done[f"paper-w{w}"]), paper_pred, n_test, depth=4, width=w,
                     n_nets=paper_nets) for w in paper_widths]
    plt = pyplot()
    tests = poster["variance_tests"]
    if trend:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.0, 4.6),
                                      gridspec_kw={"width_ratios": [2.3, 1]})
        _plot_trend(ax2, sorted(trend + [poster], key=lambda r: r["width"]))
    else:
        fig, ax = plt.subplots(figsize=(7.0, 4.6))
    _plot_band(ax, poster, gammas,
               f"depth 3, width 100, {n_nets} networks, {steps} steps\n"
               f"vs NTK-GP: {_test_line(tests['ntk_gp'])}\n"
               f"vs posterior for the NTK prior: {_test_line(tests['ntk_prior_posterior'])}",
               show_nets=30)
    ax.legend(fontsize=7)
    save_figure(fig, out_dir / "ntk_gp_poster.png", dpi=110)
    fig, axes = plt.subplots(1, len(paper), figsize=(5.5 * len(paper), 4.2), sharey=True)
    for ax, r in zip(np.atleast_1d(axes), paper):
        _plot_band(ax, r, gammas, f"depth 4, width {r['width']}, {r['n_nets']} networks\n"
                                  f"{_test_line(r['variance_tests']['ntk_gp'])}",
                   show_nets=r["n_nets"], prior=False)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    save_figure(fig, out_dir / "ntk_gp_paper.png", dpi=110)
    keep = ("depth", "width", "n_nets", "variance_tests", "fraction_inside_80",
            "rel_err_empirical_mean", "rel_err_empirical_std")
    results = {
        "experiment": "ntk-gp", "quick": quick, "seed": seed,
        "config": {**cfg, "dtype": "float64", "learning_rate": 1.0, "loss": "mean"},
        "setup": "ReLU, NTK parameterization, W_std=1, b_std=0.1, unit-circle inputs, full-batch "
                 "GD on 1/(2N) sum (f-y)^2, lr 1.0; NTK-GP = ntkit.predict.ntk_ensemble "
                 "(discrete=True, loss='mean') at the same step count; posterior for the NTK "
                 "prior = ntkit.predict.gp_posterior(NTK, noise 0)",
        "variance_test": "z = chol(Cov)^-1 (f - mean) on n_check inputs off the grid; "
                         "sum z^2 ~ chi2(n_nets * n_check) if the networks follow the "
                         "prediction; interval for the variance factor c (Cov_true = c Cov)",
        "check_angles": check_angles(n_check).tolist(),
        "train_angles": TRAIN_ANGLES.tolist(), "train_targets": TRAIN_TARGETS.tolist(),
        "poster": {k: poster[k] for k in keep},
        "paper": [{k: r[k] for k in keep} for r in paper],
        "width_trend": [{k: r[k] for k in keep} for r in sorted(trend + [poster],
                                                                 key=lambda r: r["width"])],
        "verdict": tests["ntk_gp"]["verdict"],
        "seconds": time.perf_counter() - start,
        "figures": ["ntk_gp_poster.png", "ntk_gp_paper.png"],
    }
    return write_results(out_dir, results)
