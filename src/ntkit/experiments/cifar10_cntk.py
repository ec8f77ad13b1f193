"""Arora et al. 2019 (seed 001), Table 1: CNTK kernel regression on CIFAR-10.

Protocol (the paper's Sec. 4 and its released code): images divided by 255 and standardized
per channel with the training statistics; a depth-d CNTK has d - 1 layers of [3x3 "same"
convolution, ReLU] with c_σ = 2 (W_std = sqrt(2)) and no biases, then the readout:
CNTK-V flattens (the trace of Θ over positions) into a trainable linear layer; CNTK-GAP
averages over all pixel pairs, with the first and last layers fixed (trainable=False).
Kernel regression without regularization on targets -0.1 + e_c (0.9 for the true class);
the prediction is the argmax of K(test, train) K(train, train)⁻¹ Y.

Columns: CNTK-V-2K on the 2,000 first lossless training images (the data README: the first
4,000 training images are the only lossless ones) against the 10,000 test images, next to the
paper's column; CNTK-GAP on the subset given by ``gap_n_train``/``gap_n_test`` (test images
taken evenly across the class-sorted test set, so that classes are balanced).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import scipy.linalg
import torch

from .common import progress_bar, pyplot, save_figure, start_run, write_results

PAPER_V_2K = {3: 40.94, 4: 42.54, 6: 43.43, 11: 43.42, 21: 42.53}
PAPER_GAP_2K = {3: 49.71, 4: 51.06, 6: 51.73, 11: 51.92, 21: 52.22}
PAPER_GAP_FULL = {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08}
# gap_depths None: the V column's depths; gap_n_train/gap_n_test None: 250 on CUDA, 0 on the CPU
# (the GAP column skipped). Quick: tiny subsets, GAP images average-pooled to 8x8.
FULL = {"depths": [3, 4, 6, 11, 21], "n_train": 2000, "n_test": 10000, "gap_depths": None,
        "gap_n_train": None, "gap_n_test": None, "v_column": True}
QUICK = {"depths": [3, 4], "n_train": 20, "n_test": 20, "gap_depths": [3], "gap_n_train": 10,
         "gap_n_test": 10, "v_column": True}


def cntk(depth: int, gap: bool):
    """The depth-d CNTK of the paper's code: d - 1 conv layers + the readout layer."""
    from ..layers.presets import cntk as preset
    return preset(depth, "gap" if gap else "flatten")


