"""``ntkit fit``: fit an NTK or NNGP kernel estimator on a dataset and print test metrics.

Three ways: in memory (the default, ``--solver direct``); ``--solver cg`` (the estimator's
scale path: the train kernel as tiles in a Zarr store ``--store`` computed on Dask, solved by
preconditioned conjugate gradients, predictions streamed); ``--kernel K.zarr`` (fit from an
existing store of K(train, train), e.g. from ``ntkit kernel --out K.zarr``: the same solve, the
test kernel read from ``--test-kernel KT.zarr`` or recomputed tile by tile).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .common import Context, UsageError


@dataclass
class CGOptions:
    """``--solver cg`` / ``--kernel K.zarr``: the store of the train kernel (None: tiles
    recomputed in every iteration), the Dask scheduler (None: local), the CG tolerance,
    iteration cap and Nyström centres."""

    store: Optional[Path] = None
    scheduler: Optional[str] = None
    tol: float = 1e-3
    max_iter: int = 300
    centres: int = 1000


@contextlib.contextmanager
def scale_log(ctx: Context):
    """The phase lines of ``ntkit.scale`` (kernel, solve setup, each CG iteration's residual
    and seconds, predictions) on stderr while the block runs, unless --quiet."""
    logger = logging.getLogger("ntkit.scale")
    if ctx.quiet:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def make_estimator(kernel: str, arch, t: Optional[float], diag_reg: float, dtype: str,
                   batch_size: Optional[int], cg: Optional[CGOptions] = None):
    """``nk.NTKClassifier`` for kernel='ntk' (with ``cg``: solver='cg'); ``nk.NNGPRegressor``
    on one-hot targets (argmax of the posterior mean) for kernel='nngp'."""
    import ntkit as nk

    name = "NTKClassifier" if kernel == "ntk" else "NNGPRegressor"
    cls = getattr(nk, name, None)
    if cls is None:
        raise RuntimeError(f"nk.{name} is not available in this installation (ntkit.estimators "
                           f"missing)")
    if cg is None:
        return cls(arch=arch, t=t, diag_reg=diag_reg, batch_size=batch_size, dtype=dtype)
    if kernel != "ntk":
        raise UsageError("--solver cg fits the NTK (kernel regression); use --kernel ntk")
    return cls(arch=arch, t=t, diag_reg=diag_reg, batch_size=batch_size, dtype=dtype,
               solver="cg", store=None if cg.store is None else str(cg.store),
               client=cg.scheduler, cg_tol=cg.tol, cg_max_iter=cg.max_iter,
               cg_centres=cg.centres)


def _check_reg(t: Optional[float], diag_reg: float) -> None:
    if t is not None and t < 0:
        raise UsageError(f"--t must be >= 0 (or omitted for infinite time), got {t}")
    if diag_reg < 0:
        raise UsageError(f"--diag-reg must be >= 0, got {diag_reg}")


def run_fit(ctx: Context, arch, arch_text: str, data: str, kernel: str, t: Optional[float],
            diag_reg: float, n_train: Optional[int], n_test: Optional[int],
            batch_size: Optional[int], cg: Optional[CGOptions] = None) -> dict:
    """Fit on the training split, evaluate on the test split; returns the metrics. ``cg``:
    the NTK by ``solver='cg'`` (``CGOptions``)."""
    from ..data.registry import inputs_for, load_dataset

    _check_reg(t, diag_reg)
    if cg is not None and t is not None:
        raise UsageError("--solver cg solves kernel regression (infinite time): omit --t")
    ds = load_dataset(data, ctx.data_dir, n_train=n_train, n_test=n_test, dtype=ctx.np_dtype,
                      seed=ctx.seed)
    xtr, xte = inputs_for(arch, ds, ds.x_train), inputs_for(arch, ds, ds.x_test)
    if ctx.device == "cuda":
        import torch
        device = ctx.torch_device()
        xtr, xte = torch.from_numpy(xtr).to(device), torch.from_numpy(xte).to(device)
    est = make_estimator(kernel, arch, t, diag_reg, ctx.dtype, batch_size, cg)
    onehot = np.eye(ds.n_classes)[ds.y_train]
    ctx.say(f"fit: {kernel.upper()} kernel regression, {arch_text}, on {ds.name} "
            f"({len(ds.y_train)} train / {len(ds.y_test)} test, t={'inf' if t is None else t},"
            f" diag_reg={diag_reg}, {ctx.dtype}, {ctx.device}"
            f"{', solver cg' if cg is not None else ''})")
    with ctx.progress(total=2, desc="fit + predict", unit="step") as bar, \
            scale_log(ctx) if cg is not None else contextlib.nullcontext():
        start = time.perf_counter()
        est.fit(xtr, ds.y_train if kernel == "ntk" else onehot)
        fit_s = time.perf_counter() - start
        bar.update(1)
        if cg is not None:
            logging.getLogger("ntkit.scale").info("fit: %.1f s (kernel + solve)", fit_s)
        start = time.perf_counter()
        if kernel == "ntk":
            scores = np.asarray(est.predict_outputs(xte))
        else:
            scores = np.asarray(est.predict(xte))
        predict_s = time.perf_counter() - start
        bar.update(1)
    if kernel == "ntk":
        classes = np.asarray(getattr(est, "classes_", np.arange(scores.shape[1])))
        pred = classes[scores.argmax(axis=1)]
        targets = (classes[None, :] == ds.y_test[:, None]).astype(float)
    else:
        pred = scores.argmax(axis=1)
        targets = np.eye(ds.n_classes)[ds.y_test]
    metrics = {
        "arch": arch_text, "data": ds.name, "kernel": kernel,
        "t": None if t is None else float(t), "diag_reg": float(diag_reg),
        "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)),
        "test_accuracy": float(np.mean(pred == ds.y_test)),
        "test_mse": float(np.mean((scores - targets) ** 2)),
        "fit_seconds": round(fit_s, 4), "predict_seconds": round(predict_s, 4),
    }
    if cg is not None:
        metrics.update(solver="cg", cg_iterations=int(est.n_iter_),
                       cg_residual=float(est.cg_residuals_[-1]),
                       cg_converged=bool(est.cg_converged_))
    return metrics


def _store_inputs(ctx: Context, arch, data: str, meta: dict, n_train: Optional[int],
                  n_test: Optional[int], store: Path):
    """The dataset's splits in the store's dtype, the training inputs checked against the
    store's fingerprint (the labels must belong to the rows the kernel was computed on)."""
    from ..data.registry import inputs_for, load_dataset
    from ..scale.store import fingerprint

    dtype = np.float32 if meta["dtype"] == "float32" else np.float64
    if n_train is None:
        n_train = int(meta["n1"])
    ds = load_dataset(data, ctx.data_dir, n_train=n_train, n_test=n_test, dtype=dtype,
                      seed=ctx.seed)
    xtr = np.ascontiguousarray(inputs_for(arch, ds, ds.x_train))
    xte = np.ascontiguousarray(inputs_for(arch, ds, ds.x_test))
    if fingerprint(xtr, None) != meta["fingerprint"]:
        raise UsageError(f"{store} was not computed on the training split of {data!r} with "
                         f"--n-train {n_train} and --seed {ctx.seed} (its inputs' fingerprint "
                         f"differs): give the --data, --n-train (ntkit kernel's --n) and --seed "
                         f"the store was made with")
    return ds, xtr, xte


