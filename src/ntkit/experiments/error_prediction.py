"""Jacot et al. 2018 (seed 002), "Error prediction on MNIST using the NTK": does the NTK predict
which test digits a trained wide network gets wrong?

Networks: depth 4 (four Linear layers, width 500, ReLU, W_std = 1, b_std = β = 0.1, NTK
parameterization; ``arch.init``), trained by full-batch gradient descent on the mean squared
error L = 1/(2N) Σ |f(x_i) - y_i|² (N = number of targets, y one-hot) from ``seeds``
initializations. The NTK predictor: the mean of infinitely wide networks trained the same way
for the same time (``ntkit.predict.MSEDynamics``, loss='mean', discrete steps), which has no
initialization noise. A test digit counts as misclassified when the argmax of the output is not
its label.

Reported: the error sets of each network and of the NTK predictor; their agreement rate
(fraction of test digits on which both are right or both wrong) against the rate expected by
chance if errors were independent with the same error rates, p_net p_ntk + (1-p_net)(1-p_ntk);
Cohen's κ; the 2 × 2 confusion (network wrong/right × NTK wrong/right); the fraction of the
NTK's errors the network also makes (precision of the prediction) and of the network's errors
predicted by the NTK (recall); the same for the networks' ensemble mean. Figure
``error_prediction.png``: the confusion, and the test digits both get wrong.

    ntkit experiment error-prediction [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import ntkit as nk
from ntkit.data import default_data_dir, load_digits, load_mnist
from ntkit.experiments.common import (progress_bar, save_figure, standalone_main, start_run,
                                      write_results)
from ntkit.predict import MSEDynamics

FULL = {"n_train": 1000, "n_test": 2000, "width": 500, "depth": 4, "W_std": 1.0, "b_std": 0.1,
        "steps": 1000, "lr_fraction": 0.5, "seeds": 3}
QUICK = {"n_train": 200, "n_test": 300, "width": 500, "depth": 4, "W_std": 1.0, "b_std": 0.1,
         "steps": 150, "lr_fraction": 0.5, "seeds": 2}


def architecture(cfg: dict, outputs: int) -> nk.Sequential:
    layers = []
    for _ in range(cfg["depth"] - 1):
        layers += [nk.Linear(cfg["width"], W_std=cfg["W_std"], b_std=cfg["b_std"]), nk.ReLU()]
    return nk.Sequential(*layers, nk.Linear(outputs, W_std=cfg["W_std"], b_std=cfg["b_std"]))


def load(n_train: int, n_test: int, data_dir=None):
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        data = load_mnist(folder / "mnist", dtype=np.float64)
        source = "mnist"
    except FileNotFoundError:
        data = load_digits(standardize=False)
        source = "digits (MNIST not found)"
    return (data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test],
            data.y_test[:n_test], source)


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float):
    """Full-batch gradient descent on 1/(2N) Σ (f - y)², N = y.numel(); returns final loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss = None
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((net(x) - y) ** 2).sum() / y.numel()
        loss.backward()
        opt.step()
    return float(loss.detach())


def compare(wrong_a: np.ndarray, wrong_b: np.ndarray) -> dict:
    """Agreement of two error indicator vectors (True = misclassified)."""
    pa, pb = wrong_a.mean(), wrong_b.mean()
    agree = float((wrong_a == wrong_b).mean())
    chance = float(pa * pb + (1 - pa) * (1 - pb))
    both = int((wrong_a & wrong_b).sum())
    return {"error_rate_a": float(pa), "error_rate_b": float(pb), "agreement": agree,
            "chance_agreement": chance,
            "cohen_kappa": float((agree - chance) / (1 - chance)) if chance < 1 else None,
            "confusion": {"both_wrong": both, "a_wrong_only": int((wrong_a & ~wrong_b).sum()),
                          "b_wrong_only": int((~wrong_a & wrong_b).sum()),
                          "both_right": int((~wrong_a & ~wrong_b).sum())},
            "b_errors_also_a": both / max(1, int(wrong_b.sum())),
            "a_errors_also_b": both / max(1, int(wrong_a.sum()))}