def _balanced(n: int, total: int) -> np.ndarray:
    step = max(1, total // n)
    return np.arange(n) * step


def regression_accuracy(k_train: np.ndarray, k_test: np.ndarray, y_train: np.ndarray,
                        y_test: np.ndarray) -> float:
    """Accuracy (%) of kernel regression without regularization, targets -0.1 + e_c."""
    from ..data.cifar10 import cifar10_targets
    t = cifar10_targets(y_train)
    try:
        alpha = scipy.linalg.solve(k_train, t, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        alpha = scipy.linalg.lstsq(k_train, t)[0]
    pred = (k_test @ alpha).argmax(1)
    return float(100.0 * np.mean(pred == y_test))


def _kernels(arch, x_train, x_test, device, dtype):
    xtr = torch.as_tensor(x_train, dtype=dtype, device=device)
    xte = torch.as_tensor(x_test, dtype=dtype, device=device)
    k_tr = arch.kernel(xtr, get="ntk").ntk.double().cpu().numpy()
    k_te = arch.kernel(xte, xtr, get="ntk").ntk.double().cpu().numpy()
    return k_tr, k_te


def _plot(rows: List[Dict], path: Path, gap_label: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    d = [r["depth"] for r in rows]
    ax.plot(d, [r["paper_v_2k"] for r in rows], "k--o", label="paper CNTK-V-2K")
    if all(r["ntkit_v"] is not None for r in rows):
        ax.plot(d, [r["ntkit_v"] for r in rows], "b-o", label="ntkit CNTK-V-2K")
    gd = [r["depth"] for r in rows if r.get("ntkit_gap") is not None]
    if gd:
        ax.plot(gd, [r["ntkit_gap"] for r in rows if r.get("ntkit_gap") is not None], "r-s",
                label=f"ntkit CNTK-GAP ({gap_label})")
    ax.set_xlabel("depth")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10 CNTK (Arora et al. 2019)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, *, data_path=None,
        device: str = "auto", dtype: str = "float64", progress: Optional[bool] = None,
        **options) -> dict:
    """Write table.md, results.json and cifar10_cntk.png into ``out_dir``; return the results.

    Options (``FULL``; ``QUICK`` for tests): ``depths``, ``n_train``/``n_test`` of the V column
    (2,000 / 10,000 at depths 3, 4, 6, 11, 21), ``gap_depths``, ``gap_n_train``/``gap_n_test`` of
    the GAP column (default 250 / 250 on CUDA, skipped on the CPU), ``v_column``. Quick: V on
    20 / 20 images at depths 3, 4, GAP on 10 / 10 images average-pooled to 8x8 at depth 3.
    ``seed`` is unused (no randomness). ``progress``: a bar over the kernels on stderr.
    """
    from ..data.cifar10 import load_cifar10
    cfg, out_dir, _ = start_run(out_dir, quick, options, QUICK, FULL)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    dt = {"float64": torch.float64, "float32": torch.float32}[str(dtype)]
    depths = tuple(int(d) for d in cfg["depths"])
    n_train, n_test, v_column = int(cfg["n_train"]), int(cfg["n_test"]), bool(cfg["v_column"])
    gap_depths = depths if cfg["gap_depths"] is None else tuple(int(d) for d in cfg["gap_depths"])
    default_gap = 250 if dev.type == "cuda" else 0
    gap_n_train = default_gap if cfg["gap_n_train"] is None else int(cfg["gap_n_train"])
    gap_n_test = default_gap if cfg["gap_n_test"] is None else int(cfg["gap_n_test"])
    x_tr, y_tr, x_te, y_te = load_cifar10(data_path, lossless=True, n_train=n_train,
                                          dtype=np.float64)
    te = _balanced(n_test, len(x_te))
    x_te, y_te = x_te[te], y_te[te]
    rows, timings = [], {}
    gap_runs = [d for d in depths if d in gap_depths] if gap_n_train and gap_n_test else []
    bar = progress_bar(None, "cifar10-cntk", progress, unit="kernel",
                       total=len(depths) * v_column + len(gap_runs))
    for d in depths:
        acc = None
        if v_column:
            bar.set_postfix_str(f"CNTK-V depth {d}")
            t0 = time.perf_counter()
            k_tr, k_te = _kernels(cntk(d, gap=False), x_tr, x_te, dev, dt)
            bar.update(1)
            timings[f"v_{d}"] = time.perf_counter() - t0
            acc = regression_accuracy(k_tr, k_te, y_tr, y_te)
        rows.append({"depth": d, "paper_v_2k": PAPER_V_2K.get(d), "ntkit_v": acc,
                     "paper_gap_2k": PAPER_GAP_2K.get(d), "ntkit_gap": None})
    gap_label = "skipped"
    if gap_n_train and gap_n_test:
        gtr = np.arange(gap_n_train)
        gte = _balanced(gap_n_test, len(x_te))
        xg_tr, yg_tr, xg_te, yg_te = x_tr[gtr], y_tr[gtr], x_te[gte], y_te[gte]
        if quick:  # 4x4 average pooling to 8x8 images keeps the test fast
            pool = lambda x: x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5))
            xg_tr, xg_te = pool(xg_tr), pool(xg_te)
        gap_label = (f"first {gap_n_train} lossless train images vs {gap_n_test} test images "
                     f"(every {max(1, len(x_te) // gap_n_test) * max(1, 10000 // n_test)}th of "
                     f"the class-sorted test set)" + (", pooled to 8x8" if quick else ""))
        for r in rows:
            if r["depth"] not in gap_depths:
                continue
            bar.set_postfix_str(f"CNTK-GAP depth {r['depth']}")
            t0 = time.perf_counter()
            k_tr, k_te = _kernels(cntk(r["depth"], gap=True), xg_tr, xg_te, dev, dt)
            bar.update(1)
            timings[f"gap_{r['depth']}"] = time.perf_counter() - t0
            r["ntkit_gap"] = regression_accuracy(k_tr, k_te, yg_tr, yg_te)
    results = {
        "experiment": "cifar10-cntk", "quick": quick, "device": str(dev), "dtype": str(dtype),
        "v_subset": f"first {n_train} lossless train images vs {n_test} test images",
        "gap_subset": gap_label, "rows": rows, "seconds": timings,
        "paper_gap_full_data": PAPER_GAP_FULL,
    }
    lines = ["| depth | paper CNTK-V-2K | ntkit CNTK-V-2K | paper CNTK-GAP-2K | ntkit CNTK-GAP (subset) |",
             "|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"
    for r in rows:
        lines.append(f"| {r['depth']} | {fmt(r['paper_v_2k'])} | {fmt(r['ntkit_v'])} | "
                     f"{fmt(r['paper_gap_2k'])} | {fmt(r['ntkit_gap'])} |")
    lines += ["", f"CNTK-V: {results['v_subset']}. CNTK-GAP: {gap_label}.",
              f"Device {dev}, {dtype}."]
    results["markdown"] = "\n".join(lines)
    (out_dir / "table.md").write_text(results["markdown"] + "\n")
    bar.close()
    _plot(rows, out_dir / "cifar10_cntk.png", gap_label)
    return write_results(out_dir, results, indent=2)
