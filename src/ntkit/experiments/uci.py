"""Arora et al. (ICLR 2020), "Harnessing the Power of Infinitely Wide Deep Nets on Small-data
Tasks": the NTK C-SVM on the 90 UCI datasets of Fernández-Delgado et al. (2014), against the
NNGP kernel, an RBF SVM, a random forest and a trained MLP, all under the same protocol
(``shared/data/uci/PROTOCOL.md``):

- every hyperparameter configuration is trained on line 1 of ``conxuntos.dat`` and scored on
  line 2; the first configuration (grid order) with the strictly highest validation accuracy wins;
- the winner is retrained on each of the 4 (train, test) pairs of ``conxuntos_kfold.dat``; the
  dataset's accuracy is the mean of the 4 test accuracies.

Grids. NTK: K[dep][fix] (dep 0..4, fix 0..dep; see ``ntk_grid``) × C ∈ 10^-2..10^4,
SVC(kernel="precomputed"). NNGP: the same stream restricted to fix = dep (K[dep][dep] = Σ⁽ᵈᵉᵖ⁾,
the GP kernel of the same nets) × the same C. RBF: exp(-γ|x-x'|²),
γ ∈ {2^-6, 2^-4, 2^-2, 1, 4}/d × the same C. RF: 200 trees (30 when quick), max_features ∈
{√d/2, √d, 2√d, d} (rounded, clipped to 1..d, deduplicated). MLP: sklearn MLPClassifier (Adam,
ReLU, at most 200 epochs, 50 when quick; early stopping on a 10% hold-out of the training
side when the dataset has n >= 200 rows), hidden layers (128,) or (128, 128) × L2 alpha ∈
{1e-4, 1e-2}. SVMs stop after SVM_MAX_ITER iterations (see below; counted in the output).

Metrics (PROTOCOL.md section 4), over the compared classifiers of this run: average accuracy
(± std over datasets), Friedman rank (rank 1 = best per dataset, ties averaged, then averaged
over datasets), P90/P95 (fraction of datasets where accuracy >= 90%/95% of the best accuracy of
any compared classifier on that dataset) and PMA (mean ± std of 100 · accuracy / best).
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import ntkit as nk

from .common import progress_bar, pyplot, save_figure, write_results

CLASSIFIERS = ("NTK", "NNGP", "RBF-SVM", "RF", "MLP")
C_GRID = tuple(10.0 ** k for k in range(-2, 5))
N_DEPTHS = 5
GAMMA_FACTORS = (2.0 ** -6, 2.0 ** -4, 2.0 ** -2, 1.0, 4.0)
MLP_GRID = tuple((h, a) for h in ((128,), (128, 128)) for a in (1e-4, 1e-2))
RF_TREES = 200
MLP_MAX_ITER = 200
# libsvm iteration cap per binary problem. libsvm's own cap is 10^7; only the linear kernel
# (dep = 0) with C >= 100 on the larger datasets reaches 10^5, and such a fit takes minutes to
# converge (waveform: 53 s for 10^6 iterations) with low validation accuracy. Hitting it is
# counted in the results ("capped_fits").
SVM_MAX_ITER = 100_000
QUICK_DATASETS = ("balloons", "iris", "lenses", "trains", "zoo")


# -- the kernels --------------------------------------------------------------------------------
def grid_architecture(d: int, dep: int, fix: int) -> nk.Sequential:
    """The net of K[dep][fix] (PROTOCOL.md section 3, the ``NTK.py`` of Arora et al. 2020): a
    bias-free ReLU net with ``dep`` hidden layers whose first ``fix`` Linear layers are frozen.

    With ntkit's input kernel X Xᵀ/d, a first Linear(W_std=√d) gives Σ⁽⁰⁾ = X Xᵀ, and each
    ReLU + Linear(W_std=1) is the protocol's map with θ = arccos(Σ_ij / sqrt(Σ_ii Σ_jj)):

        Σ⁽ʰ⁺¹⁾_ij = sqrt(Σ_ii Σ_jj) (sin θ + (π - θ) cos θ) / (2π),   Σ̇⁽ʰ⁺¹⁾_ij = (π - θ) / (2π)

    (E[relu(u) relu(v)] and E[relu'(u) relu'(v)], Cho & Saul 2009), so the NTK of this net is

        K[dep][fix] = Σ_{h=fix..dep} Σ⁽ʰ⁾ · Π_{h'=h+1..dep} Σ̇⁽ʰ'⁾     (0 <= fix <= dep):

    K[0][0] = X Xᵀ, K[dep][0] the full NTK, K[dep][dep] = Σ⁽ᵈᵉᵖ⁾ the NNGP kernel of the net.
    Widths (1) only matter to ``init``.
    """
    layers: List[nk.Layer] = [nk.Linear(1, W_std=math.sqrt(d), b_std=None, trainable=fix == 0)]
    for h in range(1, dep + 1):
        layers += [nk.ReLU(), nk.Linear(1, W_std=1.0, b_std=None, trainable=h >= fix)]
    return nk.Sequential(*layers)


def ntk_grid(X: np.ndarray, n_depths: int = N_DEPTHS
             ) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield ``(dep, fix, K)`` for dep = 0..n_depths-1 and fix = 0..dep, in that order (the
    protocol's selection order), K (n, n) float64 = K[dep][fix] of ``grid_architecture`` on the
    rows of X (n, d), computed by ``arch.kernel``. The kernel with fix = 0 of each depth also
    gives K[dep][dep] (its NNGP), so a depth costs dep kernel computations, not dep + 1."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"ntk_grid: X must be a 2-d (n, d) array, got shape {X.shape}")
    if int(n_depths) < 1:
        raise ValueError(f"ntk_grid: n_depths must be >= 1, got {n_depths}")
    x = torch.from_numpy(X)
    d = X.shape[1]
    for dep in range(int(n_depths)):
        full = grid_architecture(d, dep, 0).kernel(x)
        yield dep, 0, full.ntk.numpy()
        for fix in range(1, dep):
            yield dep, fix, grid_architecture(d, dep, fix).kernel(x, get="ntk").ntk.numpy()
        if dep > 0:
            yield dep, dep, full.nngp.numpy()


# -- fitting helpers ---------------------------------------------------------------------------
class _Capped:
    """Counts the fits of one classifier that an iteration cap stopped (reported per dataset)."""

    def __init__(self):
        self.fits = 0


def _fit_score(make: Callable, Xtr, ytr, Xte, yte, capped: _Capped) -> float:
    """Accuracy of ``make()`` fit on (Xtr, ytr); a one-class training set predicts that class.
    A fit stopped by its iteration cap (a ConvergenceWarning) is counted in ``capped``."""
    if yte.size == 0:
        raise ValueError("empty test side")
    classes = np.unique(ytr)
    if classes.size == 1:
        return float(np.mean(yte == classes[0]))
    model = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # ConvergenceWarning: the iteration caps are the grid's
        model.fit(Xtr, ytr)
        acc = float(np.mean(model.predict(Xte) == yte))
    if any("max_iter" in str(w.message) or "iterations" in str(w.message) for w in caught):
        capped.fits += 1
    return acc


def _svc(C: float):
    from sklearn.svm import SVC
    return lambda: SVC(kernel="precomputed", C=C, max_iter=SVM_MAX_ITER)


def _kernel_scores(K: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                   capped: _Capped) -> List[float]:
    """Accuracy for every C of C_GRID of the precomputed-kernel SVC trained on rows ``tr``."""
    Ktr = K[np.ix_(tr, tr)]
    Kte = K[np.ix_(te, tr)]
    return [_fit_score(_svc(C), Ktr, y[tr], Kte, y[te], capped) for C in C_GRID]


def _kfold_kernel(K: np.ndarray, y: np.ndarray, pairs, C: float, capped: _Capped) -> List[float]:
    return [_fit_score(_svc(C), K[np.ix_(tr, tr)], y[tr], K[np.ix_(te, tr)], y[te], capped)
            for tr, te in pairs]


class _Best:
    """The first configuration with the strictly highest validation accuracy (grid order)."""

    def __init__(self):
        self.score = -1.0
        self.params: Optional[dict] = None
        self.payload = None

    def offer(self, score: float, params: dict, payload=None) -> bool:
        if score > self.score:
            self.score, self.params, self.payload = score, params, payload
            return True
        return False


# -- the five classifiers ----------------------------------------------------------------------
def _kernels_ntk_nngp(ds, capped: _Capped) -> Dict[str, dict]:
    tr, va = ds.validation
    ntk, nngp = _Best(), _Best()
    t0 = time.perf_counter()
    for dep, fix, K in ntk_grid(ds.X, N_DEPTHS):
        scores = _kernel_scores(K, ds.y, tr, va, capped)
        for C, s in zip(C_GRID, scores):
            if ntk.offer(s, {"dep": dep, "fix": fix, "C": C}):
                ntk.payload = None  # the kernel is copied once per kernel below
            if fix == dep and nngp.offer(s, {"dep": dep, "C": C}):
                nngp.payload = None
        if ntk.payload is None:  # this kernel holds the NTK's best configuration so far
            ntk.payload = K
        if fix == dep and nngp.payload is None:
            nngp.payload = K
    select_s = time.perf_counter() - t0
    out = {}
    for name, best in (("NTK", ntk), ("NNGP", nngp)):
        t1 = time.perf_counter()
        accs = _kfold_kernel(best.payload, ds.y, ds.kfold, best.params["C"], capped)
        out[name] = {"val": best.score, "params": best.params, "pairs": accs,
                     "seconds": (select_s if name == "NTK" else 0.0) + time.perf_counter() - t1}
    return out


def _rbf(ds, capped: _Capped) -> dict:
    tr, va = ds.validation
    t0 = time.perf_counter()
    sq = np.einsum("ij,ij->i", ds.X, ds.X)
    D = sq[:, None] + sq[None, :] - 2.0 * (ds.X @ ds.X.T)
    np.maximum(D, 0.0, out=D)
    best = _Best()
    for g in GAMMA_FACTORS:
        gamma = g / ds.d
        K = np.exp(-gamma * D)
        for C, s in zip(C_GRID, _kernel_scores(K, ds.y, tr, va, capped)):
            if best.offer(s, {"gamma": gamma, "C": C}):
                best.payload = K
    accs = _kfold_kernel(best.payload, ds.y, ds.kfold, best.params["C"], capped)
    return {"val": best.score, "params": best.params, "pairs": accs,
            "seconds": time.perf_counter() - t0}


def _rf_grid(d: int) -> List[int]:
    root = math.sqrt(d)
    return sorted({min(d, max(1, int(round(f * root)))) for f in (0.5, 1.0, 2.0)} | {d})


def _estimator(ds, capped: _Capped, grid: Sequence[dict], make: Callable[[dict], Callable]
               ) -> dict:
    tr, va = ds.validation
    t0 = time.perf_counter()
    best = _Best()
    for params in grid:
        best.offer(_fit_score(make(params), ds.X[tr], ds.y[tr], ds.X[va], ds.y[va], capped),
                   params)
    accs = [_fit_score(make(best.params), ds.X[a], ds.y[a], ds.X[b], ds.y[b], capped)
            for a, b in ds.kfold]
    return {"val": best.score, "params": best.params, "pairs": accs,
            "seconds": time.perf_counter() - t0}


def _rf(ds, quick: bool, seed: int, capped: _Capped) -> dict:
    from sklearn.ensemble import RandomForestClassifier
    trees = 30 if quick else RF_TREES
    grid = [{"max_features": m} for m in _rf_grid(ds.d)]
    return _estimator(ds, capped, grid, lambda p: lambda: RandomForestClassifier(
        n_estimators=trees, max_features=p["max_features"], random_state=seed, n_jobs=1))


def _mlp(ds, quick: bool, seed: int, capped: _Capped) -> dict:
    from sklearn.neural_network import MLPClassifier
    grid = [{"hidden": list(h), "alpha": a} for h, a in MLP_GRID]
    max_iter = 50 if quick else MLP_MAX_ITER
    return _estimator(ds, capped, grid, lambda p: lambda: MLPClassifier(
        hidden_layer_sizes=tuple(p["hidden"]), alpha=p["alpha"], max_iter=max_iter,
        early_stopping=ds.n >= 200, random_state=seed))


def evaluate_dataset(name: str, root=None, quick: bool = False, seed: int = 0) -> dict:
    """All classifiers on one dataset under the protocol; a JSON-ready row."""
    from threadpoolctl import threadpool_limits

    from ..data.uci import load_uci
    t0, c0 = time.perf_counter(), time.process_time()
    ds = load_uci(name, root)
    results = {}
    with threadpool_limits(1):  # parallelism is across datasets
        for key, fn in (("NTK+NNGP", _kernels_ntk_nngp), ("RBF-SVM", _rbf),
                        ("RF", lambda d, c: _rf(d, quick, seed, c)),
                        ("MLP", lambda d, c: _mlp(d, quick, seed, c))):
            capped = _Capped()
            out = fn(ds, capped)
            out = out if key == "NTK+NNGP" else {key: out}
            for r in out.values():
                r["capped_fits"] = capped.fits
            results.update(out)
    for r in results.values():
        r["acc"] = float(np.mean(r["pairs"]))
    return {"dataset": name, "n": ds.n, "d": ds.d, "classes": ds.n_classes,
            "results": {c: results[c] for c in CLASSIFIERS},
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


# -- metrics -----------------------------------------------------------------------------------
def summarize(acc: np.ndarray, classifiers: Sequence[str]) -> Dict[str, dict]:
    """Metrics of PROTOCOL.md from an (n_datasets, n_classifiers) accuracy matrix."""
    from scipy.stats import rankdata
    # a mean of 4 fractions carries rounding noise (0.8333...33 vs ...34): compare at 1e-10
    acc = np.asarray(acc, dtype=np.float64)
    ranks = np.vstack([rankdata(-row, method="average") for row in np.round(acc, 10)])
    best = acc.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(best > 0, acc / best, 1.0)
    out = {}
    for j, c in enumerate(classifiers):
        out[c] = {"mean_acc": float(acc[:, j].mean()), "std_acc": float(acc[:, j].std()),
                  "friedman_rank": float(ranks[:, j].mean()),
                  "p90": float(np.mean(frac[:, j] >= 0.9)), "p95": float(np.mean(frac[:, j] >= 0.95)),
                  "pma_mean": float(100 * frac[:, j].mean()), "pma_std": float(100 * frac[:, j].std())}
    return out


def head_to_head(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-dataset comparison of accuracies a (NTK) and b (RF): wins/ties/losses, mean
    difference and the two-sided Wilcoxon signed-rank p-value (scipy)."""
    from scipy.stats import wilcoxon
    diff = np.round(np.asarray(a) - np.asarray(b), 10)
    nz = diff != 0
    p = float(wilcoxon(diff[nz]).pvalue) if nz.sum() >= 1 and np.any(diff[nz] != diff[nz][0]) \
        else float("nan")
    return {"wins": int((diff > 0).sum()), "ties": int((~nz).sum()),
            "losses": int((diff < 0).sum()), "mean_diff": float(diff.mean()),
            "wilcoxon_p": p}


# -- outputs -----------------------------------------------------------------------------------
def _param_str(p: dict) -> str:
    return ";".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def _write_csv(rows: List[dict], path: Path) -> None:
    cols = ["dataset", "n", "d", "classes"] + list(CLASSIFIERS) + \
        [f"val_{c}" for c in CLASSIFIERS] + [f"params_{c}" for c in CLASSIFIERS] + ["seconds"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            res = r["results"]
            w.writerow([r["dataset"], r["n"], r["d"], r["classes"]] +
                       [repr(res[c]["acc"]) for c in CLASSIFIERS] +
                       [repr(res[c]["val"]) for c in CLASSIFIERS] +
                       [_param_str(res[c]["params"]) for c in CLASSIFIERS] + [f"{r['seconds']:.2f}"])


def _plot(acc: np.ndarray, summary: dict, names: List[str], path: Path) -> None:
    plt = pyplot()
    i_ntk, i_rf = CLASSIFIERS.index("NTK"), CLASSIFIERS.index("RF")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    x, y = 100 * acc[:, i_rf], 100 * acc[:, i_ntk]
    ax1.scatter(x, y, s=14, alpha=0.75)
    lo = min(x.min(), y.min()) - 2
    ax1.plot([lo, 100], [lo, 100], "k--", lw=0.8)
    ax1.set_xlabel("random forest accuracy (%)")
    ax1.set_ylabel("NTK SVM accuracy (%)")
    above = int((y > x + 1e-9).sum())
    below = int((y < x - 1e-9).sum())
    ax1.set_title(f"{len(names)} UCI datasets: NTK better on {above}, RF on {below}")
    order = sorted(CLASSIFIERS, key=lambda c: summary[c]["friedman_rank"])
    ranks = [summary[c]["friedman_rank"] for c in order]
    ax2.barh(order[::-1], ranks[::-1], color="C1")
    for k, (c, r) in enumerate(zip(order[::-1], ranks[::-1])):
        ax2.text(r, k, f" {r:.2f}  ({100 * summary[c]['mean_acc']:.2f}%)", va="center")
    ax2.set_xlabel("average Friedman rank (1 = best); label: average accuracy")
    ax2.set_xlim(1, len(CLASSIFIERS) + 0.9)
    ax2.set_title("rank among the compared classifiers")
    save_figure(fig, path)


# -- entry point -------------------------------------------------------------------------------
def _dataset_list(datasets, quick: bool, root) -> List[str]:
    from ..data.uci import uci_datasets
    available = uci_datasets(root)
    if datasets is None:
        return list(QUICK_DATASETS) if quick else available
    if isinstance(datasets, str):
        datasets = [s for s in datasets.replace(",", " ").split() if s]
    datasets = list(dict.fromkeys(datasets))
    unknown = [d for d in datasets if d not in available]
    if unknown:
        raise ValueError(f"uci: unknown dataset(s) {unknown}; choose among the 90 of "
                         f"ntkit.data.uci_datasets(): {', '.join(available)}")
    if not datasets:
        raise ValueError("uci: datasets is empty")
    return datasets


def run(out_dir: Union[str, Path], quick: bool = False, seed: int = 0, datasets=None,
        n_jobs: int = 2, root=None, resume: bool = True, data_dir=None,
        progress: Optional[bool] = None, **options) -> dict:
    """The benchmark; writes per_dataset.csv, per_dataset/<name>.json (resumable cache),
    uci.png and results.json into ``out_dir`` and returns the results dict.

    datasets: names (list or comma/space separated string); default: the 90 (quick: 5 small).
    n_jobs: datasets evaluated in parallel processes (joblib). resume: reuse cached rows.
    root / data_dir: the uci/ folder or the folder holding it (default: default_data_dir()).
    progress: a progress bar over the datasets on stderr.
    """
    if options:
        raise TypeError(f"uci.run: unknown option(s) {sorted(options)}; known: datasets, n_jobs, "
                        f"root (or data_dir), resume, progress")
    root = data_dir if root is None else root
    out_dir = Path(out_dir)
    cache = out_dir / "per_dataset"
    cache.mkdir(parents=True, exist_ok=True)
    names = _dataset_list(datasets, quick, root)
    from ..data.uci import load_uci  # fail early with a clear message if data is missing
    sizes = {}
    for nm in names:
        meta_ds = load_uci(nm, root)
        sizes[nm] = meta_ds.n * max(meta_ds.n, 1)

    def cached(nm, reuse=resume):
        p = cache / f"{nm}.json"
        if reuse and p.is_file():
            row = json.loads(p.read_text())
            if row.get("quick") == bool(quick) and row.get("seed") == seed:
                return row
        return None

    t0 = time.perf_counter()
    todo = sorted((nm for nm in names if cached(nm) is None), key=lambda nm: -sizes[nm])
    if todo:
        from joblib import Parallel, delayed
        jobs = max(1, min(int(n_jobs), len(todo)))
        finished = Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(_evaluate_and_cache)(nm, root, quick, seed, str(cache)) for nm in todo)
        bar = progress_bar(finished, "uci", enabled=progress, total=len(todo),
                           unit="dataset")
        for done in bar:
            bar.set_postfix_str(f"{done['dataset']} {done['seconds']:.1f} s")
    rows = [cached(nm, reuse=True) for nm in names]
    wall = time.perf_counter() - t0
    acc = np.array([[r["results"][c]["acc"] for c in CLASSIFIERS] for r in rows])
    summary = summarize(acc, CLASSIFIERS)
    i_ntk, i_rf = CLASSIFIERS.index("NTK"), CLASSIFIERS.index("RF")
    h2h = head_to_head(acc[:, i_ntk], acc[:, i_rf])
    _write_csv(rows, out_dir / "per_dataset.csv")
    _plot(acc, summary, names, out_dir / "uci.png")
    results = {
        "experiment": "uci", "paper": "Arora et al. 2020, ICLR (arXiv:1910.01663)",
        "quick": bool(quick), "seed": seed, "n_datasets": len(names), "datasets": names,
        "classifiers": list(CLASSIFIERS),
        "grids": {"C": list(C_GRID), "ntk": "dep 0..4, fix 0..dep", "nngp": "dep 0..4 (fix=dep)",
                  "rbf_gamma_times_d": list(GAMMA_FACTORS), "rf_max_features": "sqrt(d)*{.5,1,2} and d",
                  "rf_trees": 30 if quick else RF_TREES, "svm_max_iter": SVM_MAX_ITER,
                  "mlp_max_iter": 50 if quick else MLP_MAX_ITER,
                  "mlp": [{"hidden": list(h), "alpha": a} for h, a in MLP_GRID]},
        "summary": summary, "ntk_vs_rf": h2h,
        "ntk_beats_rf": bool(summary["NTK"]["mean_acc"] > summary["RF"]["mean_acc"]),
        "capped_fits": {c: int(sum(r["results"][c]["capped_fits"] for r in rows))
                        for c in CLASSIFIERS},
        "wall_seconds": wall, "n_jobs": int(n_jobs), "computed_now": len(todo),
        # per dataset, inside its worker: wall time (inflated when the cores are shared) and
        # the worker's CPU time
        "seconds_per_dataset": {r["dataset"]: r["seconds"] for r in rows},
        "cpu_seconds_per_dataset": {r["dataset"]: r.get("cpu_seconds") for r in rows},
        "per_dataset": rows, "csv": "per_dataset.csv", "figures": ["uci.png"],
    }
    return write_results(out_dir, results)


def _evaluate_and_cache(name: str, root, quick: bool, seed: int, cache: str) -> dict:
    row = evaluate_dataset(name, root, quick, seed)
    row.update(quick=bool(quick), seed=seed)
    path = Path(cache) / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(path)
    return {"dataset": name, "seconds": row["seconds"]}
