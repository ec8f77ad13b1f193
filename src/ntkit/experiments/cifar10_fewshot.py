"""Arora et al. 2020 ("Harnessing the power of infinitely wide deep nets on small-data tasks",
ICLR 2020, Sec. 5): few-shot CIFAR-10, kernel regression with the 14-layer CNTK-GAP, next to
the paper's CNTK and ResNet-34 rows; Myrtle-5 NNGP and NTK (Shankar et al. 2020) beside them.

Protocol. For each n in ``n_values`` (10, 20, 40, …, 1280) and each of ``trials`` trials, a
balanced random training set of n images (exactly n/10 per class) is drawn; kernel regression
without regularization (``diag_reg`` 0, as the paper) on the targets -0.1 + e_c (one-hot
centred by its mean 1/10, so every target row sums to 0: the convention of Arora et al.'s
released CNTK code, which the 2020 paper follows) predicts the argmax class of each test image.
A trial draws, per class, one random permutation of its candidates and takes its first n/10
for every n: the sets of one trial are nested (n = 20 contains n = 10), different trials are
independent draws (seed ``[seed, trial]``). ``pool_per_class``, when set, first draws that many
candidates per class (seed ``seed``) and the trials draw from them: it bounds the kernel's size
on a CPU; None draws from all training images.

Data: the lossless first 4,000 CIFAR-10 training images (``ntkit.data.load_cifar10``, about
400 per class; shared/data/README.md), preprocessed as Arora et al. 2019 (/255, per-channel
standardization with the statistics of those 4,000 images); the test images are the first
``test_per_class`` of each class by index (the stored test set is JPEG-decoded and sorted by
class; None: the whole 10,000). ``image_size`` < 32 average-pools the images (quick runs).

Kernels (``kernels``): "cntk14-gap" (``nk.cntk(14, "gap")``: 13 × [3x3 conv, ReLU], W_std √2,
no bias, GAP readout, first and last layers fixed, the NTK), "myrtle5-nngp" and "myrtle5-ntk"
(``nk.myrtle(5)``, one computation for both). Each kernel is computed once, on the union of the
trials' training sets (the pool) and the test subset: pool × pool and test × pool; every trial
slices its rows and columns. Device "auto": CUDA when available — then the defaults are the
whole test set and n up to 1280, the paper's scale (some 4,000 pool × 10,000 test pairs for
the CNTK-14: expect an hour or more of GPU time; ``pool_per_class`` and ``trials`` bound it) —
else the CPU configuration (``CPU`` below, what fits in the shared 2-core machine). Outputs: ``table.md``, ``results.json`` (mean ± std over trials for
each n and kernel, the per-trial accuracies, the training indices of every trial, the test
subset, device, dtype, machine, seconds) and ``cifar10_fewshot.png``.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import ntkit as nk
from ntkit.data.cifar10 import cifar10_targets, load_cifar10

from .common import progress_bar, pyplot, save_figure, standalone_main, start_run, write_results

N_VALUES = (10, 20, 40, 80, 160, 320, 640, 1280)
PAPER_CNTK = dict(zip(N_VALUES, (15.33, 18.79, 21.34, 25.48, 30.48, 36.57, 42.63, 48.86)))
PAPER_RESNET34 = dict(zip(N_VALUES, (14.59, 17.50, 19.52, 23.32, 28.30, 33.15, 41.66, 49.14)))
KERNELS = ("cntk14-gap", "myrtle5-nngp", "myrtle5-ntk")
NUM_CLASSES = 10

# None: chosen by the device (GPU: the whole test set, n up to 1280, 5 trials; CPU: ``CPU``)
FULL = {"n_values": None, "trials": None, "test_per_class": None, "pool_per_class": None,
        "kernels": list(KERNELS), "image_size": 32, "diag_reg": 0.0, "save_kernels": False,
        "threads": None}
GPU = {"n_values": list(N_VALUES), "trials": 5, "test_per_class": 1000, "pool_per_class": None}
# the shared 2-core machine: ~0.25 s per (image, image) pair for the three kernels (one thread)
CPU = {"n_values": [10, 20, 40], "trials": 5, "test_per_class": 10, "pool_per_class": 5,
       "threads": 1}
QUICK = {"n_values": [10, 20], "trials": 2, "test_per_class": 2, "pool_per_class": 3,
         "kernels": list(KERNELS), "image_size": 8, "diag_reg": 0.0, "save_kernels": False,
         "threads": 1}


# -- sampling ---------------------------------------------------------------------------------
def _check_n(n_values: Sequence[int]) -> List[int]:
    ns = sorted(int(n) for n in n_values)
    if not ns or any(n < NUM_CLASSES or n % NUM_CLASSES for n in ns):
        raise ValueError(f"n_values must be positive multiples of {NUM_CLASSES} "
                         f"(balanced sets), got {list(n_values)}")
    return ns


def _per_class(labels: np.ndarray) -> List[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]


def balanced_subsets(labels: np.ndarray, n_values: Sequence[int], trials: int, seed: int,
                     pool_per_class: Optional[int] = None) -> List[Dict[int, np.ndarray]]:
    """Per trial, {n: sorted indices into ``labels`` of a balanced set of n (n/10 per class)}.

    Trial t permutes each class's candidates with ``np.random.default_rng([seed, t])`` and takes
    the first n/10 (nested in n). ``pool_per_class``: the candidates are that many per class,
    drawn once with ``default_rng(seed)``; None: every index. ValueError when a class has too
    few candidates."""
    ns = _check_n(n_values)
    if int(trials) < 1:
        raise ValueError(f"trials must be >= 1, got {trials!r}")
    classes = _per_class(np.asarray(labels))
    if pool_per_class is not None:
        rng = np.random.default_rng(int(seed))
        k = int(pool_per_class)
        short = [c for c, idx in enumerate(classes) if len(idx) < k]
        if short:
            raise ValueError(f"pool_per_class={k}: class(es) {short} have fewer images")
        classes = [np.sort(rng.choice(idx, size=k, replace=False)) for idx in classes]
    need = ns[-1] // NUM_CLASSES
    short = [c for c, idx in enumerate(classes) if len(idx) < need]
    if short:
        raise ValueError(f"n={ns[-1]} needs {need} images per class; class(es) {short} have "
                         f"fewer candidates (raise pool_per_class or lower n_values)")
    out = []
    for t in range(int(trials)):
        rng = np.random.default_rng([int(seed), t])
        perms = [rng.permutation(idx) for idx in classes]
        out.append({n: np.sort(np.concatenate([p[:n // NUM_CLASSES] for p in perms]))
                    for n in ns})
    return out


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` images of each class (by index), sorted."""
    picks = [idx[:int(k)] for idx in _per_class(np.asarray(labels))]
    if any(len(p) < int(k) for p in picks):
        raise ValueError(f"test_per_class={k}: some class has fewer test images")
    return np.sort(np.concatenate(picks))


