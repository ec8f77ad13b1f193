"""Seed 000 (Radhakrishnan, Belkin & Uhler, PNAS 2023): what infinitely wide networks become as
depth L grows, on data on the unit sphere.

Data: two classes, prior P(y = +1) = 0.4; class +1 from Dirichlet(1, 2), class -1 from
Dirichlet(2, 1), projected to the unit circle (d = 2); and d = 3 with Dirichlet(.5, .5, 2.5)
vs Dirichlet(2.5, .1, .5), projected to the unit sphere. For each activation, normalized to unit
variance (``ntkit.theory.deep_architecture``: no biases):
  * ReLU (A ≠ 0: predicted limit the majority vote);
  * h₂ + h₃ (normalized Hermite polynomials; A = A' = 0: predicted limit 1-nearest-neighbour);
  * erf (A = 0 ≠ A': a singular kernel, α = -4 log Ã'/log B̃ ≈ 0.89);
  * φ_opt for that d (eq. (32), α = d),
the NNGP and NTK classifiers sgn(k(x, X) K⁻¹ y) at each depth (``ntkit.theory.deep_kernels``,
all depths in one pass; K⁻¹ through ``ntkit.predict.MSEDynamics`` at t = ∞, the minimum-norm
limit where K is singular to working precision), next to the majority
vote, 1-NN, the singular-kernel estimates sgn Σ yᵢ |x - xᵢ|^(-a) with a = α (the predicted
limit) and a = d - 1 (Hilbert weights on the (d-1)-dimensional sphere), and the Bayes
classifier from the known densities (the Dirichlet densities at p = x/|x|₁; the Jacobian of the
projection is common to both classes and cancels).

Outputs ``deep_limits.png`` (accuracy and agreement with the predicted limit against L, one
row per d) and ``results.json``: accuracies, agreements, and per activation and kernel the
depth from which agreement with the predicted limit stays at or above 95% over the deeper
depths run (null if the deepest is below). ReLU approaches the majority vote only at very large depth: its
normalized dual has ψ'(1) = B̃ = 1, so correlations approach 1 only polynomially in L (in the
quick run its classifier stays at the 1-NN-like accuracy up to L = 100). For h₂ + h₃ the
off-diagonal kernel values shrink doubly exponentially (ψ(ρ) = (ρ² + ρ³)/2) and underflow
float64 past L of a few tens: a prediction whose sign the underflowed kernel values (and
rounding) could change is "undetermined" (``undetermined``): reported as a fraction per depth,
never counted as right or wrong; accuracies and agreements are over the determined points
(null when none), depths with undetermined points are drawn as x marks on the bottom edge of
the figure and do not count toward the 95% agreement depth. Memory: one n_train² matrix at a time plus
chunks of test rows (the full configuration, n = 10,000, needs ~6 GB). Time
(``benchmarks/deep_limits.py``, n = 1,000, one core, float64, on a loaded machine): the depth
recursion, advanced in cache-sized blocks through all the layers between requested depths
(``theory.deep_kernels``), costs about 0.28 s of CPU per layer per 10⁶ kernel entries for the
four activations together (0.07 ReLU, 0.13 h₂ + h₃, 0.035 erf, 0.04 φ_opt; ReLU was 0.7 with
one whole-matrix step per layer), ~8 CPU-hours per setting at the full configuration (2·10⁸
train and test entries, 500 layers). The solves then dominate: 2 per depth and activation,
most K singular to working precision (a Cholesky attempt, then the minimum-norm
eigendecomposition), ~40 s per activation and 8 depths at n = 1,000, growing like n³ (~16
CPU-hours per setting at n = 10,000). results/deep-limits holds a reduced run (its
results.json says which).

``--diag-reg R`` adds a ridge R·mean(diag K) (the remedy for near-duplicate training points:
at n = 1,000 on the circle K is singular to working precision at several depths, and its
pseudo-inverse then discards directions that carry the labels).

    ntkit experiment deep-limits [--quick] [--n-train N --n-test M --depths 1,10,100]
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

import ntkit as nk
from ntkit import theory
from ntkit.experiments.common import (progress_bar, save_figure, standalone_main, start_run,
                                      write_results)
from ntkit.predict import MSEDynamics, SingularKernelWarning

SETTINGS = {
    "d2": {"d": 2, "pos": [1.0, 2.0], "neg": [2.0, 1.0]},
    "d3": {"d": 3, "pos": [0.5, 0.5, 2.5], "neg": [2.5, 0.1, 0.5]},
}
FULL = {"settings": ["d2", "d3"], "n_train": 10000, "n_test": 10000, "prior": 0.4, "diag_reg": 0.0,
        "depths": [1, 2, 3, 5, 10, 20, 50, 100, 200, 300, 500]}
QUICK = {"settings": ["d2", "d3"], "n_train": 300, "n_test": 300, "prior": 0.4, "diag_reg": 0.0,
         "depths": [1, 2, 5, 10, 20, 50, 100]}


def activations(d: int) -> Dict[str, nk.Layer]:
    return {"relu": nk.ReLU(), "h2+h3": theory.HermitePolynomial([0, 0, 1, 1]),
            "erf": nk.Erf(), "phi_opt": theory.PhiOpt(d)}


def sample(setting: dict, n: int, prior: float, rng: np.random.Generator):
    """(x (n, d) on the unit sphere, y (n,) in {+1, -1}, p (n, d) on the simplex)."""
    y = np.where(rng.random(n) < prior, 1.0, -1.0)
    p = np.empty((n, setting["d"]))
    pos = y > 0
    p[pos] = rng.dirichlet(setting["pos"], int(pos.sum()))
    p[~pos] = rng.dirichlet(setting["neg"], int((~pos).sum()))
    p = np.clip(p, 1e-300, None)
    p /= p.sum(1, keepdims=True)
    return p / np.linalg.norm(p, axis=1, keepdims=True), y, p


def log_dirichlet(p: np.ndarray, alpha) -> np.ndarray:
    from scipy.special import gammaln
    a = np.asarray(alpha)
    return gammaln(a.sum()) - gammaln(a).sum() + ((a - 1) * np.log(p)).sum(1)


def bayes(p: np.ndarray, setting: dict, prior: float) -> np.ndarray:
    score = (math.log(prior) + log_dirichlet(p, setting["pos"])
             - math.log(1 - prior) - log_dirichlet(p, setting["neg"]))
    return np.where(score >= 0, 1.0, -1.0)


def singular_estimate(dist: np.ndarray, y: np.ndarray, power: float) -> np.ndarray:
    """sgn Σ_i y_i |x - x_i|^(-power), evaluated stably in the log domain (a test point equal to
    a training point takes that point's label)."""
    logw = -power * np.log(np.maximum(dist, 1e-300))
    logw -= logw.max(1, keepdims=True)
    return np.where((np.exp(logw) * y[None, :]).sum(1) >= 0, 1.0, -1.0)


def first_reaching(depths: List[int], values: List[float], level: float = 0.95):
    """The smallest depth from which the values stay >= level at every deeper depth run (None
    if the deepest is below): agreement is not monotone in L at small depths."""
    found = None
    for depth, v in zip(reversed(depths), reversed(values)):
        if v < level:
            break
        found = depth
    return found


def dual_coefficients(k: torch.Tensor, y: torch.Tensor, diag_reg: float = 0.0):
    """(α = K⁻¹ y, whether K was singular): K⁻¹ is the minimum-norm (pseudo-)inverse where K is
    singular to working precision (smooth kernels on a circle; near-duplicate training points
    under a deep singular kernel). ``diag_reg``: a ridge relative to the mean diagonal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SingularKernelWarning)
        alpha = MSEDynamics(k, y, on_singular="warn", diag_reg=diag_reg,
                            diag_reg_relative=True).coefficients(None)
    return alpha, any(issubclass(w.category, SingularKernelWarning) for w in caught)


#: the smallest normal float64: a kernel value below it has underflowed (is 0 or subnormal)
TINY = float(np.finfo(np.float64).tiny)


def undetermined(k: torch.Tensor, alpha: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """(m,) bool: test points whose predicted sign is not determined by the computed kernel.

    The score s = Σᵢ k(x, xᵢ) αᵢ is computed from kernel values of which those below the smallest
    normal float64 (``TINY``) have underflowed: their true values could be anything in
    (-TINY, TINY) (h₂ + h₃ shrinks off-diagonal values doubly exponentially, so deep rows are
    partly or wholly underflowed). A sign is determined when |s| exceeds what those entries
    and the rounding of the sum could change: Σ_{i underflowed} TINY·|αᵢ| + n·ε·Σᵢ|k αᵢ|.
    Undetermined points are reported as such, never counted as right or wrong."""
    abs_alpha = alpha.abs()
    lost = (k.abs() < TINY).to(k.dtype) @ abs_alpha * TINY
    rounding = (k.abs() @ abs_alpha) * (k.shape[1] * float(np.finfo(np.float64).eps))
    return score.abs() <= lost + rounding


def deep_classifiers(act, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, depths,
                     chunk: int = 2048, diag_reg: float = 0.0):
    """{depth: {"nngp"|"ntk": (predictions (m,) with NaN where undetermined (``undetermined``),
    singular)}} for sgn k(x, X) K⁻¹ y: the train-train recursion first (one n × n matrix at a
    time, α kept per depth), then the test rows in chunks (memory O(n² + chunk·n) whatever the
    depths)."""
    y = torch.from_numpy(y_tr)
    alphas = {}
    for depth, nngp, ntk in theory.deep_kernels(act, torch.from_numpy(x_tr @ x_tr.T), depths):
        alphas[depth] = {"nngp": dual_coefficients(nngp, y, diag_reg),
                         "ntk": dual_coefficients(ntk, y, diag_reg)}
    scores = {depth: {k: np.empty(len(x_te)) for k in ("nngp", "ntk")} for depth in alphas}
    for lo in range(0, len(x_te), chunk):
        rho = torch.from_numpy(x_te[lo:lo + chunk] @ x_tr.T)
        for depth, nngp, ntk in theory.deep_kernels(act, rho, depths):
            for kname, k in (("nngp", nngp), ("ntk", ntk)):
                alpha = alphas[depth][kname][0]
                score = k @ alpha
                score[undetermined(k, alpha, score)] = 0.0
                scores[depth][kname][lo:lo + chunk] = score.numpy()
    return {depth: {k: (np.where(v > 0, 1.0, np.where(v < 0, -1.0, np.nan)),
                        alphas[depth][k][1]) for k, v in by_kernel.items()}
            for depth, by_kernel in scores.items()}


def determined_rate(pred: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """Fraction of the determined predictions (not NaN) equal to ``reference``; None if none."""
    ok = ~np.isnan(pred)
    return float((pred[ok] == reference[ok]).mean()) if ok.any() else None


def run_setting(name: str, cfg: dict, seed: int) -> dict:
    setting = SETTINGS[name]
    rng = np.random.default_rng(seed + (0 if name == "d2" else 1000))
    x_tr, y_tr, _ = sample(setting, cfg["n_train"], cfg["prior"], rng)
    x_te, y_te, p_te = sample(setting, cfg["n_test"], cfg["prior"], rng)
    dist = np.sqrt(np.clip(2 - 2 * x_te @ x_tr.T, 0, None))
    majority = np.full(len(y_te), 1.0 if y_tr.sum() >= 0 else -1.0)
    nearest = y_tr[np.argmin(dist, axis=1)]
    d = setting["d"]
    baselines = {"majority": majority, "1-nn": nearest, "bayes": bayes(p_te, setting, cfg["prior"]),
                 f"hilbert(d-1={d - 1})": singular_estimate(dist, y_tr, d - 1)}
    out = {"d": d, "baseline_accuracy": {k: float((v == y_te).mean()) for k, v in baselines.items()},
           "activations": {}}
    for act_name, act in activations(d).items():
        limit = theory.deep_limit(act)
        if limit.kind == "majority":
            predicted, label = majority, "majority"
        elif limit.kind == "nearest-neighbour":
            predicted, label = nearest, "1-nn"
        else:
            predicted = singular_estimate(dist, y_tr, limit.alpha)
            label = f"singular(alpha={limit.alpha:.3g})"
        entry = {"limit": limit.kind, "alpha": limit.alpha, "predicted_classifier": label,
                 "predicted_accuracy": float((predicted == y_te).mean()),
                 "moments_normalized": vars(limit.moments), "depths": [],
                 "nngp": {"accuracy": [], "agreement": [], "undetermined": [], "singular": []},
                 "ntk": {"accuracy": [], "agreement": [], "undetermined": [], "singular": []}}
        for depth, by_kernel in deep_classifiers(act, x_tr, y_tr, x_te, cfg["depths"],
                                                     diag_reg=cfg["diag_reg"]).items():
            entry["depths"].append(depth)
            for kname, (pred, singular) in by_kernel.items():
                entry[kname]["singular"].append(singular)
                entry[kname]["accuracy"].append(determined_rate(pred, y_te))
                entry[kname]["agreement"].append(determined_rate(pred, predicted))
                entry[kname]["undetermined"].append(float(np.isnan(pred).mean()))
        for kname in ("nngp", "ntk"):
            # depths with undetermined points do not count as reaching agreement
            agree = [a if a is not None and u == 0.0 else 0.0
                     for a, u in zip(entry[kname]["agreement"], entry[kname]["undetermined"])]
            entry[kname]["depth_agreement_95"] = first_reaching(entry["depths"], agree)
        out["activations"][act_name] = entry
    relu = out["activations"]["relu"]
    out["relu_note"] = (f"ReLU (A ≠ 0, B̃ = 1): at L = {relu['depths'][-1]} the NTK classifier "
                        f"agrees with the majority vote on {relu['ntk']['agreement'][-1]:.1%} of "
                        f"the test points (the majority vote itself is right on "
                        f"{out['baseline_accuracy']['majority']:.1%}); the limit is approached "
                        f"only polynomially in L")
    return out


def plot(path: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 4.2 * len(names)), squeeze=False)
    colors = {"relu": "tab:blue", "h2+h3": "tab:green", "erf": "tab:orange", "phi_opt": "tab:red"}
    for row, name in enumerate(names):
        res = results[name]
        ax_acc, ax_agree = axes[row]
        for act, entry in res["activations"].items():
            c = colors.get(act, None)
            for kname, ls in (("ntk", "-"), ("nngp", "--")):
                # depths with undetermined points (underflowed kernel rows, see
                # ``undetermined``) are not drawn as accuracies: an x on the bottom edge
                und = np.array(entry[kname]["undetermined"])
                ok = und == 0.0
                depths = np.array(entry["depths"])
                ax_acc.plot(depths[ok], np.array(entry[kname]["accuracy"], dtype=float)[ok], ls,
                            color=c, marker="o", ms=3, label=f"{act} {kname.upper()}")
                ax_agree.plot(depths[ok], np.array(entry[kname]["agreement"], dtype=float)[ok],
                              ls, color=c, marker="o", ms=3,
                              label=f"{act} {kname.upper()} vs {entry['predicted_classifier']}")
                for ax in (ax_acc, ax_agree):
                    if (~ok).any():
                        ax.plot(depths[~ok], np.zeros((~ok).sum()), "x", color=c, ms=7,
                                clip_on=False, transform=ax.get_xaxis_transform(),
                                label=f"{act} {kname.upper()}: undetermined (underflow)")
        for i, (base, acc) in enumerate(res["baseline_accuracy"].items()):
            ax_acc.axhline(acc, color="0.3", lw=0.8, ls=[":", "-.", "-", (0, (5, 1))][i % 4],
                           label=f"{base} ({acc:.3f})")
        ax_agree.axhline(0.95, color="0.5", lw=0.8, ls=":")
        for ax in (ax_acc, ax_agree):
            ax.set_xscale("log")
            ax.set_xlabel("depth L (hidden layers)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, ncol=2)
        ax_acc.set_ylabel("test accuracy")
        ax_acc.set_title(f"d = {res['d']}: accuracy of the NNGP/NTK classifiers")
        ax_agree.set_ylabel("agreement with the predicted limit")
        ax_agree.set_title(f"d = {res['d']}: agreement with the deep limit of seed 000")
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    unknown = [s for s in cfg["settings"] if s not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; available: {sorted(SETTINGS)}")
    results = {name: run_setting(name, cfg, seed)
               for name in progress_bar(cfg["settings"], "deep-limits settings", progress)}
    plot(out_dir / "deep_limits.png", results)
    summary = {f"{name}/{act}/{k}": e[k]["depth_agreement_95"]
               for name, r in results.items() for act, e in r["activations"].items()
               for k in ("nngp", "ntk")}
    out = {"experiment": "deep-limits", "config": cfg, "seed": seed, "settings": results,
           "depth_agreement_95": summary, "dtype": "float64",
           "seconds": time.perf_counter() - t0}
    write_results(out_dir, out)
    return out


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: r["depth_agreement_95"], argv)


if __name__ == "__main__":
    main()
