"""Seed 004 (lazy training; Chizat et al. 2019, and the "Understanding the NTK" notes the seed
follows): for a 1-D-input two-layer network, as the width m grows

- the relative change of the weights ‖w(T) − w₀‖ / ‖w₀‖ after training to (near) zero loss
  shrinks (like m^{-1/2} in the NTK parameterization: ‖w(T) − w₀‖ stays O(1), ‖w₀‖ ~ √m);
- the lazy-training ratio κ(w₀) = ‖y(w₀) − ȳ‖ · ‖∇²_w y(w₀)‖ / ‖∇_w y(w₀)‖² shrinks too, so
  the Jacobian barely changes while the loss goes to zero and the linear model is accurate.

Here y(w) ∈ R^N are the outputs on the N training inputs; ‖∇_w y‖ is the spectral norm of the
Jacobian (N × P) and ‖∇²_w y‖ the norm of the second derivative as a bilinear map
R^P × R^P → R^N, sup_{|v|=1, |u|=1} uᵀ ∇²y[v, v], found by alternating power iterations on
Hessian-vector products (torch.func). The network is ``arch.init`` of
Sequential(Linear(m, W_std=1, b_std=1), Tanh(), Linear(1, W_std=1, b_std=0)) (NTK
parameterization); tanh keeps ∇²y well defined. Training: full-batch gradient descent on
L = 1/(2N) Σ (f − y)² with step 0.5 · the largest stable step of the analytic NTK, until the
loss falls below 1e-3 · ½ mean(ȳ²) (or a step cap). Numbers are averaged over seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch.func import functional_call, grad, jacrev, jvp

from .. import layers as L
from ..predict import max_learning_rate
from .common import (fit_loglog, mse, one_thread, progress_bar, pyplot, save_figure, start_run,
                     write_results)

FULL = {"widths": [10, 30, 100, 300, 1000, 3000, 10000], "seeds": 3, "max_steps": 20000}
QUICK = {"widths": [10, 100, 1000], "seeds": 1, "max_steps": 1500}


def make_data(n: int = 10):
    x = np.linspace(-2.0, 2.0, n)[:, None]
    y = np.sin(1.5 * x)
    return x, y


def architecture(width: int) -> L.Sequential:
    return L.Sequential(L.Linear(width, W_std=1.0, b_std=1.0), L.Tanh(),
                        L.Linear(1, W_std=1.0, b_std=0.0))


def _flat(net):
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in net.named_parameters() if p.requires_grad]
    vec = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters() if p.requires_grad])

    def outputs(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            k = int(np.prod(shape))
            params[name] = w[i:i + k].reshape(shape)
            i += k
        return functional_call(net, params, (x,)).reshape(-1)

    return vec, outputs


def kappa(net, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> Dict:
    """κ(w₀) and its three factors (see module doc)."""
    w0, fn = _flat(net)
    f = lambda w: fn(w, x)  # noqa: E731
    jac = jacrev(f)(w0)                                           # (N, P)
    jac_norm = float(torch.linalg.matrix_norm(jac, ord=2))
    resid = float((f(w0) - y.reshape(-1)).norm())

    def second(v: torch.Tensor) -> torch.Tensor:                  # ∇²y[v, v] ∈ R^N
        return jvp(lambda w: jvp(f, (w,), (v,))[1], (w0,), (v,))[1]

    def hvp(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:    # (Σ_i u_i ∇²y_i) v
        return jvp(grad(lambda w: (u * f(w)).sum()), (w0,), (v,))[1]

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(w0.shape, generator=gen, dtype=w0.dtype)
    v /= v.norm()
    u = second(v)
    u = u / u.norm()
    value = 0.0
    for _ in range(iters):
        hv = hvp(u, v)
        v = hv / hv.norm()
        s = second(v)
        value = float(s.norm())
        u = s / s.norm()
    return dict(kappa=resid * value / jac_norm ** 2, residual=resid, hessian_norm=value,
                jacobian_norm=jac_norm)


def train_width(width: int, seed: int, x: np.ndarray, y: np.ndarray, lr: float,
                max_steps: int) -> Dict:
    net = architecture(width).init((1,), seed=seed, dtype=torch.float64)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    k = kappa(net, xt, yt)
    params = [p for p in net.parameters() if p.requires_grad]
    w0 = torch.cat([p.detach().reshape(-1) for p in params])
    with torch.no_grad():
        loss0 = float(mse(net(xt), yt, "mean"))
    target = 1e-3 * 0.5 * float((yt ** 2).mean())
    steps = 0
    for steps in range(1, max_steps + 1):
        loss = mse(net(xt), yt, "mean")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        if float(loss.detach()) < target:
            break
    with torch.no_grad():
        w = torch.cat([p.detach().reshape(-1) for p in params])
        final = float(mse(net(xt), yt, "mean"))
    return dict(width=width, rel_weight_change=float((w - w0).norm() / w0.norm()),
                abs_weight_change=float((w - w0).norm()), steps=steps, loss0=loss0,
                final_loss=final, **k)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    """Widths (default 10..10,000; quick 10, 100, 1000), seeds per width (default 3; quick 1),
    step cap (20,000; quick 1,500). Writes lazy_training.png and results.json."""
    cfg, out_dir, _ = start_run(out_dir, quick, options, QUICK, FULL)
    widths = [int(w) for w in cfg["widths"]]
    n_seeds, max_steps = int(cfg["seeds"]), int(cfg["max_steps"])
    x, y = make_data()
    lr = 0.5 * max_learning_rate(architecture(1).kernel(x).ntk, y.size)
    rows = []
    with one_thread():
        for m in progress_bar(widths, "lazy training", progress):
            runs = [train_width(m, seed * 7919 + 31 * s + m, x, y, lr, max_steps)
                    for s in range(n_seeds)]
            row = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "width"}
            rows.append(dict(width=m, **row))
    slope_rel = fit_loglog(widths, [r["rel_weight_change"] for r in rows])[0]
    slope_kappa = fit_loglog(widths, [r["kappa"] for r in rows])[0]
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    w = np.asarray(widths, float)
    a1.loglog(w, [r["rel_weight_change"] for r in rows], "o-",
              label=f"‖w(T) − w₀‖ / ‖w₀‖ (slope {slope_rel:.2f})")
    a1.loglog(w, rows[0]["rel_weight_change"] * (w / w[0]) ** -0.5, ":", color="gray",
              label="m^-1/2")
    a1.set_xlabel("width m")
    a1.set_title("relative weight change after training", fontsize=9)
    a1.legend(fontsize=7)
    a2.loglog(w, [r["kappa"] for r in rows], "s-", color="tab:red",
              label=f"κ(w₀) (slope {slope_kappa:.2f})")
    a2.loglog(w, rows[0]["kappa"] * (w / w[0]) ** -0.5, ":", color="gray", label="m^-1/2")
    a2.set_xlabel("width m")
    a2.set_title("lazy-training ratio κ = ‖y(w₀) − ȳ‖ ‖∇²y‖ / ‖∇y‖²", fontsize=9)
    a2.legend(fontsize=7)
    save_figure(fig, out_dir / "lazy_training.png")
    results = {
        "experiment": "lazy-training", "quick": quick, "seed": seed, "learning_rate": lr,
        "loss": "mean", "stop": "loss < 1e-3 * mean(y^2)/2 or step cap", "max_steps": max_steps,
        "seeds_per_width": n_seeds,
        "widths": rows, "slope_rel_weight_change": slope_rel, "slope_kappa": slope_kappa,
        "figures": ["lazy_training.png"],
    }
    return write_results(out_dir, results)