def run_fit_store(ctx: Context, store: Path, data: str, diag_reg: float,
                  n_train: Optional[int], n_test: Optional[int], cg: CGOptions,
                  test_store: Optional[Path] = None) -> dict:
    """Kernel regression from the kernel store ``store`` of K(train, train) (its NTK, else its
    NNGP), α = (K + μI)⁻¹ onehot(y) by PCG streaming the store (``ntkit.scale.solve_kernel``);
    test scores K(test, train) α from ``test_store`` or recomputed with the store's
    architecture. Returns the metrics, with the seconds of each phase and CG's record."""
    from ..scale import open_kernel, predict_recomputed, predict_stored, solve_kernel
    from ..scale.cluster import dask_client
    from ..scale.store import NotAKernelStore, fingerprint

    _check_reg(None, diag_reg)
    try:
        k = open_kernel(store)
        kt = None if test_store is None else open_kernel(test_store)
    except NotAKernelStore as err:
        raise UsageError(str(err)) from None
    meta = k.meta
    if meta.get("n2") is not None:
        raise UsageError(f"{store} holds K(x1, x2) for other x2; --kernel needs the store of "
                         f"K(train, train) (ntkit kernel --split train --out K.zarr)")
    if not k.complete:
        raise UsageError(f"{store} holds {int(k.done.sum())} of {len(k.tiles)} tiles: finish it "
                         f"first (run the same ntkit kernel command again)")
    name = "ntk" if "ntk" in meta["kernels"] else "nngp"
    arch = k.architecture()
    ds, xtr, xte = _store_inputs(ctx, arch, data, meta, n_train, n_test, store)
    if kt is not None:
        if fingerprint(xte, xtr) != kt.meta["fingerprint"] or name not in kt.meta["kernels"]:
            raise UsageError(f"{test_store} is not K(test, train) of these splits with the "
                             f"{name.upper()} (ntkit kernel --split test, same --data, --n and "
                             f"--seed as {store})")
    onehot = np.eye(ds.n_classes)[ds.y_train]
    ctx.say(f"fit: {name.upper()} kernel regression from {store} ({meta['architecture']}, "
            f"{meta['n1']} train / {len(ds.y_test)} test, diag_reg={diag_reg}, "
            f"{meta['dtype']}, CG tol {cg.tol})")
    with dask_client(cg.scheduler) if cg.scheduler else contextlib.nullcontext() as client, \
            scale_log(ctx):
        start = time.perf_counter()
        res = solve_kernel(store, onehot, diag_reg, centres=cg.centres, tol=cg.tol,
                           max_iter=cg.max_iter, seed=ctx.seed, name=name, client=client,
                           progress=not ctx.quiet)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        if kt is not None:
            scores = predict_stored(test_store, res.alpha, name=name, client=client,
                                    progress=not ctx.quiet)
        else:
            scores = predict_recomputed(arch, xte, xtr, res.alpha, name=name,
                                        rows=int(meta["tile"]), tile=int(meta["tile"]),
                                        client=client, progress=not ctx.quiet)
        predict_s = time.perf_counter() - start
    pred = scores.argmax(axis=1)
    return {
        "arch": meta["architecture"], "data": ds.name, "kernel": name, "kernel_store": str(store),
        "t": None, "diag_reg": float(diag_reg), "solver": "cg",
        "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)),
        "test_accuracy": float(np.mean(pred == ds.y_test)),
        "test_mse": float(np.mean((scores - np.eye(ds.n_classes)[ds.y_test]) ** 2)),
        "fit_seconds": round(fit_s, 4), "predict_seconds": round(predict_s, 4),
        "cg_iterations": int(res.iterations), "cg_residual": float(res.residuals[-1]),
        "cg_converged": bool(res.converged), "cg_residuals": [float(r) for r in res.residuals],
        "preconditioner_rank": int(res.preconditioner_rank),
    }