def plot(path: Path, summary: dict, x_test: np.ndarray, both: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = summary["confusion"]
    m = np.array([[conf["both_wrong"], conf["a_wrong_only"]],
                  [conf["b_wrong_only"], conf["both_right"]]])
    shown = both[:12]
    fig = plt.figure(figsize=(13, 4.6))
    ax = fig.add_subplot(1, 3, 1)
    ax.imshow(np.log1p(m), cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], ["NTK wrong", "NTK right"])
    ax.set_yticks([0, 1], ["ensemble wrong", "ensemble right"])
    ax.set_title(f"agreement {summary['agreement']:.3f} (chance {summary['chance_agreement']:.3f}), "
                 f"κ = {summary['cohen_kappa']:.2f}", fontsize=9)
    side = int(round(np.sqrt(x_test.shape[1])))
    for i, idx in enumerate(shown):
        a = fig.add_subplot(3, 9, 9 * (i // 6) + 4 + i % 6)
        a.imshow(x_test[idx].reshape(side, side), cmap="gray_r")
        a.set_axis_off()
    fig.suptitle("test digits misclassified by both the trained networks' ensemble and the NTK "
                 "predictor (right)", fontsize=10)
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, data_dir=None,
        progress: Optional[bool] = None, **options) -> dict:
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    x_tr, y_tr, x_te, y_te, source = load(int(cfg["n_train"]), int(cfg["n_test"]), data_dir)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    onehot = np.eye(classes)[y_tr]
    arch = architecture(cfg, classes)
    xt, xs = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    k_tt = arch.kernel(xt, get="ntk").ntk
    k_st = arch.kernel(xs, xt, get="ntk").ntk
    y_t = torch.from_numpy(onehot)
    dyn = MSEDynamics(k_tt, y_t, loss="mean", discrete=True)
    lr = float(cfg["lr_fraction"]) * dyn.max_learning_rate()
    dyn = MSEDynamics(k_tt, y_t, learning_rate=lr, loss="mean", discrete=True)
    ntk_out = dyn.predict(float(cfg["steps"]), k_test_train=k_st).numpy()
    ntk_wrong = ntk_out.argmax(1) != y_te
    outputs, nets = [], []
    for s in progress_bar(range(int(cfg["seeds"])), "error-prediction networks", progress):
        net = arch.init((x_tr.shape[1],), seed=seed * 100 + s, dtype=torch.float64)
        loss = train(net, xt, y_t, int(cfg["steps"]), lr)
        with torch.no_grad():
            out = net(xs).numpy()
        outputs.append(out)
        wrong = out.argmax(1) != y_te
        nets.append({"seed": seed * 100 + s, "final_loss": loss,
                     "vs_ntk": compare(wrong, ntk_wrong)})
    ens_wrong = np.mean(outputs, 0).argmax(1) != y_te
    ensemble = compare(ens_wrong, ntk_wrong)
    plot(out_dir / "error_prediction.png", ensemble, x_te, np.flatnonzero(ens_wrong & ntk_wrong))
    out = {"experiment": "error-prediction", "config": cfg, "seed": seed, "data": source,
           "learning_rate": lr, "ntk_error_rate": float(ntk_wrong.mean()),
           "networks": nets, "ensemble_vs_ntk": ensemble,
           "mean_agreement": float(np.mean([n["vs_ntk"]["agreement"] for n in nets])),
           "mean_chance_agreement": float(np.mean([n["vs_ntk"]["chance_agreement"] for n in nets])),
           "dtype": "float64", "seconds": time.perf_counter() - t0}
    write_results(out_dir, out)
    return out


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {"agreement": r["mean_agreement"],
                                             "chance": r["mean_chance_agreement"]}, argv)


if __name__ == "__main__":
    main()