# -- kernels and regression -------------------------------------------------------------------
def regression_accuracy(k_train: np.ndarray, k_test_train: np.ndarray, y_train: np.ndarray,
                        y_test: np.ndarray, diag_reg: float = 0.0) -> float:
    """Test accuracy (%) of kernel regression on the targets -0.1 + e_c
    (``ntkit.data.cifar10.cifar10_targets``): argmax of K(test, train) (K(train, train) +
    ρ I)⁻¹ Y, ρ = diag_reg · mean diag K (``nk.predict.gp_inference``), in float64."""
    predict = nk.predict.gp_inference(torch.as_tensor(k_train, dtype=torch.float64),
                                      torch.as_tensor(cifar10_targets(y_train)), diag_reg=diag_reg)
    mean = predict("ntk", torch.as_tensor(k_test_train, dtype=torch.float64))
    return float(100.0 * np.mean(mean.argmax(1).numpy() == np.asarray(y_test)))


def architectures(names: Sequence[str], image_size: int
                  ) -> Dict[str, Tuple[nk.Sequential, Tuple[str, ...]]]:
    """{architecture: (nk.Sequential, kernels to get)} covering the kernel ``names``."""
    unknown = sorted(set(names) - set(KERNELS))
    if unknown or not names:
        raise ValueError(f"kernels: unknown {unknown or 'empty list'}; choose from {KERNELS}")
    out: Dict[str, Tuple[nk.Sequential, Tuple[str, ...]]] = {}
    if "cntk14-gap" in names:
        out["cntk14-gap"] = (nk.cntk(14, "gap"), ("ntk",))
    myrtle = tuple(g for g in ("nngp", "ntk") if f"myrtle5-{g}" in names)
    if myrtle:
        if image_size % 4:
            raise ValueError(f"Myrtle-5 needs an image size divisible by 4, got {image_size}")
        out["myrtle5"] = (nk.myrtle(5, pool_size=image_size // 4), myrtle)
    return out


def _kernel_matrices(arch, get, x_pool, x_test, bar) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{g: (pool × pool, test × pool)} as float64 numpy arrays."""
    def tick(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()
    k_pp = arch.kernel(x_pool, get=get, progress=tick)
    k_tp = arch.kernel(x_test, x_pool, get=get, progress=tick)
    return {g: (getattr(k_pp, g).double().cpu().numpy(), getattr(k_tp, g).double().cpu().numpy())
            for g in get}


def _saved(path: Path, pool: np.ndarray, test: np.ndarray, get, dtype: str, size: int):
    """The matrices of ``path`` (a previous run's kernels-NAME.npz) if it holds the same pool,
    test images, kernels, dtype and image size; else None."""
    if not path.is_file():
        return None
    with np.load(path) as z:
        same = (np.array_equal(z["pool"], pool) and np.array_equal(z["test"], test)
                and str(z["dtype"]) == dtype and int(z["image_size"]) == size
                and all(f"{g}/pool" in z.files for g in get))
        return {g: (z[f"{g}/pool"], z[f"{g}/test_pool"]) for g in get} if same else None


def _all_kernels(cfg: Dict, size: int, dtype: str, x_pool, x_test, pool: np.ndarray,
                 test_idx: np.ndarray, out_dir: Path, progress):
    """({kernel: (pool × pool, test × pool)}, {architecture: seconds}, [reused files]): each
    architecture computed once (with ``cfg["threads"]`` torch threads), or read back from its
    kernels-NAME.npz when ``save_kernels`` and it holds the same images."""
    seconds: Dict[str, float] = {}
    matrices: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    reused: List[str] = []
    threads = torch.get_num_threads()
    if cfg["threads"] is not None:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        for name, (arch, get) in architectures(cfg["kernels"], size).items():
            t0 = time.perf_counter()
            path = out_dir / f"kernels-{name}.npz"
            mats = _saved(path, pool, test_idx, get, dtype, size) if cfg["save_kernels"] else None
            if mats is not None:
                reused.append(path.name)
            else:
                bar = progress_bar(None, f"cifar10-fewshot {name}", progress, unit="tile")
                mats = _kernel_matrices(arch, get, x_pool, x_test, bar)
                bar.close()
                seconds[name] = time.perf_counter() - t0
                if cfg["save_kernels"]:
                    np.savez(path, pool=pool, test=test_idx, dtype=dtype, image_size=size,
                             **{f"{g}/pool": m[0] for g, m in mats.items()},
                             **{f"{g}/test_pool": m[1] for g, m in mats.items()})
            for g, m in mats.items():
                matrices[f"{name}-{g}" if name == "myrtle5" else name] = m
    finally:
        torch.set_num_threads(threads)
    return matrices, seconds, reused


def trial_accuracies(k_pool: np.ndarray, k_test_pool: np.ndarray, pool: np.ndarray,
                     subsets: List[Dict[int, np.ndarray]], y_train: np.ndarray,
                     y_test: np.ndarray, diag_reg: float) -> Dict[int, List[float]]:
    """{n: [accuracy of each trial]} with each trial's rows and columns sliced out of the pool
    kernels (``pool``: the sorted training indices the pool rows stand for)."""
    out: Dict[int, List[float]] = {}
    for sets in subsets:
        for n, idx in sets.items():
            at = np.searchsorted(pool, idx)
            acc = regression_accuracy(k_pool[np.ix_(at, at)], k_test_pool[:, at], y_train[idx],
                                      y_test, diag_reg)
            out.setdefault(n, []).append(acc)
    return out


# -- output -----------------------------------------------------------------------------------
def _machine() -> Dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": list(load) if load else None}


def _cell(stats: Optional[Dict]) -> str:
    return "–" if stats is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _markdown(results: Dict) -> str:
    kernels = results["kernels"]
    head = ["n", "paper CNTK", "paper ResNet-34"] + [f"ntkit {k}" for k in kernels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for r in results["rows"]:
        lines.append(f"| {r['n']} | {fmt(r['paper_cntk'])} | {fmt(r['paper_resnet34'])} | "
                     + " | ".join(_cell(r["accuracy"].get(k)) for k in kernels) + " |")
    p = results["protocol"]
    lines += ["", "Test accuracy (%), mean ± std (ddof 0) over "
              f"{results['trials']} trials of balanced random training sets. {p['train']} "
              f"{p['test']} {p['regression']}",
              f"Device {results['device']}, {results['dtype']}; kernels on {results['pool_size']}"
              f" pool × {results['n_test']} test images; {results['seconds']['total']:.0f} s.",
              "Paper rows: Arora et al. 2020, full test set, 32x32 images."]
    return "\n".join(lines)


def _plot(results: Dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    ns = list(N_VALUES)
    ax.plot(ns, [PAPER_CNTK[n] for n in ns], "k--o", ms=3, lw=1, label="paper: CNTK (14-layer GAP)")
    ax.plot(ns, [PAPER_RESNET34[n] for n in ns], "k:s", ms=3, lw=1, label="paper: ResNet-34")
    styles = {"cntk14-gap": "C3-o", "myrtle5-nngp": "C0-^", "myrtle5-ntk": "C2-v"}
    for i, k in enumerate(results["kernels"]):
        rows = [r for r in results["rows"] if k in r["accuracy"]]
        dodge = 2.0 ** (0.05 * (i - 1))  # side by side, so that the error bars stay apart
        ax.errorbar([r["n"] * dodge for r in rows], [r["accuracy"][k]["mean"] for r in rows],
                    yerr=[r["accuracy"][k]["std"] for r in rows], fmt=styles[k], capsize=3,
                    label=f"ntkit {k}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("training images n (n/10 per class)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Few-shot CIFAR-10 ({results['n_test']} test images, "
                 f"{results['trials']} trials)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, *, data_path=None,
        device: str = "auto", dtype: str = "float32", progress: Optional[bool] = None,
        **options) -> dict:
    """Write table.md, results.json and cifar10_fewshot.png into ``out_dir``; return the results.

    Options (``FULL``; None: by device, ``GPU`` or ``CPU``; ``QUICK`` for tests: 8x8 images,
    2 trials of n = 10, 20 from 3 candidates per class, 2 test images per class):
    ``n_values``, ``trials``, ``test_per_class``, ``pool_per_class``, ``kernels``,
    ``image_size``, ``diag_reg`` (relative ridge; 0 as the paper), ``save_kernels`` (write
    each architecture's pool and test kernels, with their indices, to kernels-NAME.npz as soon
    as computed, and reuse them when a later run into the same folder has the same images:
    an interrupted run resumes; ``seconds`` then omits the reused ones), ``threads`` (torch
    CPU threads during the kernels; None: unchanged; one is far faster on a loaded shared
    machine). ``dtype``: of the kernel computation (the regression is float64).
    """
    cfg, out_dir, t_start = start_run(out_dir, quick, options, QUICK, FULL)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    by_device = GPU if dev.type == "cuda" else CPU
    cfg = {k: (by_device[k] if v is None and k in by_device else v) for k, v in cfg.items()}
    dt = {"float64": torch.float64, "float32": torch.float32}[str(dtype)]
    size = int(cfg["image_size"])
    if size < 1 or 32 % size:
        raise ValueError(f"image_size must divide 32, got {size}")
    machine = _machine()
    x_tr, y_tr, x_te, y_te = load_cifar10(data_path, lossless=True, dtype=np.float64)
    if size < 32:
        f = 32 // size
        pool_img = lambda x: x.reshape(len(x), 3, size, f, size, f).mean(axis=(3, 5))  # noqa: E731
        x_tr, x_te = pool_img(x_tr), pool_img(x_te)
    test_idx = first_per_class(y_te, int(cfg["test_per_class"]))
    subsets = balanced_subsets(y_tr, cfg["n_values"], int(cfg["trials"]), seed,
                               cfg["pool_per_class"])
    pool = np.unique(np.concatenate([s for sets in subsets for s in sets.values()]))
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=dev)  # noqa: E731
    x_pool, x_test, y_test = as_t(x_tr[pool]), as_t(x_te[test_idx]), y_te[test_idx]

    matrices, seconds, reused = _all_kernels(cfg, size, str(dtype), x_pool, x_test, pool,
                                             test_idx, out_dir, progress)
    machine["torch_threads"] = int(cfg["threads"] or torch.get_num_threads())
    accs = {k: trial_accuracies(*matrices[k], pool, subsets, y_tr, y_test, float(cfg["diag_reg"]))
            for k in cfg["kernels"]}
    rows = []
    for n in _check_n(cfg["n_values"]):
        stats = {k: {"mean": float(np.mean(a[n])), "std": float(np.std(a[n])), "trials": a[n]}
                 for k, a in accs.items()}
        rows.append({"n": n, "paper_cntk": PAPER_CNTK.get(n),
                     "paper_resnet34": PAPER_RESNET34.get(n), "accuracy": stats})
    seconds["total"] = time.perf_counter() - t_start
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["load_average_at_end"] = list(load) if load else None
    pool_text = ("all of them" if cfg["pool_per_class"] is None else
                 f"{cfg['pool_per_class']} per class drawn once with seed {seed}")
    results = {
        "experiment": "cifar10-fewshot", "quick": quick, "seed": seed, "config": cfg,
        "device": str(dev), "dtype": str(dtype), "machine": machine, "seconds": seconds,
        "kernels_reused_from": reused,
        "kernels": list(cfg["kernels"]), "trials": int(cfg["trials"]), "pool_size": int(len(pool)),
        "n_test": int(len(test_idx)), "image_size": size,
        "protocol": {
            "train": (f"Training sets: balanced random subsets of the first 4,000 (lossless) "
                      f"CIFAR-10 training images; candidates: {pool_text}; trial t draws with "
                      f"seed [{seed}, t], nested in n."),
            "test": (f"Test: the first {cfg['test_per_class']} images of each class by index of "
                     f"the (class-sorted, JPEG-decoded) test set, {len(test_idx)} images"
                     + (f", average-pooled to {size}x{size}." if size < 32 else ".")),
            "regression": (f"Kernel regression, targets one-hot - 0.1, diag_reg "
                           f"{cfg['diag_reg']} (relative)."),
        },
        "test_indices": test_idx.tolist(),
        "train_indices": [{str(n): s.tolist() for n, s in sets.items()} for sets in subsets],
        "rows": rows, "paper": {"cntk": PAPER_CNTK, "resnet34": PAPER_RESNET34},
    }
    results["markdown"] = _markdown(results)
    (out_dir / "table.md").write_text(results["markdown"] + "\n")
    _plot(results, out_dir / "cifar10_fewshot.png")
    return write_results(out_dir, results, indent=1)


def _summary(res: Dict) -> Dict:
    return {r["n"]: {k: round(v["mean"], 2) for k, v in r["accuracy"].items()} for r in res["rows"]}


if __name__ == "__main__":
    standalone_main(__doc__, run, _summary)
