"""Figures of the digits comparison (``digits_kernels``), in one readable style (matplotlib, Agg
backend): the demo report shows them."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

#: the two kernels' colours everywhere in the report
COLORS = {"ntk": "#d1495b", "nngp": "#00798c", "baseline": "#555555"}
_BASELINE_STYLES = [(0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (3, 3))]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({
        "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.alpha": 0.3, "figure.dpi": 100, "savefig.bbox": "tight",
    })
    return plt


def accuracy_vs_depth(path: Path, depths: Sequence[int], ntk: Sequence[float],
                      nngp: Sequence[float], baselines: Dict[str, float],
                      cv: Optional[Dict[str, Sequence[float]]] = None,
                      chosen: Optional[Dict[str, int]] = None) -> Path:
    """Test accuracy (%) of NTK and NNGP kernel regression against depth, baselines as
    horizontal lines labelled at the right edge; ``cv``: the cross-validated accuracies per
    kernel (thin dotted lines), ``chosen``: the depth each kernel's validation picked (a ring
    around its test accuracy)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.4))
    values = [100 * v for v in list(ntk) + list(nngp) + list(baselines.values())]
    for name, test, marker in (("ntk", ntk, "o-"), ("nngp", nngp, "s-")):
        ax.plot(depths, 100 * np.asarray(test), marker, color=COLORS[name], lw=2,
                label=f"{name.upper()} (test)")
        if cv is not None:
            ax.plot(depths, 100 * np.asarray(cv[name]), ":", color=COLORS[name], lw=1.4,
                    label=f"{name.upper()} (5-fold CV on train)")
            values += [100 * v for v in cv[name]]
        if chosen is not None:
            i = list(depths).index(chosen[name])
            ax.plot([depths[i]], [100 * test[i]], "o", ms=14, mfc="none", mec=COLORS[name],
                    mew=1.8, label=f"{name.upper()}: depth chosen by CV")
    for (name, acc), style in zip(baselines.items(), _BASELINE_STYLES):
        ax.axhline(100 * acc, color=COLORS["baseline"], ls=style, lw=1.3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(depths))
    ax.set_xticklabels([str(d) for d in depths])
    ax.set_xlabel("depth (number of hidden layers)")
    ax.set_ylabel("accuracy (%)" if cv is not None else "test accuracy (%)")
    low, high = min(values), max(values)
    pad = max(0.5, 0.15 * (high - low))
    ax.set_ylim(low - pad, min(100.0, high + pad))
    ax.set_title("Digits: kernel regression with infinite-width kernels vs baselines")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _normalized(k: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(k), 1e-300, None))
    return k / d[:, None] / d[None, :]


def kernel_matrices(path: Path, panels: List[tuple], labels: np.ndarray) -> Path:
    """Grid of normalized kernel matrices K(x,x')/sqrt(K(x,x)K(x',x')) on points sorted by
    class. ``panels``: rows of (title, matrix) lists."""
    plt = _plt()
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 0.5
    centers = [np.mean(np.flatnonzero(labels[order] == c)) for c in np.unique(labels)]
    nrow, ncol = len(panels), len(panels[0])
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 4.0 * nrow), squeeze=False)
    image = None
    for r, row in enumerate(panels):
        for c, (title, k) in enumerate(row):
            ax = axes[r][c]
            kn = _normalized(np.asarray(k))[np.ix_(order, order)]
            # a per-panel colour range: deep kernels are all close to 1 and would look flat
            off = kn[~np.eye(len(kn), dtype=bool)]
            lo, hi = np.percentile(off, 1), np.percentile(off, 99.5)
            image = ax.imshow(kn, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
            for b in bounds:
                ax.axhline(b, color="white", lw=0.4, alpha=0.6)
                ax.axvline(b, color="white", lw=0.4, alpha=0.6)
            ax.set_xticks(centers)
            ax.set_xticklabels([str(int(v)) for v in np.unique(labels)], fontsize=8)
            ax.set_yticks(centers)
            ax.set_yticklabels([str(int(v)) for v in np.unique(labels)], fontsize=8)
            ax.grid(False)
            ax.set_title(f"{title}\n(colour range {lo:.2f} to {hi:.2f})", fontsize=10.5)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    fig.suptitle("Normalized kernels on test digits, sorted by class", y=1.0)
    fig.tight_layout()
    save_palette_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_palette_png(fig, path: Path, dpi: int) -> None:
    """Save ``fig`` as a 256-colour palette PNG: images of matrices compress badly in full
    colour (600 KB for the kernel grid), and the results kept in the repository stay small."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=256).save(path, optimize=True)


def kernel_pca(path: Path, panels: List[tuple], labels: np.ndarray) -> Path:
    """First two kernel principal components (Schölkopf et al. 1998) of each kernel after
    normalization to a correlation (so that inputs of large norm do not dominate), points
    coloured by class with the class digit drawn at each class mean."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, k) in zip(axes[0], panels):
        z = kernel_pca_coords(_normalized(np.asarray(k)), 2)
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(z[sel, 0], z[sel, 1], s=9, color=cmap(int(c) % 10), alpha=0.7)
            mx, my = z[sel].mean(axis=0)
            ax.text(mx, my, str(int(c)), fontsize=13, weight="bold", ha="center", va="center",
                    color=cmap(int(c) % 10),
                    bbox=dict(boxstyle="circle,pad=0.2", fc="white", ec=cmap(int(c) % 10),
                              alpha=0.9))
        ax.set_title(title)
        ax.set_xlabel("kernel PC 1")
        ax.set_ylabel("kernel PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def kernel_pca_coords(k: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Coordinates sqrt(λ_i) u_i of the top eigenpairs of the doubly-centred kernel
    H K H, H = I - 11ᵀ/n (kernel PCA)."""
    n = len(k)
    h = np.eye(n) - 1.0 / n
    kc = h @ k @ h
    vals, vecs = np.linalg.eigh((kc + kc.T) / 2)
    top = np.argsort(vals)[::-1][:n_components]
    return vecs[:, top] * np.sqrt(np.clip(vals[top], 0, None))


def spectra(path: Path, curves: Dict[str, np.ndarray], title: str) -> Path:
    """Eigenvalues (normalized to sum 1) against their index, log-log, one curve per label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, (label, vals) in enumerate(curves.items()):
        v = np.sort(np.clip(vals, 1e-300, None))[::-1]
        v = v / v.sum()
        ax.loglog(np.arange(1, len(v) + 1), v, color=cmap(i / max(1, len(curves) - 1)), lw=1.6,
                  label=label)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue / trace")
    ax.set_title(title)
    ax.legend(ncol=2, title="depth")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
