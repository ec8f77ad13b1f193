"""Seed 004 (lazy training: the "Understanding the NTK" notes, after Dwaraknath's post and
Chizat et al. 2019): as the width m of a 1-D-input, 1-D-output network with two fully connected
ReLU hidden layers grows,

- the lazy-training ratio κ(w₀) = ‖y(w₀) − ȳ‖ · ‖∇²_w y(w₀)‖ / ‖∇_w y(w₀)‖² falls, so the
  Jacobian barely changes while the loss goes to zero and the linear model is accurate:
  ‖∇_w y‖² is λ_max of the empirical NTK, O(1), while ‖∇²_w y‖ = O(m^{-1/2}) in the NTK
  parameterization (Liu, Zhu & Belkin 2020), so κ ∝ m^{-1/2};
- the weights move by d ≈ ‖y(w₀) − ȳ‖ / ‖∇_w y(w₀)‖ = O(1) (the seed's own estimate) while
  ‖w₀‖ = O(√P) = O(m) (P ≈ m² weights of order 1), so the relative change
  ‖w(T) − w₀‖ / ‖w₀‖ ∝ m^{-1}. (The seed's "the relative change of the weight norm barely
  changes" reads: it barely moves at large width.)

The model is the seed's: Sequential(Linear(m), ReLU, Linear(m), ReLU, Linear(1)) on 1-D inputs,
in the NTK parameterization of seed 004's Proposition 1 / Theorem 1 (Jacot et al.: weights
N(0, 1), Σ⁽¹⁾ = xᵀx'/n₀ + β², W_std = 1, b_std = β = 0.1), centered at initialization,
y(x, w) = f(x, w) − f(x, w₀), as the notes' source code does (its ZeroOutput), with output scale
α = 1 (the seed does not rescale). Centering makes ‖y(w₀) − ȳ‖ = ‖ȳ‖: κ no longer multiplies a
random initial residual into the Hessian ratio. Data: the two points of the notes' source
configuration, x = (−2, 0.5), ȳ = (3, −1) (the seed's slides show no numbers). Loss: the seed's
L = (1/N) Σ ½ (f − ȳ)²; full-batch gradient descent with step 0.5 · the largest stable step of the
analytic NTK, until L < 1e-6 · ½ mean(ȳ²) (or a step cap). float64. Widths 10 … 1000, 8
initializations each (the seed names no widths; with two hidden layers the cost grows like m²,
and one initialization at width 3000 takes minutes here), the slopes fitted over m ≥ 100.

‖∇_w y‖ is the spectral norm of the Jacobian (N × P); ‖∇²_w y‖ the norm of the second derivative
as a bilinear map R^P × R^P → R^N, sup_{|u|=|v|=1} |uᵀ ∇²y[v, v]|, found by alternating
maximization with Lanczos on Hessian-vector products (``hessian_norm``; torch.func; for ReLU
the a.e. Hessian, whose non-zero blocks couple different layers). Slopes are fitted over the
asymptotic range m ≥ width_min with bootstrap intervals over initializations
(``experiments.statistics``). Each width × initialization is one unit (``experiments.units``):
the run resumes and shards.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch.func import functional_call, grad, jacrev, jvp

from .. import layers as L
from ..predict import max_learning_rate
from .common import mse, one_thread, progress_bar, pyplot, save_figure, start_run, write_results
from .statistics import fit_slope_interval, rate_verdict
from .units import Shard, UnitStore

FULL = {"widths": [10, 30, 100, 300, 1000], "inits": 8, "max_steps": 20000,
        "width_min": 100}
QUICK = {"widths": [30, 100, 300], "inits": 3, "max_steps": 3000, "width_min": 30}
BETA = 0.1
X_TRAIN = np.array([[-2.0], [0.5]])
Y_TRAIN = np.array([[3.0], [-1.0]])
TOL = 1e-6


def make_data():
    """The two training points (x, ȳ) of the notes' source configuration, shapes (2, 1)."""
    return X_TRAIN.copy(), Y_TRAIN.copy()


def architecture(width: int) -> L.Sequential:
    """Seed 004's model: two fully connected ReLU hidden layers of ``width``, NTK
    parameterization, W_std = 1, b_std = β = 0.1 (Jacot et al.)."""
    return L.Sequential(L.Linear(width, W_std=1.0, b_std=BETA), L.ReLU(),
                        L.Linear(width, W_std=1.0, b_std=BETA), L.ReLU(),
                        L.Linear(1, W_std=1.0, b_std=BETA))


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


