"""A wide network trained by gradient descent follows its linearization (Lee et al. 2019;
seed 000 eq. 26): f_t^lin(x) = f₀(x) + Θ₀(x, X) Θ₀^{-1} (I − (I − ηΘ₀/N)^t) (Y − f₀(X)),
with Θ₀ the empirical NTK of the network at initialization (``nk.empirical_ntk``).

Networks: Jacot et al.'s (seed 002; Jacot et al. 2018 §6): depth L = 4 (three hidden ReLU
layers of width m), NTK parameterization, W_std = 1, b_std = β = 0.1. Each is trained by exact
full-batch gradient descent (``empirical.lowrank_gd``) on L = 1/(2N) Σ (f − y)², N = 8 inputs on
the unit sphere of R^4, y = sin(2x₁) + x₂x₃, at half the largest stable learning rate of the
analytic NTK, for 200 steps. Its outputs on the 8 training and 12 test inputs at the recorded
steps are compared with

- f_t^lin of its own empirical NTK (``MSEDynamics(discrete=True)``, exact for the linear model):
  err_lin = max_t ||f_t − f_t^lin|| / max_t ||f_t − f₀||;
- the infinite-width prediction (the same closed form with the analytic NTK, from the network's
  own f₀): err_inf, defined alike.

Rates, fitted over widths m ≥ ``x_min`` with 95% bootstrap intervals over initializations
(``rates.judge``), against the rates the seeds state:
- err_lin: m^-1. Seed 001 (Arora et al. 2019, citing Lee et al. 2019) states that in practice
  the NTK changes by O(m^-1) during training; the distance of the network to its own
  linearization is driven by that change (f_t − f_t^lin = ∫ (Θ_s − Θ₀)(…) ds). The alternative
  m^-1/2 is the order of Lee et al.'s proven bound (Thm 2.1).
- err_inf: m^-1/2, the fluctuation of Θ₀ around its limit (Jacot et al. 2018); alternative m^-1.
The verdicts come from the intervals (``statistics.rate_verdict``); the numbers of the full run
are in ``results/linearization/results.json`` (the module states none).

Smooth control (``control``, full run: erf): the same measurement on networks with erf in place
of ReLU (its units are named ``erf_w…``), judged against the same rates. The m^-1 statements
for the change of the NTK are derived for smooth activations (e.g. Dyer & Gur-Ari 2020); the
control shows whether a departure of the ReLU networks comes from the kink of ReLU.

Departures: the seeds give no widths, data or number of initializations for this experiment;
the widths (128 … 2048, fit from 256) and 10 initializations per width are sized to run in
about ten minutes on the shared two-core machine; float32 (quick: float64).

Writes ``linearization.png`` (left: outputs over time of the widest network against f_t^lin;
right: both errors against width with their fits and the stated rates) and ``results.json``.
The units (one width × one initialization) are kept under ``OUT_DIR/units`` (resumable;
``--shard i/k`` splits them).

    python -m ntkit.experiments.linearization OUT_DIR [--quick] [--seed 0]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..empirical import empirical_ntk
from ..empirical.lowrank_gd import gradient_descent, to_lowrank
from ..predict import MSEDynamics, max_learning_rate
from .common import pyplot, save_figure, standalone_main, start_run, write_results
from .rates import (STATED, flat_summary, jacot_mlp, judge, per_width, rate_panel, run_units,
                    setup_title, timing, unit_key)

FULL = {"widths": [128, 256, 512, 1024, 2048], "inits": 10, "depth": 4, "activation": "relu",
        "control": "erf", "W_std": 1.0, "b_std": 0.1, "steps": 200, "lr_fraction": 0.5, "x_min": 256,
        "dtype": "float32"}
QUICK = {"widths": [64, 128, 256, 512], "inits": 2, "depth": 4, "activation": "relu",
         "control": None, "W_std": 1.0, "b_std": 0.1, "steps": 40, "lr_fraction": 0.5, "x_min": 64,
         "dtype": "float64"}

def make_data(seed: int, n_train: int = 8, n_test: int = 12, dim: int = 4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def recorded_steps(steps: int) -> List[int]:
    """0 and about 20 steps spread geometrically up to ``steps``."""
    return sorted(set([0] + np.unique(np.geomspace(1, steps, 20).astype(int)).tolist()))


def learning_rate(cfg: Dict, seed: int) -> float:
    """``lr_fraction`` × the largest stable learning rate of the analytic NTK."""
    xtr, ytr, _, _ = make_data(seed)
    ref = jacot_mlp(1, cfg).kernel(xtr).ntk
    return float(cfg["lr_fraction"]) * max_learning_rate(ref, ytr.size)


def _relative_error(f: np.ndarray, g: np.ndarray, f0: np.ndarray) -> float:
    """max_t ||f_t − g_t|| / max_t ||f_t − f₀|| over the recorded steps (f, g: (T, points))."""
    return float(np.linalg.norm(f - g, axis=1).max() / np.linalg.norm(f - f0[None], axis=1).max())


def one_network(width: int, init: int, cfg: Dict, seed: int) -> Dict:
    """One unit: the network ``arch.init(seed·1000 + init)`` trained by gradient descent, its
    outputs at the recorded steps (train then test points), f_t^lin of its own empirical NTK,
    the analytic-NTK prediction, and the two relative errors."""
    dtype = getattr(torch, cfg["dtype"])
    xtr, ytr, xte, _ = make_data(seed)
    x_tr, x_te, y_tr = (torch.as_tensor(a) for a in (xtr, xte, ytr))
    x_all = torch.cat([x_tr, x_te])
    arch = jacot_mlp(width, cfg)
    net = arch.init((xtr.shape[1],), seed=seed * 1000 + init, dtype=dtype).eval()
    with torch.no_grad():
        f0 = net(x_all.to(dtype)).double()
    theta = empirical_ntk(net, x_all, x_tr).double()  # Θ₀(all, train)
    lazy = to_lowrank(net, cfg["steps"], len(xtr))
    del net
    lr = learning_rate(cfg, seed)
    record = recorded_steps(cfg["steps"])
    outputs, done = [], 0
    for step in record:
        if step > done:
            gradient_descent(lazy, x_tr.to(dtype), y_tr.to(dtype), step - done, lr)
            done = step
        with torch.no_grad():
            outputs.append(lazy(x_all.to(dtype)).double()[:, 0])
    f = torch.stack(outputs).numpy()
    n = len(xtr)

    def closed_form(k_all_train: torch.Tensor) -> np.ndarray:
        dyn = MSEDynamics(k_all_train[:n], y_tr, learning_rate=lr, loss="mean", discrete=True)
        return dyn.predict(record, k_all_train[n:], f0[:n], f0[n:]).numpy(), \
            dyn.predict(record, fx_train_0=f0[:n]).numpy()

    te, tr = closed_form(theta)
    lin = np.concatenate([tr[..., 0], te[..., 0]], axis=1)
    limit = arch.kernel(x_all, x_tr).ntk
    te, tr = closed_form(limit)
    inf = np.concatenate([tr[..., 0], te[..., 0]], axis=1)
    f0n = f0[:, 0].numpy()
    return {"err_lin": _relative_error(f, lin, f0n), "err_inf": _relative_error(f, inf, f0n),
            "final_train_loss": float(0.5 * ((f[-1, :n] - ytr[:, 0]) ** 2).mean()),
            "f": f.tolist(), "lin": lin.tolist()}


def plot(path: Path, widths, samples, verdicts, trajectory, cfg, quick: bool,
         control: Optional[Dict] = None) -> None:
    plt = pyplot()
    record = recorded_steps(cfg["steps"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 6.4))
    f, lin = np.asarray(trajectory["f"]), np.asarray(trajectory["lin"])
    n_tr = 8
    picks = [(n_tr + j, f"test {j}") for j in range(3)] + [(j, f"train {j}") for j in range(2)]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for (col, name), c in zip(picks, colors):
        a1.plot(record, f[:, col], color=c, lw=2, label=f"network, {name}")
        a1.plot(record, lin[:, col], "--", color="k", lw=1)
    a1.plot([], [], "--", color="k", label=r"$f_t^{lin}$ (its own empirical NTK)")
    a1.set_xscale("symlog", linthresh=1)
    a1.set_xlabel("gradient-descent step t")
    a1.set_ylabel(r"output $f_t(x)$")
    a1.set_title(f"width {widths[-1]:,}: network vs its linearization", fontsize=10)
    a1.legend(fontsize=7)
    series = [(samples["err_lin"], verdicts["err_lin"], "tab:blue", "vs own linearization", "o"),
              (samples["err_inf"], verdicts["err_inf"], "tab:orange", "vs infinite-width NTK",
               "s")]
    if control is not None:
        series.append((control["samples"]["err_lin"], control["verdicts"]["err_lin"],
                       "tab:green", f"{cfg['control']} control: vs own linearization", "^"))
    rate_panel(a2, widths, series,
               r"$\max_t \|f_t - g_t\| \,/\, \max_t \|f_t - f_0\|$",
               setup_title(cfg, cfg["inits"], quick), legend_below=True)
    save_figure(fig, path, dpi=100)


def run(out_dir: Path, quick: bool = False, seed: int = 0, progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    widths = sorted(int(w) for w in cfg["widths"])
    inits = int(cfg["inits"])
    if cfg["control"] == cfg["activation"]:
        raise ValueError(f"control must be another activation than {cfg['activation']!r} "
                         f"(or none)")
    acts = [cfg["activation"]] + ([cfg["control"]] if cfg["control"] else [])

    def key(act: str, w: int, i: int) -> str:  # the control's units carry its name
        return unit_key(w, i) if act == cfg["activation"] else f"{act}_{unit_key(w, i)}"

    by_key = {key(a, w, i): (a, w, i) for a in acts for w in widths for i in range(inits)}
    all_units, partial = run_units(
        out_dir, "linearization", cfg, seed, list(by_key),
        lambda k: one_network(by_key[k][1], by_key[k][2], dict(cfg, activation=by_key[k][0]),
                              seed), shard, progress)
    if partial is not None:
        return partial
    analyses = {}
    for act in acts:
        own = {unit_key(w, i): all_units[key(act, w, i)] for w in widths for i in range(inits)}
        samples = {k: per_width(own, widths, inits, k) for k in ("err_lin", "err_inf")}
        analyses[act] = {"values": own, "samples": samples, "verdicts": {
            k: judge(widths, samples[k], *STATED[rate], x_min=cfg["x_min"])
            for k, rate in (("err_lin", "linearization"), ("err_inf", "infinite_width"))}}
    main_run = analyses[cfg["activation"]]
    samples, verdicts, values = main_run["samples"], main_run["verdicts"], main_run["values"]
    control = analyses.get(cfg["control"]) if cfg["control"] else None
    widest = values[unit_key(widths[-1], 0)]
    plot(out_dir / "linearization.png", widths, samples, verdicts, widest, cfg, quick, control)
    rows = [{"width": w, "rel_err_linearized": float(np.mean(samples["err_lin"][j])),
             "rel_err_analytic_ntk": float(np.mean(samples["err_inf"][j])),
             "final_train_loss": float(np.mean([values[unit_key(w, i)]["final_train_loss"]
                                                for i in range(inits)])),
             "rel_err_linearized_per_init": samples["err_lin"][j],
             "rel_err_analytic_ntk_per_init": samples["err_inf"][j]}
            for j, w in enumerate(widths)]
    results = {"experiment": "linearization", "quick": quick, "config": cfg, "seed": seed,
               "architecture": f"depth-{cfg['depth']} {cfg['activation']} MLP, NTK "
                               f"parameterization, W_std={cfg['W_std']}, b_std={cfg['b_std']}",
               "learning_rate": learning_rate(cfg, seed), "loss": "mean",
               **flat_summary("linearized", verdicts["err_lin"]),
               **flat_summary("analytic_ntk", verdicts["err_inf"]),
               "rates": {"linearized": verdicts["err_lin"], "analytic_ntk": verdicts["err_inf"]},
               "widths": rows, "figures": ["linearization.png"],
               "seconds": time.perf_counter() - t0}
    if control is not None:
        cv = control["verdicts"]
        results.update(**flat_summary(f"{cfg['control']}_control_linearized", cv["err_lin"]),
                       **flat_summary(f"{cfg['control']}_control_analytic_ntk", cv["err_inf"]))
        results["control"] = {
            "activation": cfg["control"],
            "learning_rate": learning_rate(dict(cfg, activation=cfg["control"]), seed),
            "rates": {"linearized": cv["err_lin"], "analytic_ntk": cv["err_inf"]},
            "rel_err_linearized_per_init": dict(zip(map(str, widths),
                                                    control["samples"]["err_lin"])),
            "rel_err_analytic_ntk_per_init": dict(zip(map(str, widths),
                                                      control["samples"]["err_inf"]))}
    results.update(timing(all_units))
    return write_results(out_dir, results)


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {k: v for k, v in r.items() if k.startswith(
        ("linearized_", "analytic_ntk_")) or k == "seconds"}, argv)


if __name__ == "__main__":
    main()
