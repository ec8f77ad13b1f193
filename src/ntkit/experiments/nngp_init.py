"""Seeds 000 and 004: at initialization, the outputs of a wide random network are a sample of
the NNGP Gaussian process, f_0 ~ GP(0, Σ) with Σ the NNGP kernel (Neal 1996; Lee et al. 2018;
Matthews et al. 2018; Jacot et al. 2018: "f_θ(t) is Gaussian" at t = 0 with covariance Σ^(L)).

For each architecture (a ReLU MLP, an erf MLP and a small ReLU CNN, NTK parameterization), M
random networks ``arch.init(in_shape, seed=s)``, s = 0..M−1, are evaluated on n inputs;
F (M × n) holds their outputs. The sample covariance with known mean 0, S = FᵀF / M, is
compared with Σ from ``arch.kernel`` by

* the likelihood-ratio test of H0: Cov = Σ (mean known; Anderson 2003, §10.8):
  LR = M [tr(Σ⁻¹S) − log det(Σ⁻¹S) − n], asymptotically χ² with n(n+1)/2 degrees of freedom
  under H0 (M S is Wishart(Σ, M)); H0 is rejected when p < α;
* entrywise z-scores z_ij = (S_ij − Σ_ij) / sqrt((Σ_ii Σ_jj + Σ_ij²)/M), the exact standard
  deviation of S_ij under H0, with a Bonferroni threshold over the n(n+1)/2 entries at α.

and the Gaussianity of single outputs f(x_k) / √Σ_kk by a Kolmogorov–Smirnov test against
N(0, 1) and the excess kurtosis g₂ (standard error √(24/M)), Bonferroni over the n inputs.
Tolerance: α = 0.01 for each test. The verdict is "consistent" when no test rejects.

The tests have power: each run also tests WRONG covariances, which must be rejected — Σ scaled
by 1.2, the NTK Θ in place of Σ, and the NNGP of the same network with W_std × 1.1
(``wrong_alternatives_rejected``). The Gaussianity tests are also run on NARROW networks
(width 4): a ReLU network's output is then a scale mixture of Gaussians (given the last hidden
layer it is Gaussian with a random variance), with an excess kurtosis of order 1/width that
the kurtosis test detects; an erf network saturates (φ² ≈ 1 for W_std = 1.5), its readout
variance is nearly fixed, and its narrow outputs are much closer to Gaussian (excess kurtosis
0.1–0.6 at width 4 against 9–19 for the ReLU MLP; reported, not counted as a power check). Width: 1,024 units for the MLPs, 256 channels for the CNN (6 × 6 images; 3 × 3
convolutions, "same" padding; a Flatten readout). The finite-width bias of
the wide networks' covariance is O(1/width) (about 0.1% at width 1,024), far below the Monte
Carlo error √(2/M) of S (2% at M = 4,000).

Full run (``results/nngp-init``, float64, 4,000 nets per architecture, 581 s on two cores
shared with other jobs, load about 21): the NNGP Σ is not rejected for any architecture (LR
test p = 0.78 ReLU MLP, 0.82 erf MLP, 0.023 CNN at 256 channels; max |z| 1.3, 2.0, 2.4 against
the Bonferroni threshold 3.49; largest entry error 2–4% of max Σ), the wide outputs pass the KS
and kurtosis tests, and 1.2 Σ, the NTK and the NNGP with W_std × 1.1 are all rejected
(p < 1e-59).

Writes ``nngp_init.png`` and ``results.json``.

    ntkit experiment nngp-init [--quick]
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from scipy import stats

import ntkit as nk
from .common import (one_thread, progress_bar, pyplot, save_figure, sphere_inputs,
                     standalone_main, start_run, write_results)

FULL = {"architectures": ["relu-mlp", "erf-mlp", "relu-cnn"], "nets": 4000, "width": 1024,
        "conv_channels": 256, "narrow_width": 4, "n_inputs": 6, "input_dim": 8, "image": [1, 6, 6], "alpha": 0.01,
        "wrong_scale": 1.2, "wrong_w_std_factor": 1.1, "dtype": "float64"}
QUICK = {"architectures": ["relu-mlp", "erf-mlp", "relu-cnn"], "nets": 500, "width": 128,
         "conv_channels": 32, "narrow_width": 4, "n_inputs": 4, "input_dim": 8,
         "image": [1, 4, 4], "alpha": 0.01, "wrong_scale": 1.3, "wrong_w_std_factor": 1.1, "dtype": "float64"}

W_STD, B_STD = math.sqrt(2.0), 0.1


def architecture(name: str, width: int, w_factor: float = 1.0) -> nk.Sequential:
    """The three networks, each with two hidden layers (``width`` units or channels) and a
    scalar readout, W_std = √2 · ``w_factor`` (erf: 1.5 · ``w_factor``), b_std = 0.1."""
    if name == "relu-mlp":
        w = W_STD * w_factor
        return nk.Sequential(nk.Linear(width, W_std=w, b_std=B_STD), nk.ReLU(),
                             nk.Linear(width, W_std=w, b_std=B_STD), nk.ReLU(),
                             nk.Linear(1, W_std=w, b_std=B_STD))
    if name == "erf-mlp":
        w = 1.5 * w_factor
        return nk.Sequential(nk.Linear(width, W_std=w, b_std=B_STD), nk.Erf(),
                             nk.Linear(width, W_std=w, b_std=B_STD), nk.Erf(),
                             nk.Linear(1, W_std=w, b_std=B_STD))
    if name == "relu-cnn":
        w = W_STD * w_factor
        return nk.Sequential(nk.Conv2d(width, 3, W_std=w, b_std=B_STD), nk.ReLU(),
                             nk.Conv2d(width, 3, W_std=w, b_std=B_STD), nk.ReLU(),
                             nk.Flatten(), nk.Linear(1, W_std=w, b_std=B_STD))
    raise ValueError(f"unknown architecture {name!r}; choose relu-mlp, erf-mlp or relu-cnn")


def inputs(name: str, cfg: Dict, seed: int) -> torch.Tensor:
    """n inputs: points of norm √d in R^d for the MLPs (Σ¹(x, x) = W_std² + b_std²), standard
    Gaussian images (C, H, W) for the CNN; float64."""
    n = int(cfg["n_inputs"])
    if name == "relu-cnn":
        g = torch.Generator().manual_seed(int(seed) + 4242)
        return torch.randn(n, *[int(s) for s in cfg["image"]], generator=g, dtype=torch.float64)
    d = int(cfg["input_dim"])
    return sphere_inputs(n, d, int(seed) + 4242) * math.sqrt(d)


def sample_outputs(arch: nk.Sequential, x: torch.Tensor, nets: int, seed: int,
                   dtype: torch.dtype, progress: Optional[bool] = None,
                   desc: str = "nets") -> np.ndarray:
    """Outputs (nets, n) of ``arch.init(x.shape[1:], seed=seed·10⁶ + s)`` for s < nets (on one
    torch thread: small tensors)."""
    out = np.empty((nets, x.shape[0]))
    xx = x.to(dtype)
    with torch.no_grad(), one_thread():
        for s in progress_bar(range(nets), desc, progress):
            net = arch.init(tuple(x.shape[1:]), seed=int(seed) * 1_000_000 + s, dtype=dtype)
            out[s] = net(xx).reshape(-1).double().numpy()
    return out


def covariance_test(samples: np.ndarray, sigma: np.ndarray, alpha: float) -> Dict:
    """Likelihood-ratio test and entrywise z-scores of H0: the rows of ``samples`` (M, n) are
    N(0, ``sigma``) (see the module docstring). JSON-ready dict with ``rejected``."""
    f = np.asarray(samples, float)
    sigma = np.asarray(sigma, float)
    m, n = f.shape
    if sigma.shape != (n, n):
        raise ValueError(f"sigma must be ({n}, {n}), got {sigma.shape}")
    evals = np.linalg.eigvalsh(sigma)
    if evals.min() <= 0:
        raise ValueError(f"sigma must be positive definite (smallest eigenvalue {evals.min():g})")
    s = f.T @ f / m
    a = np.linalg.solve(sigma, s)
    sign, logdet = np.linalg.slogdet(a)
    if sign <= 0:
        raise ValueError("the sample covariance is singular: more samples than inputs needed")
    lr = float(m * (np.trace(a) - logdet - n))
    dof = n * (n + 1) // 2
    p = float(stats.chi2.sf(lr, dof))
    d = np.sqrt(np.diag(sigma))
    sd = np.sqrt((np.outer(d * d, d * d) + sigma ** 2) / m)
    iu = np.triu_indices(n)
    z = ((s - sigma) / sd)[iu]
    z_crit = float(stats.norm.isf(alpha / (2 * dof)))
    return {"samples": m, "inputs": n, "lr_statistic": lr, "dof": dof, "p_value": p,
            "max_abs_z": float(np.abs(z).max()), "z_threshold_bonferroni": z_crit,
            "alpha": alpha, "rejected": bool(p < alpha or np.abs(z).max() > z_crit),
            "relative_error_entries": float(np.abs(s - sigma).max() / np.abs(sigma).max())}


def gaussianity_test(samples: np.ndarray, variances: np.ndarray, alpha: float) -> Dict:
    """KS test against N(0, 1) of each column of ``samples`` divided by √variance, and the
    excess kurtosis g₂ of each column (z = g₂ / √(24/M)); Bonferroni over the columns.
    JSON-ready dict with ``rejected``."""
    f = np.asarray(samples, float)
    m, n = f.shape
    u = f / np.sqrt(np.asarray(variances, float))[None, :]
    ks = [stats.kstest(u[:, k], "norm") for k in range(n)]
    g2 = (u ** 4).mean(axis=0) / (u ** 2).mean(axis=0) ** 2 - 3.0
    z = g2 / math.sqrt(24.0 / m)
    z_crit = float(stats.norm.isf(alpha / (2 * n)))
    ks_p = [float(r.pvalue) for r in ks]
    return {"ks_p_values": ks_p, "ks_p_min": min(ks_p), "ks_threshold": alpha / n,
            "excess_kurtosis": g2.tolist(), "kurtosis_z": z.tolist(),
            "kurtosis_z_threshold": z_crit,
            "ks_rejected": bool(min(ks_p) < alpha / n),
            "kurtosis_rejected": bool(np.abs(z).max() > z_crit),
            "rejected": bool(min(ks_p) < alpha / n or np.abs(z).max() > z_crit)}


def _kernels(arch: nk.Sequential, x: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    k = arch.kernel(x, get=("nngp", "ntk"))
    return k.nngp.double().numpy(), k.ntk.double().numpy()


def plot(path: Path, cfg: Dict, data: Dict[str, Dict]) -> None:
    plt = pyplot()
    names = list(data)
    fig, axes = plt.subplots(2, len(names), figsize=(4.6 * len(names), 8.4), squeeze=False)
    m = int(cfg["nets"])
    for j, name in enumerate(names):
        d = data[name]
        sigma, ntk, s = d["sigma"], d["ntk"], d["sample_cov"]
        iu = np.triu_indices(sigma.shape[0])
        dg = np.sqrt(np.diag(sigma))
        sd = np.sqrt((np.outer(dg * dg, dg * dg) + sigma ** 2) / m)[iu]
        ax = axes[0, j]
        lo = min(sigma[iu].min(), s[iu].min(), 0.0)
        hi = max(sigma[iu].max(), s[iu].max()) * 1.3
        ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="S = Σ")
        ax.plot([lo, hi], [lo * cfg["wrong_scale"], hi * cfg["wrong_scale"]], ":", color="0.5",
                lw=1, label=f"S = {cfg['wrong_scale']} Σ (wrong)")
        ax.errorbar(sigma[iu], s[iu], yerr=2 * sd, fmt="o", ms=4, capsize=2, color="tab:blue",
                    label=f"vs NNGP Σ: p = {d['test']['right']['p_value']:.2f}")
        ax.plot(ntk[iu], s[iu], "x", color="tab:red", ms=5,
                label=f"vs NTK Θ: p = {d['test']['wrong_ntk']['p_value']:.1e}")
        ax.set_xlim(lo, max(hi, ntk[iu].max() * 1.05))
        ax.set_xlabel("kernel entry (NNGP Σ_ij, or NTK Θ_ij for ×)")
        ax.set_ylabel(f"sample covariance S_ij of {m:,} nets (±2 sd)")
        ax.set_title(f"{name}, width {d['width']:,}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[1, j]
        u = d["wide_outputs"][:, 0] / dg[0]
        un = d["narrow_outputs"][:, 0] / dg[0] if d["narrow_outputs"] is not None else None
        bins = np.linspace(-4.5, 4.5, 46)
        ax.hist(u, bins=bins, density=True, alpha=0.55, color="tab:blue",
                label=f"width {d['width']:,}: g₂ = {d['gaussianity']['wide']['excess_kurtosis'][0]:.2f}")
        if un is not None:
            ax.hist(un, bins=bins, density=True, histtype="step", lw=1.5, color="tab:orange",
                    label=f"width {cfg['narrow_width']}: g₂ = "
                          f"{d['gaussianity']['narrow']['excess_kurtosis'][0]:.2f}")
        t = np.linspace(-4.5, 4.5, 200)
        ax.plot(t, stats.norm.pdf(t), "k-", lw=1.3, label="N(0, 1)")
        ax.set_xlabel("f(x_1) / √Σ(x_1, x_1)")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: one output over random inits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Outputs of random networks at initialization vs the NNGP Gaussian process "
                 f"(α = {cfg['alpha']})", fontsize=11)
    save_figure(fig, path, dpi=100)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    dtype = getattr(torch, cfg["dtype"])
    alpha = float(cfg["alpha"])
    m = int(cfg["nets"])
    if m <= 2 * int(cfg["n_inputs"]):
        raise ValueError(f"nets={m} is too few for a covariance test on {cfg['n_inputs']} inputs")
    results, data = {}, {}
    for name in cfg["architectures"]:
        width = int(cfg["conv_channels"] if name == "relu-cnn" else cfg["width"])
        arch = architecture(name, width)
        x = inputs(name, cfg, seed)
        sigma, ntk = _kernels(arch, x)
        wrong_w, _ = _kernels(architecture(name, 1, float(cfg["wrong_w_std_factor"])), x)
        wide = sample_outputs(arch, x, m, seed, dtype, progress, f"{name} width {width}")
        narrow = None
        if cfg["narrow_width"]:
            narrow = sample_outputs(architecture(name, int(cfg["narrow_width"])), x, m, seed + 1,
                                    dtype, progress, f"{name} width {cfg['narrow_width']}")
        test = {"right": covariance_test(wide, sigma, alpha),
                "wrong_scaled": covariance_test(wide, float(cfg["wrong_scale"]) * sigma, alpha),
                "wrong_ntk": covariance_test(wide, ntk, alpha),
                "wrong_w_std": covariance_test(wide, wrong_w, alpha)}
        gauss = {"wide": gaussianity_test(wide, np.diag(sigma), alpha)}
        if narrow is not None:
            gauss["narrow"] = gaussianity_test(narrow, np.diag(sigma), alpha)
        passes = not test["right"]["rejected"] and not gauss["wide"]["rejected"]
        powers = {k: test[k]["rejected"] for k in ("wrong_scaled", "wrong_ntk", "wrong_w_std")}
        results[name] = {"width": width,
            "nngp": sigma.tolist(), "sample_covariance": (wide.T @ wide / m).tolist(),
            "covariance_tests": test, "gaussianity": gauss,
            "verdict": "consistent" if passes else "not consistent",
            "wrong_alternatives_rejected": powers}
        data[name] = {"width": width, "sigma": sigma, "ntk": ntk, "sample_cov": wide.T @ wide / m, "test": test,
                      "gaussianity": gauss, "wide_outputs": wide, "narrow_outputs": narrow}
    plot(out_dir / "nngp_init.png", cfg, data)
    verdict = ("consistent" if all(r["verdict"] == "consistent" for r in results.values())
               else "not consistent")
    out = {"experiment": "nngp-init", "config": cfg, "seed": seed, "quick": bool(quick),
           "claim": "seeds 000, 004: outputs of random networks at initialization are samples "
                    "of the NNGP Gaussian process GP(0, Σ)",
           "tolerance": f"each test at level α = {alpha}: LR test (χ² with n(n+1)/2 dof), "
                        f"Bonferroni max |z| of the entries, KS and kurtosis Bonferroni over "
                        f"the inputs",
           "architectures": results, "verdict": verdict,
           "all_wrong_alternatives_rejected": all(all(r["wrong_alternatives_rejected"].values())
                                                  for r in results.values()),
           "seconds": time.perf_counter() - t0}
    write_results(out_dir, out)
    return out


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {
        "verdict": r["verdict"], "wrong_rejected": r["all_wrong_alternatives_rejected"],
        "p": {k: v["covariance_tests"]["right"]["p_value"] for k, v in r["architectures"].items()},
        "seconds": r["seconds"]}, argv)


if __name__ == "__main__":
    main()
