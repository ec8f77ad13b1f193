"""Jacot et al. 2018 (seed 002), "Kernel PCA of MNIST with respect to the NTK": the NTK of a
depth-4 ReLU network (four Linear layers, W_std = 1, b_std = β = 0.1, NTK parameterization) on
512 MNIST digits, its leading eigenvalues and the 2nd and 3rd principal components coloured
by digit (the first is nearly constant: the kernel is not centred).

Published leading eigenvalues: 41.03, 1.88, 1.46 (the NeurIPS poster) and 0.0457, 0.00108,
0.00078 (the paper's final version). Neither states the normalization; their ratios
λ₂/λ₁ differ too (0.046 and 0.024), so the inputs or the scaling differ between the two.
This experiment reports, for two input scalings (pixels in [0, 1], and each image scaled to
|x| = √784 so that Σ⁰(x, x) = 1 as on Jacot et al.'s sphere):
  * the eigenvalues of the Gram matrix K (n × n), which grow with n;
  * those of K / n, the eigenvalues of the kernel's integral operator under the empirical
    distribution (independent of n: the normalization that makes sets of different n
    comparable);
  * the ratios λ_k/λ₁, independent of any overall scale (comparable with both published sets).

Data: the first ``n`` training digits of ``mnist.npz`` in ``ntkit.data.default_data_dir()``
(shared/data/mnist); scikit-learn's 8 × 8 digits when MNIST is absent (``results.json`` says
which).

    ntkit experiment kernel-pca [--quick]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import ntkit as nk
from ntkit.data import default_data_dir, load_digits, load_mnist
from ntkit.experiments.common import save_figure, standalone_main, start_run, write_results

PUBLISHED = {"poster": [41.03, 1.88, 1.46], "paper": [0.0457, 0.00108, 0.00078]}
FULL = {"n": 512, "depth": 4, "W_std": 1.0, "b_std": 0.1, "top": 10}
QUICK = {"n": 128, "depth": 4, "W_std": 1.0, "b_std": 0.1, "top": 10}


def architecture(cfg: dict) -> nk.Sequential:
    layers = []
    for _ in range(cfg["depth"] - 1):
        layers += [nk.Linear(500, W_std=cfg["W_std"], b_std=cfg["b_std"]), nk.ReLU()]
    return nk.Sequential(*layers, nk.Linear(1, W_std=cfg["W_std"], b_std=cfg["b_std"]))


def load(n: int, data_dir=None):
    """(x (n, d) float64 in [0, 1], labels (n,), source name)."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    try:
        data = load_mnist(folder / "mnist", dtype=np.float64)
        return data.x_train[:n], data.y_train[:n], "mnist"
    except FileNotFoundError:
        data = load_digits(standardize=False)
        return data.x_train[:n], data.y_train[:n], "digits (MNIST not found)"


def spectrum(k: torch.Tensor):
    """Eigenvalues (descending) and eigenvectors of a symmetric kernel matrix."""
    evals, evecs = torch.linalg.eigh(0.5 * (k + k.T))
    return evals.flip(0).numpy(), evecs.flip(1).numpy()


def plot(path: Path, comps: dict, labels: np.ndarray, evals: dict, cfg: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (name, c) in zip(axes[:2], comps.items()):
        sc = ax.scatter(c[:, 1], c[:, 2], c=labels, cmap="tab10", s=9, vmin=-0.5, vmax=9.5)
        ax.set_xlabel("2nd kernel principal component")
        ax.set_ylabel("3rd kernel principal component")
        ax.set_title(f"NTK kernel PCA, inputs {name} (L={cfg['depth']}, β={cfg['b_std']})")
        ax.grid(alpha=0.3)
    fig.colorbar(sc, ax=axes[1], ticks=range(10), label="digit")
    ax = axes[2]
    for name, ev in evals.items():
        ax.semilogy(np.arange(1, len(ev) + 1), np.asarray(ev) / ev[0], "o-", ms=3,
                    label=f"ours, inputs {name}")
    for name, ev in PUBLISHED.items():
        ax.semilogy([1, 2, 3], np.asarray(ev) / ev[0], "s--", ms=5, label=f"published ({name})")
    ax.set_xlabel("k")
    ax.set_ylabel("λ_k / λ_1")
    ax.set_title("leading eigenvalues relative to the first")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def run(out_dir: Path, quick: bool = False, seed: int = 0, data_dir=None,
        progress: Optional[bool] = None, **options) -> dict:
    """``progress`` is accepted for the common interface: one kernel, seconds at full size."""
    cfg, out_dir, t0 = start_run(out_dir, quick, options, QUICK, FULL)
    x, labels, source = load(int(cfg["n"]), data_dir)
    n, d = x.shape
    arch = architecture(cfg)
    inputs = {"pixels": x,
              "sphere": x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)}
    results, comps, shown = {}, {}, {}
    top = int(cfg["top"])
    for name, xx in inputs.items():
        k = arch.kernel(torch.from_numpy(xx), get="ntk").ntk
        evals, evecs = spectrum(k)
        comps[name] = evecs[:, :3] * np.sqrt(np.clip(evals[:3], 0, None))
        shown[name] = evals[:top]
        results[name] = {"eigenvalues_K": evals[:top].tolist(),
                         "eigenvalues_K_over_n": (evals[:top] / n).tolist(),
                         "ratios_to_first": (evals[:top] / evals[0]).tolist(),
                         "trace_K": float(np.trace(k.numpy()))}
    published = {name: {"eigenvalues": ev, "ratios_to_first": [v / ev[0] for v in ev]}
                 for name, ev in PUBLISHED.items()}
    plot(out_dir / "kernel_pca.png", comps, labels, shown, cfg)
    out = {"experiment": "kernel-pca", "config": cfg, "seed": seed, "data": source, "n": n,
           "input_dim": d,
           "leading_eigenvalues_K_over_n": {f"{name} {i + 1}": results[name]["eigenvalues_K_over_n"][i]
                                            for name in results for i in range(3)},
           "inputs": results, "published": published,
           "components_pixels_2_3": comps["pixels"][:, 1:3].tolist(), "labels": labels.tolist(),
           "dtype": "float64", "seconds": time.perf_counter() - t0}
    write_results(out_dir, out, indent=None)
    return out


def main(argv=None) -> None:
    standalone_main(__doc__, run, lambda r: {k: v["eigenvalues_K"][:3] for k, v in r["inputs"].items()},
                    argv)


if __name__ == "__main__":
    main()
