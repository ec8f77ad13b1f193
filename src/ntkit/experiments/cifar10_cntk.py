"""Arora et al. 2019 (seed 001), Table 1: CNTK kernel regression on CIFAR-10.

Protocol (the paper's Sec. 4 and its released code): images divided by 255 and standardized
per channel with the training statistics; a depth-d CNTK has d - 1 layers of [3x3 "same"
convolution, ReLU] with c_σ = 2 (W_std = sqrt(2)) and no biases, then the readout:
CNTK-V flattens (the trace of Θ over positions) into a trainable linear layer; CNTK-GAP
averages over all pixel pairs, with the first and last layers fixed (trainable=False).
Kernel regression without regularization on targets -0.1 + e_c (0.9 for the true class);
the prediction is the argmax of K(test, train) K(train, train)⁻¹ Y.

The data, exactly (shared/data/README.md; every output says it):

* training images: the first ``n_train`` CIFAR-10 training images (data_batch_1, original
  order) with their **lossless** pixels (``x_train_first4000_lossless``: only the first 4,000
  exist lossless, so ``n_train`` ≤ 4,000);
* test images: ``n_test`` of the 10,000 test images, **decoded from JPEG** (quality-75 tables,
  4:2:0 chroma; about 8 of 255 RMSE against the lossless pixels), every (10,000/n_test)-th of
  the class-sorted test set, so the classes are balanced. The paper's test images are
  lossless: the JPEG error (which the training images lack) can move the accuracies somewhat;
* normalization: divide by 255, then per channel subtract the mean and divide by the standard
  deviation of the ``n_train`` lossless training images of the run (recorded in results.json);
  the same statistics are applied to the test images and to the GAP column's subset.

A paper column is shown next to an ntkit column only when both use the same number of
training images (the paper's CNTK-V-2K and CNTK-GAP-2K use 2,000); a column on another
training size is labelled with its own size, and the paper's value is left out. Test
accuracies carry a 95% Wilson interval for the ``n_test`` test images.

Full run: the paper's 2,000 training images and the whole test set at depths 3, 4, 6, 11, 21,
and CNTK-GAP on 250 / 250 images when a GPU is present (skipped on the CPU, where its
pixel-pair kernel takes hours; ``gap_n_train`` / ``gap_n_test`` force it). On a 2-core CPU the
V column alone takes about a day in float64: run a reduced configuration there (fewer depths
and test images), which results.json and the table record. Each (column, depth) is one unit
of ``experiments.units``: a run resumes after a crash, splits with ``shard``, and a later run
with more depths in the same folder computes only the new ones.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import scipy.linalg
import torch

from .common import progress_bar, pyplot, save_figure, start_run, write_results
from .units import Shard, UnitStore
from ..data.cifar10 import reads_jpeg_subset

PAPER_N_TRAIN = 2000
PAPER_V_2K = {3: 40.94, 4: 42.54, 6: 43.43, 11: 43.42, 21: 42.53}
PAPER_GAP_2K = {3: 49.71, 4: 51.06, 6: 51.73, 11: 51.92, 21: 52.22}
PAPER_GAP_FULL = {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08}
LOSSLESS_TRAIN_IMAGES = 4000
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


def balanced_indices(n: int, total: int) -> np.ndarray:
    """Every (total // n)-th index of ``range(total)``, n of them: on the class-sorted test set
    (1,000 images per class) n/10 images of each class when n divides 10,000."""
    if not 1 <= n <= total:
        raise ValueError(f"cannot take {n} of {total} test images")
    return np.arange(n) * (total // n)


def wilson_interval(accuracy_pct: float, n: int, z: float = 1.959964) -> List[float]:
    """The 95% Wilson score interval (%) of an accuracy measured on ``n`` test images."""
    p = accuracy_pct / 100.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [100.0 * (centre - half), 100.0 * (centre + half)]


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


def data_statement(n_train: int, n_test: int, total_test: int, mean, std, jpeg: bool) -> Dict:
    """What the run's images are, for results.json, the table and the report."""
    step = total_test // n_test
    test_kind = ("decoded from JPEG (quality-75 tables, 4:2:0 chroma subsampling; RMSE about "
                 "8 of 255 against lossless pixels)" if jpeg else "lossless (original batches)")
    return {
        "train": f"the first {n_train} CIFAR-10 training images (data_batch_1, original order), "
                 f"lossless pixels" + (" (x_train_first4000_lossless of cifar10_subset.npz)"
                                       if jpeg else ""),
        "test": f"{n_test} of the {total_test} test images, {test_kind}; every {step}th image of "
                f"the test set" + (" (sorted by class: balanced classes)" if jpeg else ""),
        "test_images_jpeg": bool(jpeg),
        "normalization": f"pixels / 255, then per channel minus the mean and divided by the "
                         f"standard deviation of the {n_train} lossless training images of this "
                         f"run; the same statistics applied to the test images",
        "channel_mean": [round(float(v), 6) for v in mean],
        "channel_std": [round(float(v), 6) for v in std],
        "caveat": ("the paper's test images are lossless; here only the test images carry JPEG "
                   "error, which can move the accuracies somewhat") if jpeg else "",
    }


def _plot(rows: List[Dict], path: Path, v_label: str, gap_label: str, test_kind: str
          ) -> List[str]:
    """The accuracies against depth, with their Wilson intervals and the paper's columns where
    comparable; returns the x tick labels (the depths)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    depths = [r["depth"] for r in rows]

    pad = max(1.0, 0.06 * (max(depths) - min(depths)))
    dodge = 0.12 * pad

    def series(key, paper_key, style, paper_style, label, paper_label, shift):
        have = [r for r in rows if r[key] is not None]
        if have:
            d = [r["depth"] + shift for r in have]
            acc = np.array([r[key] for r in have])
            ci = np.array([r[key + "_interval"] for r in have])
            ax.errorbar(d, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], fmt=style, capsize=3,
                        label=label)
        paper = [r for r in rows if r.get(paper_key) is not None]
        if paper:
            ax.plot([r["depth"] for r in paper], [r[paper_key] for r in paper], paper_style,
                    label=paper_label)

    series("ntkit_v", "paper_v_2k", "b-o", "b--x", f"ntkit CNTK-V ({v_label})",
           "paper CNTK-V-2K", -dodge)
    series("ntkit_gap", "paper_gap_2k", "r-s", "r--x", f"ntkit CNTK-GAP ({gap_label})",
           "paper CNTK-GAP-2K", dodge)
    ax.set_xticks(depths)
    ax.set_xticklabels([str(d) for d in depths])
    ax.set_xlim(min(depths) - pad, max(depths) + pad)
    ax.set_xlabel("depth d (d − 1 convolution layers)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"CIFAR-10 CNTK (Arora et al. 2019, Table 1)\ntraining images lossless, "
                 f"test images {test_kind}; bars: 95% Wilson intervals", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)
    save_figure(fig, path, dpi=110)
    return [t.get_text() for t in ax.get_xticklabels()]


def _markdown(rows: List[Dict], data: Dict, v_label: str, gap_label: str, gap_note: str,
              device: str, dtype: str) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    interval = lambda r, k: ("" if r[k] is None else  # noqa: E731
                             f" [{r[k + '_interval'][0]:.1f}, {r[k + '_interval'][1]:.1f}]")
    show_pv = any(r.get("paper_v_2k") is not None for r in rows)
    show_pg = any(r.get("paper_gap_2k") is not None for r in rows)
    head = ["depth"] + (["paper CNTK-V-2K"] if show_pv else []) + [f"ntkit CNTK-V ({v_label})"]
    head += [f"ntkit CNTK-GAP ({gap_label})"] + (["paper CNTK-GAP-2K"] if show_pg else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["depth"])] + ([fmt(r["paper_v_2k"])] if show_pv else [])
        cells += [fmt(r["ntkit_v"]) + interval(r, "ntkit_v"),
                  fmt(r["ntkit_gap"]) + interval(r, "ntkit_gap")]
        cells += [fmt(r["paper_gap_2k"])] if show_pg else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy (%) with its 95% Wilson interval over the test images.",
              f"Training images: {data['train']}.", f"Test images: {data['test']}.",
              f"Normalization: {data['normalization']}.", gap_note]
    if data["caveat"]:
        lines.append(f"Caveat: {data['caveat']}.")
    lines.append(f"Device {device}, {dtype}.")
    return "\n".join(line for line in lines if line is not None)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available to torch")
    return torch.device(device)


def run(out_dir: Path, quick: bool = False, seed: int = 0, *, data_path=None,
        device: str = "auto", dtype: str = "float64", progress: Optional[bool] = None,
        shard: Optional[str] = None, **options) -> dict:
    """Write table.md, results.json and cifar10_cntk.png into ``out_dir``; return the results.

    Options (``FULL``; ``QUICK`` for tests): ``depths``, ``n_train``/``n_test`` of the V column
    (2,000 / 10,000 at depths 3, 4, 6, 11, 21), ``gap_depths``, ``gap_n_train``/``gap_n_test`` of
    the GAP column (default 250 / 250 on CUDA, skipped on the CPU), ``v_column``. Quick: V on
    20 / 20 images at depths 3, 4, GAP on 10 / 10 images average-pooled to 8x8 at depth 3.
    ``device``: 'auto' (CUDA when present), 'cpu' or 'cuda'. ``shard`` 'I/K': compute only
    this shard's units and return a partial record (the run without it merges).
    ``seed`` is unused (no randomness). ``progress``: a bar over the kernels on stderr.
    """
    from ..data.cifar10 import load_cifar10
    cfg, out_dir, start = start_run(out_dir, quick, options, QUICK, FULL)
    dev = _device(str(device))
    dt = {"float64": torch.float64, "float32": torch.float32}[str(dtype)]
    depths = tuple(int(d) for d in cfg["depths"])
    n_train, n_test, v_column = int(cfg["n_train"]), int(cfg["n_test"]), bool(cfg["v_column"])
    jpeg = reads_jpeg_subset(data_path)
    if jpeg and n_train > LOSSLESS_TRAIN_IMAGES:
        raise ValueError(f"n_train={n_train}: only the first {LOSSLESS_TRAIN_IMAGES} training "
                         f"images exist lossless in cifar10_subset.npz")
    gap_depths = depths if cfg["gap_depths"] is None else tuple(int(d) for d in cfg["gap_depths"])
    default_gap = 250 if dev.type == "cuda" else 0
    gap_n_train = default_gap if cfg["gap_n_train"] is None else int(cfg["gap_n_train"])
    gap_n_test = default_gap if cfg["gap_n_test"] is None else int(cfg["gap_n_test"])
    gap_on = bool(gap_n_train and gap_n_test)
    x_tr, y_tr, x_te, y_te = load_cifar10(data_path, lossless=True, n_train=n_train,
                                          dtype=np.float64)
    raw = load_cifar10(data_path, lossless=True, n_train=n_train, n_test=1, dtype=np.float64,
                       standardize=False).x_train
    data = data_statement(n_train, n_test, len(x_te), raw.mean(axis=(0, 2, 3)),
                          raw.std(axis=(0, 2, 3)), jpeg)
    te = balanced_indices(n_test, len(x_te))
    x_te, y_te = x_te[te], y_te[te]
    if gap_on:
        if gap_n_train > n_train or gap_n_test > n_test:
            raise ValueError(f"the GAP subset ({gap_n_train} / {gap_n_test}) must lie within the "
                             f"V column's images ({n_train} / {n_test})")
        gte = balanced_indices(gap_n_test, len(x_te))
        gap_data = (x_tr[:gap_n_train], y_tr[:gap_n_train], x_te[gte], y_te[gte])
        if quick:  # 4x4 average pooling to 8x8 images keeps the test fast
            pool = lambda x: x.reshape(len(x), 3, 8, 4, 8, 4).mean(axis=(3, 5))  # noqa: E731
            gap_data = (pool(gap_data[0]), gap_data[1], pool(gap_data[2]), gap_data[3])
    keys = ([f"v_{d}" for d in depths] if v_column else [])
    keys += [f"gap_{d}" for d in depths if d in gap_depths] if gap_on else []

    def unit(key: str) -> Dict:
        column, d = key.split("_")
        xa, ya, xb, yb = (x_tr, y_tr, x_te, y_te) if column == "v" else gap_data
        t0 = time.perf_counter()
        k_tr, k_te = _kernels(cntk(int(d), gap=column == "gap"), xa, xb, dev, dt)
        seconds = time.perf_counter() - t0
        return {"accuracy": regression_accuracy(k_tr, k_te, ya, yb), "kernel_seconds": seconds,
                "device": str(dev)}

    # a unit's value depends on these alone (not on the other depths of the run): a run with
    # more depths in the same folder reuses the finished ones
    store = UnitStore(out_dir, "cifar10-cntk", {
        "n_train": n_train, "n_test": n_test, "gap_n_train": gap_n_train,
        "gap_n_test": gap_n_test, "dtype": str(dtype), "quick": bool(quick), "jpeg_test": jpeg}, 0)
    bar = lambda todo: progress_bar(todo, "cifar10-cntk", progress, unit="kernel")  # noqa: E731
    done = store.compute(keys, unit, shard=Shard.parse(shard) if shard else None, progress=bar)
    if shard:
        return {"experiment": "cifar10-cntk", "shard": str(shard), "units_done": len(done),
                "units_total": len(keys), "partial": True}

    comparable_v = n_train == PAPER_N_TRAIN
    comparable_gap = gap_n_train == PAPER_N_TRAIN
    rows = []
    for d in depths:
        v, g = done.get(f"v_{d}"), done.get(f"gap_{d}")
        rows.append({
            "depth": d,
            "ntkit_v": None if v is None else v["accuracy"],
            "ntkit_v_interval": None if v is None else wilson_interval(v["accuracy"], n_test),
            "paper_v_2k": PAPER_V_2K.get(d) if comparable_v and v is not None else None,
            "ntkit_gap": None if g is None else g["accuracy"],
            "ntkit_gap_interval": None if g is None else wilson_interval(g["accuracy"], gap_n_test),
            "paper_gap_2k": PAPER_GAP_2K.get(d) if comparable_gap and g is not None else None,
        })
    v_label = f"{n_train} train / {n_test} test"
    gap_label = f"{gap_n_train} train / {gap_n_test} test" if gap_on else "not run"
    if gap_on:
        gap_note = (f"CNTK-GAP: the first {gap_n_train} of those training images against "
                    f"{gap_n_test} of the test images (balanced)"
                    + (", average-pooled to 8x8 (quick)" if quick else "") + ".")
    else:
        gap_note = ("CNTK-GAP: not run (the default on the CPU, where its pixel-pair kernel "
                    "takes hours; set gap_n_train and gap_n_test to run it).")
    not_shown = []
    if not comparable_v:
        not_shown.append(f"CNTK-V-2K (the paper trains on {PAPER_N_TRAIN} images, this run on "
                         f"{n_train})")
    if gap_on and not comparable_gap:
        not_shown.append(f"CNTK-GAP-2K (the paper trains on {PAPER_N_TRAIN} images, this run on "
                         f"{gap_n_train})")
    if not_shown:
        gap_note += (" Paper columns not shown, not comparable: " + "; ".join(not_shown) + ".")
    figure_ticks = _plot(rows, out_dir / "cifar10_cntk.png", v_label, gap_label,
                         "JPEG-decoded" if jpeg else "lossless")
    kernel_seconds = {k: round(v["kernel_seconds"], 3) for k, v in done.items()}
    results = {
        "experiment": "cifar10-cntk", "quick": bool(quick), "device": str(dev),
        "dtype": str(dtype),
        "config": {**cfg, "gap_n_train": gap_n_train, "gap_n_test": gap_n_test,
                   "dtype": str(dtype), "device": str(dev)},
        "data": data, "v_subset": v_label, "gap_subset": gap_label, "gap_note": gap_note,
        "paper_columns_not_shown": not_shown, "rows": rows,
        "paper_reference": {"n_train": PAPER_N_TRAIN, "n_test": 10000,
                            "test_images": "lossless", "cntk_v_2k": PAPER_V_2K,
                            "cntk_gap_2k": PAPER_GAP_2K,
                            "cntk_gap_full_50000": PAPER_GAP_FULL},
        "kernel_seconds": kernel_seconds,
        "kernel_seconds_total": round(sum(kernel_seconds.values()), 2), "figure_depth_ticks": figure_ticks,
        "figures": ["cifar10_cntk.png"],
    }
    results["markdown"] = _markdown(rows, data, v_label, gap_label, gap_note, str(dev),
                                    str(dtype))
    (out_dir / "table.md").write_text(results["markdown"] + "\n")
    results["seconds"] = round(time.perf_counter() - start, 2)
    return write_results(out_dir, results, indent=2)