def fit_from_args(ctx: Context, args) -> dict:
    """``ntkit fit``'s parsed arguments checked against each other and run: ``run_fit_store``
    for --kernel K.zarr, else ``run_fit`` (with ``CGOptions`` for --solver cg)."""
    from .archspec import parse_arch

    cg = None
    if args.solver == "cg" or args.kernel not in ("ntk", "nngp"):
        if not 0 < args.cg_tol < 1:
            raise UsageError(f"--cg-tol must be in (0, 1), got {args.cg_tol}")
        if args.cg_centres < 0:
            raise UsageError(f"--cg-centres must be >= 0, got {args.cg_centres}")
        cg = CGOptions(store=args.store, scheduler=args.scheduler, tol=args.cg_tol,
                       max_iter=args.cg_max_iter, centres=args.cg_centres)
    elif args.store is not None or args.scheduler is not None:
        raise UsageError("--store and --scheduler need --solver cg (or --kernel K.zarr)")
    if args.test_kernel is not None and args.kernel in ("ntk", "nngp"):
        raise UsageError("--test-kernel needs --kernel K.zarr")
    ctx.seed_everything()
    if args.kernel not in ("ntk", "nngp"):
        if args.arch is not None or args.t is not None or args.store is not None:
            raise UsageError("--kernel K.zarr fits from the store (its architecture, infinite "
                             "time): omit --arch, --t and --store")
        metrics = run_fit_store(ctx, Path(args.kernel), args.data, args.diag_reg, args.n_train,
                                args.n_test, cg, args.test_kernel)
    else:
        if args.arch is None:
            raise UsageError("ntkit fit needs --arch (or --kernel K.zarr)")
        metrics = run_fit(ctx, parse_arch(args.arch), args.arch, args.data, args.kernel, args.t,
                          args.diag_reg, args.n_train, args.n_test, args.batch_size, cg)
    return metrics


def format_metrics(metrics: dict) -> str:
    rows = [("test accuracy", f"{100 * metrics['test_accuracy']:.2f} %"),
            ("test MSE (one-hot)", f"{metrics['test_mse']:.5f}"),
            ("fit time", f"{metrics['fit_seconds']:.2f} s"),
            ("predict time", f"{metrics['predict_seconds']:.2f} s"),
            *([("CG iterations / residual", f"{metrics['cg_iterations']} / "
                f"{metrics['cg_residual']:.2e}")] if "cg_iterations" in metrics else []),
            ("train / test rows", f"{metrics['n_train']} / {metrics['n_test']}")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
