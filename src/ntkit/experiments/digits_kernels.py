"""Digits: NTK and NNGP kernel regression at several depths against standard baselines.

On scikit-learn's digits (1,347 train / 450 test 8×8 images, standardized; the fixed split of
``ntkit.data.load_digits``), for fully-connected ReLU architectures of increasing depth
(L hidden ReLU layers, W_std=√2, b_std=0.05, NTK parameterization; ``fc:depth=L`` on the
command line):

* NTK regression: the mean prediction of infinitely wide networks trained to convergence by
  gradient flow on MSE (Jacot et al. 2018; Lee et al. 2019), f(x) = Θ(x, X) (Θ(X, X) + λI)⁻¹ Y;
* NNGP regression: the posterior mean of the Gaussian-process prior of wide networks
  (Lee et al. 2018), the same formula with K in place of Θ;

with one-hot targets Y, the class given by the argmax, and a small ridge λ = diag_reg ×
mean(diag). Baselines: an RBF SVM, a random forest and a finite MLP (the width-512 depth-2
network of the same parameterization, ``arch.init``, trained with Adam on cross-entropy).
Hyperparameters are fixed (no tuning on the test set); they are recorded in the results.
The headline depth of each kernel is chosen by 5-fold cross-validation on the training images
(folds drawn from ``seed``; ties go to the shallower depth), never by test accuracy; the test
accuracy reported for it is the one at the chosen depth.

Figures: ``accuracy_vs_depth.png``, ``kernel_matrices.png`` (normalized kernels, shallow vs
deep), ``kernel_pca.png`` (first two kernel principal components of NTK and NNGP),
``ntk_spectrum.png`` (eigenvalues of the NTK on 400 training digits, per depth).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .common import progress_bar, relu_mlp, write_results

FULL = {"depths": [1, 2, 3, 4, 6, 8, 12, 16]}
QUICK = {"depths": [1, 3]}   # and 400 training / 150 test images, smaller baselines
ARCH = "fc:depth={depth},act=relu,W_std=sqrt(2),b_std=0.05"  # the same, in the command-line syntax
W_STD, B_STD = math.sqrt(2.0), 0.05


def architecture(depth: int, width: int = 512, out: int = 1):
    """``depth`` × [Linear(width), ReLU], Linear(out); W_std=√2, b_std=0.05 (``ARCH``)."""
    return relu_mlp(width, depth, W_std=W_STD, b_std=B_STD, out=out)


CV_FOLDS = 5


def _kernel_regression(k_train: torch.Tensor, k_test_train: torch.Tensor, y: torch.Tensor,
                       diag_reg: float) -> torch.Tensor:
    """Θ(test, X) (Θ(X, X) + λ I)⁻¹ Y with λ = diag_reg · mean(diag Θ), by Cholesky."""
    n = k_train.shape[0]
    lam = diag_reg * torch.diagonal(k_train).mean()
    eye = torch.eye(n, dtype=k_train.dtype, device=k_train.device)
    chol = torch.linalg.cholesky(k_train + lam * eye)
    return k_test_train @ torch.cholesky_solve(y, chol)


def cv_folds(n: int, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each of n training points: a seeded random permutation mod k."""
    return np.random.default_rng(seed).permutation(n) % k


def cross_validated_accuracy(k_train: torch.Tensor, labels: np.ndarray, folds: np.ndarray,
                             diag_reg: float) -> float:
    """Mean over folds f of the accuracy on fold f of kernel regression (``_kernel_regression``,
    one-hot targets) fitted on the other folds; only training data enters."""
    accs = []
    onehot = torch.eye(10, dtype=k_train.dtype, device=k_train.device)
    for f in np.unique(folds):
        fit = torch.from_numpy(np.flatnonzero(folds != f)).to(k_train.device)
        held = torch.from_numpy(np.flatnonzero(folds == f)).to(k_train.device)
        y = onehot[torch.from_numpy(labels[folds != f]).to(k_train.device)]
        scores = _kernel_regression(k_train[fit][:, fit], k_train[held][:, fit], y, diag_reg)
        accs.append(_accuracy(scores.cpu().numpy(), labels[folds == f]))
    return float(np.mean(accs))


def choose_depth(rows: Sequence[dict], kernel: str) -> dict:
    """The row of the largest cross-validated accuracy of ``kernel`` (ties: the shallowest)."""
    return max(rows, key=lambda r: (r[f"{kernel}_cv_accuracy"], -r["depth"]))


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(scores).argmax(axis=1) == labels))


