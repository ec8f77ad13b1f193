"""A wide network trained by gradient descent follows its linearization (Lee et al. 2019;
seed 000 eq. 26): f_t^lin(x) = f₀(x) + Θ₀(x, X) Θ₀^{-1} (I − (I − ηΘ₀/N)^t) (Y − f₀(X)),
with Θ₀ the empirical NTK of the network at initialization (``nk.empirical_ntk``).

For each width, networks ``arch.init`` (ReLU, NTK parameterization, float64) are trained by
full-batch gradient descent on L = 1/(2N) Σ (f − y)² and their train and test outputs over time
are compared with f_t^lin of their own empirical NTK (``MSEDynamics(discrete=True)``, exact for
the linear model) and with the infinite-width prediction (analytic NTK). The relative error
‖f_t − f_t^lin‖ / ‖f_t − f₀‖ (max over recorded steps, train and test points together) shrinks
with width: Lee et al. 2019 (Theorem 2.1) bound it by O(width^-1/2); in practice the distance to
the network's own linearization falls faster (about width^-1), while the distance to the
infinite-width prediction, dominated by the fluctuation of Θ₀ around its limit, falls like
width^-1/2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import layers as L
from ..empirical import empirical_ntk
from ..predict import MSEDynamics, max_learning_rate
from .common import (fit_loglog, mse, one_thread, progress_bar, pyplot, relu_mlp, save_figure,
                     start_run, write_results)

FULL = {"widths": [64, 256, 1024, 4096], "seeds": 3, "steps": 400}
QUICK = {"widths": [32, 256, 1024], "seeds": 1, "steps": 60}


def relu_net(width: int) -> L.Sequential:
    """Two hidden ReLU layers of ``width``, W_std=√2, b_std=0.1."""
    return relu_mlp(width, 2, W_std=2 ** 0.5, b_std=0.1)


def make_data(seed: int, n_train: int = 8, n_test: int = 12, dim: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def one_width(width: int, seed: int, steps: int, record: List[int], lr: float, data) -> Dict:
    xtr, ytr, xte, _ = data
    arch = relu_net(width)
    net = arch.init((xtr.shape[1],), seed=seed, dtype=torch.float64)
    xt, xtet, yt = (torch.as_tensor(a) for a in (xtr, xte, ytr))
    with torch.no_grad():
        f0tr, f0te = net(xt), net(xtet)
    theta_dd = empirical_ntk(net, xt)
    theta_td = empirical_ntk(net, xtet, xt)
    traj_tr, traj_te = [], []
    params = [p for p in net.parameters() if p.requires_grad]
    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                traj_tr.append(net(xt).clone())
                traj_te.append(net(xtet).clone())
        if step == steps:
            break
        grads = torch.autograd.grad(mse(net(xt), yt, "mean"), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    f_tr, f_te = torch.stack(traj_tr).numpy(), torch.stack(traj_te).numpy()
    lin = MSEDynamics(theta_dd, yt, learning_rate=lr, loss="mean", discrete=True)
    lin_tr = lin.predict(record, fx_train_0=f0tr).numpy()
    lin_te = lin.predict(record, theta_td, f0tr, f0te).numpy()
    inf_k = arch.kernel(xtr), arch.kernel(xte, xtr)
    ana = MSEDynamics(inf_k[0].ntk, yt, learning_rate=lr, loss="mean", discrete=True)
    ana_tr = ana.predict(record, fx_train_0=f0tr).numpy()
    ana_te = ana.predict(record, inf_k[1].ntk, f0tr, f0te).numpy()
    f = np.concatenate([f_tr, f_te], 1)
    f0 = np.concatenate([f0tr.numpy(), f0te.numpy()], 0)[None]
    moved = np.linalg.norm((f - f0).reshape(len(record), -1), axis=1)
    ok = moved > 0
    err_lin = np.linalg.norm((f - np.concatenate([lin_tr, lin_te], 1)).reshape(len(record), -1),
                             axis=1)
    err_ana = np.linalg.norm((f - np.concatenate([ana_tr, ana_te], 1)).reshape(len(record), -1),
                             axis=1)
    return dict(width=width, seed=seed,
                rel_err_linearized=float((err_lin[ok] / moved[ok]).max()),
                rel_err_analytic_ntk=float((err_ana[ok] / moved[ok]).max()),
                final_train_loss=float(0.5 * ((f_tr[-1] - ytr) ** 2).mean()),
                traj=dict(f_tr=f_tr, f_te=f_te, lin_tr=lin_tr, lin_te=lin_te))


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        **options) -> dict:
    """Widths (default 64..4096; quick 32, 256, 1024), seeds per width (3; quick 1), steps (400;
    quick 60) at learning rate 0.5 · the largest stable one of the analytic NTK. Writes
    linearization.png (outputs over time for the widest net; error against width) and
    results.json."""
    cfg, out_dir, _ = start_run(out_dir, quick, options, QUICK, FULL)
    widths = [int(w) for w in cfg["widths"]]
    n_seeds, steps = int(cfg["seeds"]), int(cfg["steps"])
    data = make_data(seed)
    ref = relu_net(1).kernel(data[0]).ntk
    lr = 0.5 * max_learning_rate(ref, data[1].size)
    record = sorted(set(np.unique(np.geomspace(1, steps, 25).astype(int)).tolist() + [0]))
    rows = []
    with one_thread():
        for w in progress_bar(widths, "linearization", progress):
            runs = [one_width(w, seed * 1000 + s, steps, record, lr, data) for s in range(n_seeds)]
            rows.append(dict(width=w,
                             rel_err_linearized=float(np.mean([r["rel_err_linearized"]
                                                               for r in runs])),
                             rel_err_analytic_ntk=float(np.mean([r["rel_err_analytic_ntk"]
                                                                 for r in runs])),
                             final_train_loss=float(np.mean([r["final_train_loss"]
                                                             for r in runs])),
                             last=runs[0]))
    slope_lin = fit_loglog(widths, [r["rel_err_linearized"] for r in rows])[0]
    slope_ana = fit_loglog(widths, [r["rel_err_analytic_ntk"] for r in rows])[0]
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    tr = rows[-1]["last"]["traj"]
    for j, color in zip(range(3), ("tab:blue", "tab:orange", "tab:green")):
        a1.plot(record, tr["f_te"][:, j, 0], color=color, lw=2, label=f"net, test {j}")
        a1.plot(record, tr["lin_te"][:, j, 0], "--", color="k", lw=1)
    for j, color in zip(range(2), ("tab:red", "tab:purple")):
        a1.plot(record, tr["f_tr"][:, j, 0], color=color, lw=2, label=f"net, train {j}")
        a1.plot(record, tr["lin_tr"][:, j, 0], "--", color="k", lw=1)
    a1.plot([], [], "--", color="k", label="linearized (empirical NTK)")
    a1.set_xscale("symlog", linthresh=1)
    a1.set_xlabel("gradient-descent step")
    a1.set_ylabel("output")
    a1.set_title(f"width {widths[-1]}: network vs f_t^lin", fontsize=9)
    a1.legend(fontsize=7)
    a2.loglog(widths, [r["rel_err_linearized"] for r in rows], "o-",
              label=f"vs own linearization (slope {slope_lin:.2f})")
    a2.loglog(widths, [r["rel_err_analytic_ntk"] for r in rows], "s-",
              label=f"vs infinite-width NTK (slope {slope_ana:.2f})")
    w = np.asarray(widths, float)
    a2.loglog(w, rows[0]["rel_err_linearized"] * (w / w[0]) ** -0.5, ":", color="gray",
              label="width^-1/2")
    a2.set_xlabel("width")
    a2.set_ylabel("max_t |f_t - f_t^lin| / |f_t - f_0|")
    a2.legend(fontsize=7)
    save_figure(fig, out_dir / "linearization.png")
    results = {
        "experiment": "linearization", "quick": quick, "seed": seed, "steps": steps,
        "learning_rate": lr, "loss": "mean", "seeds_per_width": n_seeds,
        "widths": [{k: v for k, v in r.items() if k != "last"} for r in rows],
        "slope_linearized": slope_lin, "slope_analytic_ntk": slope_ana,
        "figures": ["linearization.png"],
    }
    return write_results(out_dir, results)
