"""Seed 003 (a homework on the NTK): the two-layer sigmoid network
f(x) = (1/√m) Σ_r a_r σ(w_rᵀ x) trained by gradient flow on L = ½ Σ_i (y_i − u_i)² of the
centered model u(t) = f(x; θ_t) − f(x; θ_0).

Shown: (a) the residual bound ‖y − u(t)‖² ≤ ‖y‖² exp(−2 t λ̄) with λ̄ the smallest eigenvalue of
the kernel K(t) = G(t) + H(t) along the trajectory (and the bound with λ_min of the
infinite-width K^∞); (b) the largest weight movement max_r ‖w_r(T) − w_r(0)‖ (and
max_r |a_r(T) − a_r(0)|) falling like m^{-1/2}; (c) the end of training matching kernel
regression with K^∞ (the homework's conclusion).

The network is ``arch.init`` of Sequential(Linear(m, W_std=√d, b_std=None), Sigmoid(),
Linear(1, W_std=1, b_std=None)) in the NTK parameterization, which is exactly the seed's f
(w_r ~ N(0, I) enters as w_rᵀx); the readout weights a_r are then replaced by random signs
(the seed asks for bounded a_r in [−A, A]; A = 1). K^∞ is the infinite-width NTK of the same
architecture (E[a²] = 1). Gradient flow is integrated by gradient descent with a small step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from .. import layers as L
from ..empirical import empirical_ntk
from ..predict import MSEDynamics
from .common import (fit_loglog, one_thread, progress_bar, pyplot, save_figure, start_run,
                     write_results)

# T None: 8/λ_min(K^∞) (quick 3/λ_min); dt None: 0.5/λ_max(K^∞)
FULL = {"widths": [50, 100, 200, 400, 800, 1600, 3200], "T": None, "dt": None}
QUICK = {"widths": [32, 128, 512], "T": None, "dt": None}


def make_data(seed: int, n: int = 6, dim: int = 5, radius: float = 3.0):
    """n points on the sphere of radius 3 in R^5 (radius 1 leaves K^∞ badly conditioned for the
    sigmoid, whose mean 1/2 makes the kernel nearly constant), smooth targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    x *= radius / np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tanh(x[:, 0]) + 0.3 * x[:, 1]
    return x, y[:, None]


def architecture(width: int, dim: int) -> L.Sequential:
    return L.Sequential(L.Linear(width, W_std=dim ** 0.5, b_std=None), L.Sigmoid(),
                        L.Linear(1, W_std=1.0, b_std=None))