def _finite_mlp(xtr, ytr, xte, yte, seed: int, epochs: int, width: int = 512) -> float:
    """The finite network of ``fc:depth=2,width=512`` (ntkit's init, NTK parameterization),
    trained with Adam (lr 3e-3, betas 0.9/0.999, batch 64) on cross-entropy; returns the test
    accuracy. Adam's update is written out here: ``torch.optim`` imports torch's compiler
    stack on first use, which costs seconds. Runs on one thread: the matrices are small, and
    on a busy machine a second thread costs more in synchronization than it gains."""
    net = architecture(2, width=width, out=10).init((xtr.shape[1],), seed=seed,
                                                    dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_adam(net, torch.from_numpy(xtr).float(), torch.from_numpy(ytr).long(), epochs,
                    seed)
        with torch.no_grad():
            return _accuracy(net(torch.from_numpy(xte).float()).numpy(), yte)
    finally:
        torch.set_num_threads(threads)


def _train_adam(net, x, y, epochs: int, seed: int, lr: float = 3e-3, batch: int = 64,
                betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """Minibatch Adam (Kingma & Ba 2015) on cross-entropy, in place."""
    params = [p for p in net.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, params)
            step += 1
            with torch.no_grad():
                for p, g, mi, vi in zip(params, grads, m, v):
                    mi.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                    vi.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                    denom = (vi / (1 - betas[1] ** step)).sqrt_().add_(eps)
                    p.addcdiv_(mi, denom, value=-lr / (1 - betas[0] ** step))


def _baselines(xtr, ytr, xte, yte, seed: int, quick: bool, bar) -> list:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.svm import SVC

    specs = [
        ("RBF SVM", "SVC(kernel='rbf', C=10, gamma='scale')",
         lambda: SVC(kernel="rbf", C=10.0, gamma="scale")),
        ("Random forest", f"RandomForestClassifier(n_estimators={100 if quick else 300})",
         lambda: RandomForestClassifier(n_estimators=100 if quick else 300, random_state=seed,
                                        n_jobs=1)),
    ]
    out = []
    for name, params, make in specs:
        start = time.perf_counter()
        model = make().fit(xtr, ytr)
        acc = float(np.mean(model.predict(xte) == yte))
        out.append({"name": name, "params": params, "accuracy": acc,
                    "seconds": round(time.perf_counter() - start, 3)})
        bar.update(1)
    epochs = 5 if quick else 15
    start = time.perf_counter()
    torch.manual_seed(seed)
    acc = _finite_mlp(xtr, ytr, xte, yte, seed, epochs)
    out.append({"name": "Finite MLP", "accuracy": acc, "seconds": round(time.perf_counter() - start, 3),
                "params": f"ReLU net, 2 hidden layers of width 512 (nk arch.init), Adam lr 3e-3, "
                          f"batch 64, {epochs} epochs, cross-entropy"})
    bar.update(1)
    return out


def _estimator_check(arch, xtr, ytr, xte, yte, diag_reg: float, expected: float) -> Optional[dict]:
    """The same NTK regression through the public estimator nk.NTKClassifier (when present)."""
    import ntkit as nk

    if not hasattr(nk, "NTKClassifier"):
        return None
    start = time.perf_counter()
    try:
        est = nk.NTKClassifier(arch=arch, t=None, diag_reg=diag_reg).fit(xtr, ytr)
        acc = float(np.mean(est.predict(xte) == yte))
    except Exception as err:  # noqa: BLE001 - reported, not fatal to the experiment
        return {"error": f"{type(err).__name__}: {err}"}
    return {"accuracy": acc, "matches_direct_solve": bool(abs(acc - expected) < 1e-9),
            "seconds": round(time.perf_counter() - start, 3)}


def run(out_dir: Path, quick: bool = False, seed: int = 0, depths: Optional[Sequence[int]] = None,
        diag_reg: float = 1e-4, dtype: str = "float64", device: str = "auto",
        progress: Optional[bool] = None) -> dict:
    """Run the comparison; write the figures and ``results.json`` into ``out_dir``.

    ``quick``: 400 training and 150 test images, depths (1, 3), smaller baselines.
    ``device``: 'auto' (CUDA when present), 'cpu' or 'cuda'.
    """
    from ..data import load_digits
    from . import digits_plots as plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    depths = tuple(int(d) for d in (depths or (QUICK if quick else FULL)["depths"]))
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    start_all = time.perf_counter()
    xtr, ytr, xte, yte = load_digits()
    if quick:
        rng = np.random.default_rng(seed)
        tr = np.sort(rng.choice(len(xtr), 400, replace=False))
        te = np.sort(rng.choice(len(xte), 150, replace=False))
        xtr, ytr, xte, yte = xtr[tr], ytr[tr], xte[te], yte[te]
    n_tr = len(xtr)
    x_all = torch.from_numpy(np.concatenate([xtr, xte])).to(tdtype).to(dev)
    onehot = torch.eye(10, dtype=tdtype, device=dev)[torch.from_numpy(ytr).to(dev)]

    folds = cv_folds(n_tr, CV_FOLDS, seed)
    rows, kernels = [], {}
    bar = progress_bar(None, "digits-kernels", progress, total=len(depths) + 3)
    for depth in depths:
        arch = architecture(depth)
        start = time.perf_counter()
        k = arch.kernel(x_all)
        kernel_s = time.perf_counter() - start
        row = {"depth": depth, "arch": ARCH.format(depth=depth), "kernel_seconds": round(kernel_s, 4)}
        for name in ("ntk", "nngp"):
            mat = k.get(name)
            start = time.perf_counter()
            scores = _kernel_regression(mat[:n_tr, :n_tr], mat[n_tr:, :n_tr], onehot, diag_reg)
            row[f"{name}_accuracy"] = _accuracy(scores.cpu().numpy(), yte)
            row[f"{name}_solve_seconds"] = round(time.perf_counter() - start, 4)
            row[f"{name}_total_seconds"] = round(kernel_s + row[f"{name}_solve_seconds"], 4)
            row[f"{name}_cv_accuracy"] = cross_validated_accuracy(mat[:n_tr, :n_tr], ytr, folds,
                                                                  diag_reg)
        rows.append(row)
        kernels[depth] = {name: k.get(name).cpu().double().numpy() for name in ("ntk", "nngp")}
        bar.set_postfix(depth=depth, ntk=f"{100 * row['ntk_accuracy']:.1f}%")
        bar.update(1)
    baselines = _baselines(xtr, ytr, xte, yte, seed, quick, bar)
    bar.close()

    chosen_ntk, chosen_nngp = choose_depth(rows, "ntk"), choose_depth(rows, "nngp")
    check = _estimator_check(architecture(chosen_ntk["depth"]), xtr, ytr, xte, yte, diag_reg,
                             chosen_ntk["ntk_accuracy"])

    # figures
    figures = {}
    figures["accuracy_vs_depth"] = plots.accuracy_vs_depth(
        out_dir / "accuracy_vs_depth.png", depths, [r["ntk_accuracy"] for r in rows],
        [r["nngp_accuracy"] for r in rows], {b["name"]: b["accuracy"] for b in baselines},
        cv={"ntk": [r["ntk_cv_accuracy"] for r in rows],
            "nngp": [r["nngp_cv_accuracy"] for r in rows]},
        chosen={"ntk": chosen_ntk["depth"], "nngp": chosen_nngp["depth"]}).name
    shallow, deep = depths[0], depths[-1]
    show = np.sort(np.random.default_rng(seed).choice(len(yte), min(200, len(yte)), replace=False))
    sel = n_tr + show
    panels = [[(f"{n.upper()}, depth {d}", kernels[d][n][np.ix_(sel, sel)]) for d in (shallow, deep)]
              for n in ("ntk", "nngp")]
    figures["kernel_matrices"] = plots.kernel_matrices(out_dir / "kernel_matrices.png", panels,
                                                       yte[show]).name
    test_block = slice(n_tr, None)
    pca_panels = [(f"NTK, depth {chosen_ntk['depth']}",
                   kernels[chosen_ntk["depth"]]["ntk"][test_block, test_block]),
                  (f"NNGP, depth {chosen_nngp['depth']}",
                   kernels[chosen_nngp["depth"]]["nngp"][test_block, test_block])]
    figures["kernel_pca"] = plots.kernel_pca(out_dir / "kernel_pca.png", pca_panels, yte).name
    sub = np.sort(np.random.default_rng(seed + 1).choice(n_tr, min(400, n_tr), replace=False))
    spectra = {str(d): torch.linalg.eigvalsh(torch.from_numpy(kernels[d]["ntk"][np.ix_(sub, sub)])).numpy()
               for d in depths}
    figures["ntk_spectrum"] = plots.spectra(out_dir / "ntk_spectrum.png", spectra,
                                            f"Eigenvalues of the NTK on {len(sub)} training digits").name

    results = {
        "experiment": "digits-kernels",
        "quick": bool(quick), "seed": int(seed), "dtype": dtype, "device": str(dev),
        "data": {"name": "digits", "n_train": int(n_tr), "n_test": int(len(yte)),
                 "features": int(xtr.shape[1]), "classes": 10,
                 "preprocessing": "per-pixel standardization with training-split statistics"},
        "config": {"arch": ARCH.replace("{depth}", "L"), "depths": list(depths),
                   "diag_reg": diag_reg, "targets": "one-hot, argmax decision", "dtype": dtype,
                   "cv_folds": CV_FOLDS},
        "kernels": rows,
        "baselines": baselines,
        "chosen": {
            "method": f"{CV_FOLDS}-fold cross-validation on the {n_tr} training images (folds "
                      f"from seed {seed}); the largest mean held-out accuracy, ties to the "
                      f"shallower depth; test images never used for the choice",
            **{name: {"depth": r["depth"], "cv_accuracy": r[f"{name}_cv_accuracy"],
                      "test_accuracy": r[f"{name}_accuracy"]}
               for name, r in (("ntk", chosen_ntk), ("nngp", chosen_nngp))}},
        "estimator_check": check,
        "figures": figures,
        "seconds": round(time.perf_counter() - start_all, 2),
    }
    return write_results(out_dir, results)
