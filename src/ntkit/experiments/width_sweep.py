"""Width sweep: the empirical NTK of finite networks converges to the analytic one as width^-1/2.

For depth-4 ReLU networks in the NTK parameterization (3 hidden layers of width n, W_std=√2,
b_std=0.1) built by ``arch.init`` with several seeds, the relative Frobenius distance

    d(n) = ||Θ_n - Θ_∞||_F / ||Θ_∞||_F

on a fixed batch of inputs on the unit sphere is averaged over seeds; the slope of log d against
log n is fitted (theory, Jacot et al. 2018 / seed 002: fluctuations of the NTK are O(n^-1/2), so
the slope is about -1/2). Writes ``width_sweep.png`` (log-log, fitted line, the -1/2 reference)
and ``results.json``.

    python -m ntkit.experiments.width_sweep OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import ntkit as nk
from ntkit.empirical import empirical_ntk
from .common import (fit_loglog, progress_bar, pyplot, relative_frobenius, relu_mlp,
                     save_figure, sphere_inputs, standalone_main, start_run, write_results)

FULL = {"widths": [64, 128, 256, 512, 1024, 2048, 4096, 8192], "seeds": 5, "n": 32, "d": 8,
        "depth": 4, "dtype": "float32"}
# the quick configuration doubles as the test's: over 10 disjoint seed sets its fitted slope
# had mean -0.518 and standard deviation 0.042 (so |slope + 1/2| < 0.15 holds with margin)
QUICK = {"widths": [128, 256, 512, 1024, 2048], "seeds": 8, "n": 16, "d": 4, "depth": 4,
         "dtype": "float64"}


def architecture(width: int, depth: int) -> nk.Sequential:
    """``depth`` Linear layers (depth - 1 hidden ReLU layers of ``width``), W_std=√2,
    b_std=0.1, NTK parameterization."""
    return relu_mlp(width, depth - 1, W_std=math.sqrt(2.0), b_std=0.1)


def distances(widths: Sequence[int], seeds: Sequence[int], x: torch.Tensor, depth: int = 4,
              dtype: torch.dtype = torch.float64, show: Optional[bool] = None
              ) -> Dict[int, List[float]]:
    """{width: [d(n) for each seed]} with d the relative Frobenius distance to arch.kernel."""
    out: Dict[int, List[float]] = {}
    for width in progress_bar(widths, "width sweep", show):
        arch = architecture(width, depth)
        limit = arch.kernel(x, get="ntk").ntk
        out[int(width)] = []
        for s in seeds:
            net = arch.init((x.shape[1],), seed=int(s), dtype=dtype).eval()
            out[int(width)].append(relative_frobenius(empirical_ntk(net, x), limit))
            del net
    return out


def plot(path: Path, widths, means, stds, slope, intercept, title: str) -> None:
    plt = pyplot()

    w = np.asarray(widths, float)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.errorbar(w, means, yerr=stds, fmt="o", capsize=3, label="empirical NTK (mean ± std over seeds)")
    ax.plot(w, np.exp(intercept) * w ** slope, "-", label=f"fit: slope {slope:.3f}")
    ax.plot(w, means[0] * (w / w[0]) ** -0.5, "--", color="gray", label="slope -1/2 (theory)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width n")
    ax.set_ylabel(r"$\|\Theta_n - \Theta_\infty\|_F \,/\, \|\Theta_\infty\|_F$")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    x = sphere_inputs(cfg["n"], cfg["d"], seed)
    seeds = [seed * 1000 + s for s in range(cfg["seeds"])]
    dist = distances(cfg["widths"], seeds, x, cfg["depth"], getattr(torch, cfg["dtype"]),
                     progress)
    widths = sorted(dist)
    means = [float(np.mean(dist[w])) for w in widths]
    stds = [float(np.std(dist[w])) for w in widths]
    slope, intercept = fit_loglog(widths, means)
    result = {"experiment": "width-sweep", "config": cfg, "seed": seed,
              "architecture": f"depth-{cfg['depth']} ReLU MLP, NTK parameterization, W_std=sqrt(2), "
                              f"b_std=0.1, inputs on the unit sphere",
              "widths": widths, "mean_relative_distance": means, "std_relative_distance": stds,
              "per_seed": {str(w): dist[w] for w in widths}, "fitted_slope": slope,
              "theory_slope": -0.5, "seconds": time.perf_counter() - t0}
    plot(out_dir / "width_sweep.png", widths, means, stds, slope, intercept,
         f"Empirical NTK → analytic NTK (depth {cfg['depth']} ReLU, {cfg['seeds']} seeds)")
    write_results(out_dir, result)
    return result


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {"fitted_slope": r["fitted_slope"],
                                             "seconds": r["seconds"]}, argv)


if __name__ == "__main__":
    main()
