"""``ntkit fit``: fit an NTK or NNGP kernel estimator on a dataset and print test metrics."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .common import Context, UsageError


def make_estimator(kernel: str, arch, t: Optional[float], diag_reg: float, dtype: str,
                   batch_size: Optional[int]):
    """``nk.NTKClassifier`` for kernel='ntk'; ``nk.NNGPRegressor`` on one-hot targets (argmax
    of the posterior mean) for kernel='nngp'."""
    import ntkit as nk

    name = "NTKClassifier" if kernel == "ntk" else "NNGPRegressor"
    cls = getattr(nk, name, None)
    if cls is None:
        raise RuntimeError(f"nk.{name} is not available in this installation (ntkit.estimators "
                           f"missing)")
    return cls(arch=arch, t=t, diag_reg=diag_reg, batch_size=batch_size, dtype=dtype)


def run_fit(ctx: Context, arch, arch_text: str, data: str, kernel: str, t: Optional[float],
            diag_reg: float, n_train: Optional[int], n_test: Optional[int],
            batch_size: Optional[int]) -> dict:
    """Fit on the training split, evaluate on the test split; returns the metrics."""
    from ..data.registry import inputs_for, load_dataset

    if t is not None and t < 0:
        raise UsageError(f"--t must be >= 0 (or omitted for infinite time), got {t}")
    if diag_reg < 0:
        raise UsageError(f"--diag-reg must be >= 0, got {diag_reg}")
    ds = load_dataset(data, ctx.data_dir, n_train=n_train, n_test=n_test, dtype=ctx.np_dtype,
                      seed=ctx.seed)
    xtr, xte = inputs_for(arch, ds, ds.x_train), inputs_for(arch, ds, ds.x_test)
    if ctx.device == "cuda":
        import torch
        device = ctx.torch_device()
        xtr, xte = torch.from_numpy(xtr).to(device), torch.from_numpy(xte).to(device)
    est = make_estimator(kernel, arch, t, diag_reg, ctx.dtype, batch_size)
    onehot = np.eye(ds.n_classes)[ds.y_train]
    ctx.say(f"fit: {kernel.upper()} kernel regression, {arch_text}, on {ds.name} "
            f"({len(ds.y_train)} train / {len(ds.y_test)} test, t={'inf' if t is None else t},"
            f" diag_reg={diag_reg}, {ctx.dtype}, {ctx.device})")
    with ctx.progress(total=2, desc="fit + predict", unit="step") as bar:
        start = time.perf_counter()
        est.fit(xtr, ds.y_train if kernel == "ntk" else onehot)
        fit_s = time.perf_counter() - start
        bar.update(1)
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
    return metrics


def format_metrics(metrics: dict) -> str:
    rows = [("test accuracy", f"{100 * metrics['test_accuracy']:.2f} %"),
            ("test MSE (one-hot)", f"{metrics['test_mse']:.5f}"),
            ("fit time", f"{metrics['fit_seconds']:.2f} s"),
            ("predict time", f"{metrics['predict_seconds']:.2f} s"),
            ("train / test rows", f"{metrics['n_train']} / {metrics['n_test']}")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
