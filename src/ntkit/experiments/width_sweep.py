"""Width sweep: the empirical NTK of finite networks converges to the analytic one as m^-1/2.

Jacot et al.'s networks (seed 002; Jacot et al. 2018, §6): depth L = 4 (four Linear layers,
three hidden ReLU layers of width m), NTK parameterization with W_std = 1 and b_std = β = 0.1.
For each width m and each initialization (``arch.init`` with seed ``seed·1000 + i``) the relative
Frobenius distance

    d(m) = ||Θ_m − Θ_∞||_F / ||Θ_∞||_F

on a fixed batch of inputs on the unit sphere is measured against the limit ``arch.kernel``. The
exponent of d ∝ m^s is fitted over m ≥ ``x_min`` with a 95% bootstrap interval over
initializations (``rates.judge``) and judged against the stated rate −1/2: the NTK at
initialization converges to its limit (Jacot et al. 2018, Thm 1) with central-limit
fluctuations of order m^-1/2; the alternative −1/4 is the rate of the ReLU bound that seed 001
(Arora et al. 2019) states (O(m^-1/4) at initialization). The verdict comes from the interval.

Jacot et al. give no widths or batch for this measurement; the full run uses widths 128 … 8192
(fit from 256), 10 initializations each, 32 inputs on the sphere of R^8, float32.

Writes ``width_sweep.png`` (log-log: the per-initialization distances, their means, the fit and
the stated rate; one labelled tick per width) and ``results.json``. The units (one width × one
initialization) are kept under ``OUT_DIR/units`` (resumable; ``--shard i/k`` splits them).

    python -m ntkit.experiments.width_sweep OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import ntkit as nk
from ntkit.empirical import empirical_ntk
from .common import (pyplot, relative_frobenius, relu_mlp, save_figure, sphere_inputs,
                     standalone_main, start_run, write_results)
from .rates import (STATED, flat_summary, judge, per_width, rate_panel, run_units, setup_title,
                    timing, unit_key)

FULL = {"widths": [128, 256, 512, 1024, 2048, 4096, 8192], "seeds": 10, "n": 32, "d": 8,
        "depth": 4, "W_std": 1.0, "b_std": 0.1, "x_min": 256, "dtype": "float32"}
QUICK = {"widths": [128, 256, 512, 1024, 2048], "seeds": 8, "n": 16, "d": 4, "depth": 4,
         "W_std": 1.0, "b_std": 0.1, "x_min": 128, "dtype": "float64"}

def architecture(width: int, depth: int, W_std: float = 1.0, b_std: float = 0.1
                 ) -> nk.Sequential:
    """``depth`` Linear layers (depth − 1 hidden ReLU layers of ``width``), NTK
    parameterization; Jacot et al.'s W_std = 1, b_std = β = 0.1 by default."""
    return relu_mlp(width, depth - 1, W_std=W_std, b_std=b_std)


def distance(width: int, init_seed: int, x: torch.Tensor, depth: int = 4,
             dtype: torch.dtype = torch.float64, W_std: float = 1.0, b_std: float = 0.1
             ) -> float:
    """d(m) of one network ``arch.init(seed=init_seed)`` on the inputs ``x`` (n, d)."""
    arch = architecture(width, depth, W_std, b_std)
    limit = arch.kernel(x, get="ntk").ntk
    net = arch.init((x.shape[1],), seed=int(init_seed), dtype=dtype).eval()
    return relative_frobenius(empirical_ntk(net, x), limit)


def distances(widths: Sequence[int], seeds: Sequence[int], x: torch.Tensor, depth: int = 4,
              dtype: torch.dtype = torch.float64, show: Optional[bool] = None,
              W_std: float = 1.0, b_std: float = 0.1) -> Dict[int, List[float]]:
    """{width: [d(m) for each seed]} (``show`` is accepted for compatibility and ignored)."""
    return {int(w): [distance(w, s, x, depth, dtype, W_std, b_std) for s in seeds]
            for w in widths}


def plot(path: Path, widths, samples, verdict: Dict, cfg: Dict, quick: bool) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    rate_panel(ax, widths, [(samples, verdict, "tab:blue", "empirical NTK", "o")],
               r"$\|\Theta_m - \Theta_\infty\|_F \,/\, \|\Theta_\infty\|_F$",
               "Empirical NTK → analytic NTK: " + setup_title(cfg, cfg["seeds"], quick))
    save_figure(fig, path, dpi=110)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    x = sphere_inputs(cfg["n"], cfg["d"], seed)
    widths = sorted(int(w) for w in cfg["widths"])
    inits = int(cfg["seeds"])
    by_key = {unit_key(w, i): (w, i) for w in widths for i in range(inits)}
    dtype = getattr(torch, cfg["dtype"])

    def unit(key: str) -> Dict[str, float]:
        w, i = by_key[key]
        return {"distance": distance(w, seed * 1000 + i, x, cfg["depth"], dtype, cfg["W_std"],
                                     cfg["b_std"])}

    values, partial = run_units(out_dir, "width-sweep", cfg, seed, list(by_key), unit, shard,
                                progress)
    if partial is not None:
        return partial
    samples = per_width(values, widths, inits, "distance")
    verdict = judge(widths, samples, *STATED["ntk_at_init"], x_min=cfg["x_min"])
    plot(out_dir / "width_sweep.png", widths, samples, verdict, cfg, quick)
    result = {"experiment": "width-sweep", "quick": quick, "config": cfg, "seed": seed,
              "architecture": f"depth-{cfg['depth']} ReLU MLP, NTK parameterization, "
                              f"W_std={cfg['W_std']}, b_std={cfg['b_std']} (Jacot et al. 2018), "
                              f"inputs on the unit sphere",
              "widths": widths, **flat_summary("distance", verdict), "rate": verdict,
              "mean_relative_distance": [float(np.mean(s)) for s in samples],
              "std_relative_distance": [float(np.std(s)) for s in samples],
              "per_seed": {str(w): s for w, s in zip(widths, samples)},
              "figures": ["width_sweep.png"], "seconds": time.perf_counter() - t0,
              **timing(values)}
    write_results(out_dir, result)
    return result


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {k: r[k] for k in (
        "distance_slope", "distance_interval", "distance_verdict", "seconds") if k in r}, argv)


if __name__ == "__main__":
    main()