def lanczos_extreme(matvec, v0: torch.Tensor, steps: int) -> tuple:
    """(θ, x): the Ritz value of largest |θ| of a symmetric operator after ``steps`` Lanczos
    steps from ``v0`` (full reorthogonalization), and its Ritz vector (unit norm)."""
    basis = [v0 / v0.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j])
        alphas.append(float(w @ basis[j]))
        for b in basis:                                     # full reorthogonalization
            w = w - (w @ b) * b
        beta = float(w.norm())
        if j == steps - 1 or beta <= 1e-12 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    tri = np.diag(alphas) + np.diag(betas[:k - 1], 1) + np.diag(betas[:k - 1], -1)
    theta, s = np.linalg.eigh(tri)
    i = int(np.argmax(np.abs(theta)))
    x = sum(float(c) * b for c, b in zip(s[:, i], basis))
    return float(theta[i]), x / x.norm()


def hessian_norm(f, w0: torch.Tensor, steps: int = 20, rounds: int = 2) -> float:
    """‖∇²y(w₀)‖ = sup_{|u|=|v|=1} |uᵀ ∇²y[v, v]| for y = f(w) ∈ R^N (for a symmetric bilinear
    map the sup over v = v' equals the sup over v, v'), by alternating maximization over
    ``rounds``: v ← the Ritz vector of largest |eigenvalue| of H_u = Σ_i u_i ∇²y_i after
    ``steps`` Lanczos steps on Hessian-vector products, then u ← ∇²y[v, v] / ‖·‖. Lanczos,
    unlike power iteration, converges fast at the edge of the continuous spectrum of a wide
    net's Hessian, and its Ritz vectors do not cancel where the spectrum comes in ± pairs (the
    cross-layer Hessian of a ReLU net is block off-diagonal). A lower estimate of the norm
    (every value found is attained)."""
    def hvp(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:     # H_u v
        return jvp(grad(lambda w: (u * f(w)).sum()), (w0,), (v,))[1]

    def second(v: torch.Tensor) -> torch.Tensor:                   # ∇²y[v, v] ∈ R^N
        return jvp(lambda w: jvp(f, (w,), (v,))[1], (w0,), (v,))[1]

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(w0.shape, generator=gen, dtype=w0.dtype)
    u = torch.ones_like(f(w0))
    u /= u.norm()
    value = 0.0
    for _ in range(rounds):
        theta, v = lanczos_extreme(lambda z, u=u: hvp(u, z), start, steps)
        q = second(v)
        value = max(value, abs(theta), float(q.norm()))
        u = q / q.norm()
        start = v
    return value


def kappa(net, x: torch.Tensor, y: torch.Tensor) -> Dict:
    """κ(w₀) of the centered model and its three factors (see the module doc)."""
    w0, fn = _flat(net)
    f = lambda w: fn(w, x)  # noqa: E731
    jac = jacrev(f)(w0)                                           # (N, P)
    jac_norm = float(torch.linalg.matrix_norm(jac, ord=2))
    resid = float(y.reshape(-1).norm())                           # centered: y(w₀) = 0
    value = hessian_norm(f, w0)
    return dict(kappa=resid * value / jac_norm ** 2, residual=resid, hessian_norm=value,
                jacobian_norm=jac_norm)


def train_width(width: int, seed: int, x: np.ndarray, y: np.ndarray, lr: float,
                max_steps: int) -> Dict:
    """κ at initialization, then gradient descent on the centered model to L < TOL·½mean(ȳ²)."""
    net = architecture(width).init((1,), seed=seed, dtype=torch.float64)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    k = kappa(net, xt, yt)
    params = [p for p in net.parameters() if p.requires_grad]
    w0 = torch.cat([p.detach().reshape(-1) for p in params])
    with torch.no_grad():
        f0 = net(xt).clone()
    target = TOL * 0.5 * float((yt ** 2).mean())
    steps, loss = 0, None
    for steps in range(1, max_steps + 1):
        loss = mse(net(xt) - f0, yt, "mean")
        if float(loss.detach()) < target:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    with torch.no_grad():
        w = torch.cat([p.detach().reshape(-1) for p in params])
        final = float(mse(net(xt) - f0, yt, "mean"))
    return dict(width=width, rel_weight_change=float((w - w0).norm() / w0.norm()),
                abs_weight_change=float((w - w0).norm()), steps=steps, final_loss=final,
                converged=final < target, **k)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    """Widths (default 10..1000; quick 30, 100, 300), inits per width (8; quick 3), step cap
    (20,000; quick 3,000), width_min (start of the fitted range, 100; quick 30). ``shard``
    "I/K": only this process's units (no figure, no results.json). Writes lazy_training.png and
    results.json."""
    cfg, out_dir, start = start_run(out_dir, quick, options, QUICK, FULL)
    widths, inits = [int(w) for w in cfg["widths"]], int(cfg["inits"])
    max_steps = int(cfg["max_steps"])
    x, y = make_data()
    lr = 0.5 * max_learning_rate(architecture(1).kernel(x).ntk, y.size)
    keys = [f"m{m}-i{i}" for m in widths for i in range(inits)]

    def unit(key: str):
        m, i = (int(p[1:]) for p in key.split("-"))
        return train_width(m, seed * 7919 + 1009 * i + m, x, y, lr, max_steps)

    store = UnitStore(out_dir, "lazy-training", cfg, seed)
    with one_thread():
        done = store.compute(keys, unit, shard=Shard.parse(shard) if shard else None,
                             progress=lambda k: progress_bar(k, "lazy training", progress))
    if shard:
        return {"experiment": "lazy-training", "shard": str(shard), "units_done": len(done),
                "units_total": len(keys), "partial": True}
    measured = ("rel_weight_change", "abs_weight_change", "kappa", "hessian_norm",
                "jacobian_norm", "steps", "final_loss")
    rows = [dict(width=m, converged=all(done[f"m{m}-i{i}"]["converged"] for i in range(inits)),
                 **{name: [done[f"m{m}-i{i}"][name] for i in range(inits)] for name in measured})
            for m in widths]
    stated = {"kappa": (-0.5, 0.0, "||grad^2 y|| = O(m^-1/2), ||grad y||^2 = O(1) in the NTK "
                                   "parameterization (Liu, Zhu & Belkin 2020); seed 004: kappa "
                                   "<< 1 "
                                   "for wide nets"),
              "rel_weight_change": (-1.0, -0.5, "seed 004: d ~ ||y(w0) - y|| / ||grad y|| = O(1), "
                                                "||w0|| ~ sqrt(P) ~ m (two hidden layers)"),
              "hessian_norm": (-0.5, 0.0, "Liu, Zhu & Belkin 2020: ||grad^2 y|| = O(m^-1/2)")}
    fits = {name: fit_slope_interval(widths, [r[name] for r in rows], seed=seed,
                                     x_min=float(cfg["width_min"])) for name in stated}
    rates = {name: rate_verdict(fits[name], s, alternative=a, source=src)
             for name, (s, a, src) in stated.items()}
    _figure(out_dir, widths, rows, fits, stated)
    results = {
        "experiment": "lazy-training", "quick": quick, "seed": seed,
        "config": {**cfg, "dtype": "float64"},
        "model": "Linear(m) ReLU Linear(m) ReLU Linear(1), NTK parameterization, W_std=1, "
                 "b_std=0.1, centered y = f(w) - f(w0), alpha = 1",
        "data": {"x": X_TRAIN[:, 0].tolist(), "y": Y_TRAIN[:, 0].tolist()},
        "learning_rate": lr, "loss": "mean", "stop": f"L < {TOL} * mean(y^2)/2 or step cap",
        "all_converged": all(r["converged"] for r in rows),
        "widths": rows, "rates": rates,
        "seconds": time.perf_counter() - start, "figures": ["lazy_training.png"],
    }
    return write_results(out_dir, results)


def _figure(out_dir, widths, rows, fits, stated):
    plt = pyplot()
    from matplotlib import ticker
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    w = np.asarray(widths, float)
    panels = (("rel_weight_change", "‖w(T) − w₀‖ / ‖w₀‖", "relative weight change after "
                                                          "training"),
              ("kappa", "κ(w₀) = ‖ȳ‖ ‖∇²y‖ / ‖∇y‖²", "lazy-training ratio (centered model)"),
              ("hessian_norm", "‖∇²_w y(w₀)‖", "Hessian norm at initialization"))
    for ax, (name, ylabel, title) in zip(axes, panels):
        vals = [r[name] for r in rows]
        f = fits[name]
        ax.errorbar(w, [np.mean(v) for v in vals], yerr=[np.std(v) / np.sqrt(len(v)) for v in vals],
                    fmt="o-", capsize=2, label=f"mean ± s.e.; slope (m ≥ {f.x[0]:g}) "
                                               f"{f.slope:.2f} [{f.low:.2f}, {f.high:.2f}]")
        rate = stated[name][0]
        centre = np.log(f.x).mean()                 # the reference passes the fit's centre
        ax.plot(w, np.exp(f.intercept + (f.slope - rate) * centre) * w ** rate, ":", color="gray",
                label=f"stated rate m^{rate:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(widths)
        ax.set_xticklabels([str(m) for m in widths], fontsize=8)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))   # labels in
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_locator(ticker.NullLocator())                     # < 1 decade
        ax.set_xlabel("width m (both hidden layers)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, out_dir / "lazy_training.png", dpi=110)