def train_width(width: int, seed: int, x: np.ndarray, y: np.ndarray, T: float, dt: float,
                n_checks: int) -> Dict:
    arch = architecture(width, x.shape[1])
    net = arch.init((x.shape[1],), seed=seed, dtype=torch.float64)
    first, readout = net[0], net[2]
    with torch.no_grad():
        readout.weight.copy_(torch.sign(readout.weight))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    with torch.no_grad():
        f_init = net(xt).clone()
    w0, a0 = first.weight.detach().clone(), readout.weight.detach().clone()
    steps = int(round(T / dt))
    check_at = set(np.linspace(0, steps, n_checks).astype(int).tolist())
    times, resid2, lam_min = [], [], []
    for step in range(steps + 1):
        u = net(xt) - f_init
        loss = 0.5 * ((yt - u) ** 2).sum()
        times.append(step * dt)
        resid2.append(float(2 * loss.detach()))
        if step in check_at:
            lam_min.append(float(torch.linalg.eigvalsh(empirical_ntk(net, xt))[0]))
        if step == steps:
            break
        grads = torch.autograd.grad(loss, [first.weight, readout.weight])
        with torch.no_grad():
            first.weight.sub_(dt * grads[0])
            readout.weight.sub_(dt * grads[1])
    with torch.no_grad():
        u_final = (net(xt) - f_init).numpy()
    with torch.no_grad():
        dw = float((first.weight - w0).norm(dim=1).max())
        da = float((readout.weight - a0).abs().max())
    return dict(width=width, times=np.array(times), resid2=np.array(resid2),
                lam_min_path=float(min(lam_min)), max_dw=dw, max_da=da, u_final=u_final)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    """Widths (default 50..3200; quick 32, 128, 512), time T (default 8/λ_min(K^∞); quick
    3/λ_min), step dt (0.5/λ_max(K^∞) capped for stability). Writes two_layer_sigmoid.png and
    results.json."""
    cfg, out_dir, _ = start_run(out_dir, quick, options, QUICK, FULL)
    widths = [int(w) for w in cfg["widths"]]
    x, y = make_data(seed)
    k_inf = architecture(1, x.shape[1]).kernel(x).ntk
    evals = torch.linalg.eigvalsh(k_inf).numpy()
    lam_inf, lam_max = float(evals[0]), float(evals[-1])
    T = float((3.0 if quick else 8.0) / lam_inf if cfg["T"] is None else cfg["T"])
    dt = float(0.5 / lam_max if cfg["dt"] is None else cfg["dt"])
    n_checks = 5 if quick else 11
    with one_thread():
        runs = [train_width(m, seed * 7919 + m, x, y, T, dt, n_checks)
                for m in progress_bar(widths, "two-layer sigmoid", progress)]
    krr = MSEDynamics(k_inf, y).predict(T)
    rel_to_kernel = [float(np.linalg.norm(r["u_final"] - krr.numpy()) / np.linalg.norm(y))
                     for r in runs]
    y2 = float((y ** 2).sum())
    bound_ok = []
    for r in runs:
        bound = y2 * np.exp(-2 * r["times"] * r["lam_min_path"])
        bound_ok.append(bool(np.all(r["resid2"] <= bound * (1 + 1e-9) + 1e-12)))
    slope_w = fit_loglog(widths, [r["max_dw"] for r in runs])[0]
    slope_a = fit_loglog(widths, [r["max_da"] for r in runs])[0]
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    big = runs[-1]
    a1.semilogy(big["times"], big["resid2"], lw=2, label=f"‖y − u(t)‖², width {big['width']}")
    a1.semilogy(big["times"], y2 * np.exp(-2 * big["times"] * big["lam_min_path"]), "--",
                label="‖y‖² exp(−2 t λ̄), λ̄ = min_t λ_min(K(t))")
    a1.semilogy(big["times"], y2 * np.exp(-2 * big["times"] * lam_inf), ":",
                label="‖y‖² exp(−2 t λ_min(K^∞))")
    small = runs[0]
    a1.semilogy(small["times"], small["resid2"], lw=1, alpha=0.7,
                label=f"‖y − u(t)‖², width {small['width']}")
    a1.set_xlabel("t (gradient-flow time)")
    a1.legend(fontsize=7)
    a2.loglog(widths, [r["max_dw"] for r in runs], "o-",
              label=f"max_r ‖w_r(T) − w_r(0)‖ (slope {slope_w:.2f})")
    a2.loglog(widths, [r["max_da"] for r in runs], "s-",
              label=f"max_r |a_r(T) − a_r(0)| (slope {slope_a:.2f})")
    w = np.asarray(widths, float)
    a2.loglog(w, runs[0]["max_dw"] * (w / w[0]) ** -0.5, ":", color="gray", label="m^-1/2")
    a2.set_xlabel("width m")
    a2.legend(fontsize=7)
    save_figure(fig, out_dir / "two_layer_sigmoid.png")
    results = {
        "experiment": "two-layer-sigmoid", "quick": quick, "seed": seed, "T": T, "dt": dt,
        "n_train": int(len(y)), "lambda_min_K_inf": lam_inf, "lambda_max_K_inf": lam_max,
        "widths": [dict(width=r["width"], lambda_min_along_path=r["lam_min_path"],
                        max_weight_move=r["max_dw"], max_readout_move=r["max_da"],
                        final_residual2=float(r["resid2"][-1]), bound_holds=ok,
                        rel_dist_to_kernel_regression=d)
                   for r, ok, d in zip(runs, bound_ok, rel_to_kernel)],
        "slope_max_weight_move": slope_w, "slope_max_readout_move": slope_a,
        "y_norm2": y2, "figures": ["two_layer_sigmoid.png"],
    }
    return write_results(out_dir, results)
