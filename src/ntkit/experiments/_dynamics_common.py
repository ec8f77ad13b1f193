"""Shared pieces of the training-dynamics experiments (linearization, ntk-gp,
two-layer-sigmoid, lazy-training): ensembles of finite networks from ``arch.init`` trained by
full-batch gradient descent on MSE, vectorized over the ensemble, plus small utilities."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap


@contextlib.contextmanager
def one_thread():
    """Small tensors train faster on one thread (and do not oversubscribe shared machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mse(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """½ Σ (f − y)² ('sum') or ½ Σ (f − y)² / y.size ('mean', neural-tangents' normalization)."""
    total = 0.5 * ((out - y) ** 2).sum()
    return total if loss == "sum" else total / y.numel()


def train_ensemble(arch, in_shape, seeds: Sequence[int], x_train: torch.Tensor,
                   y_train: torch.Tensor, x_eval: torch.Tensor, *, learning_rate: float,
                   steps: int, loss: str = "mean", record: Optional[Iterable[int]] = None,
                   dtype: torch.dtype = torch.float64, chunk: int = 64) -> np.ndarray:
    """Outputs on ``x_eval`` of networks ``arch.init(in_shape, seed)`` for each seed, trained by
    full-batch gradient descent θ ← θ − η ∇L on ``mse(f(x_train), y_train, loss)``.

    Small networks are trained ``chunk`` at a time with their parameters stacked
    (torch.func.vmap; the summed loss of a chunk has independent gradients per network); wide
    ones (more than 200,000 parameters) one after the other. Returns an array
    (n_seeds, len(record), m, outputs) for the steps in ``record`` (default: the last step).
    """
    record = sorted(set([steps] if record is None else record))
    out = []
    for c0 in range(0, len(seeds), chunk):
        models = [arch.init(in_shape, seed=int(s), dtype=dtype) for s in seeds[c0:c0 + chunk]]
        n_params = sum(p.numel() for p in models[0].parameters())
        if n_params > _VMAP_MAX_PARAMS:      # wide nets: vmap's batched backward is slower
            out.extend(_train_one(m, x_train, y_train, x_eval, learning_rate, steps, loss, record)
                       for m in models)
        else:
            out.extend(_train_stacked(models, x_train, y_train, x_eval, learning_rate, steps,
                                      loss, record))
    return torch.stack(out, 0).numpy()


_VMAP_MAX_PARAMS = 200_000


def _train_one(model, x_train, y_train, x_eval, lr, steps, loss, record) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    snaps = []
    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                snaps.append(model(x_eval).detach().clone())
        if step == steps:
            break
        grads = torch.autograd.grad(mse(model(x_train), y_train, loss), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return torch.stack(snaps, 0)


def _train_stacked(models, x_train, y_train, x_eval, lr, steps, loss, record):
    params, buffers = stack_module_state(models)
    base = models[0]

    def f(p, b, x):
        return functional_call(base, (p, b), (x,))

    fwd = vmap(f, in_dims=(0, 0, None))
    names = [k for k, v in params.items() if v.requires_grad]
    snaps = []
    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                snaps.append(fwd(params, buffers, x_eval).detach().clone())
        if step == steps:
            break
        pred = fwd(params, buffers, x_train)
        total = mse(pred, y_train.expand_as(pred), "sum")
        if loss == "mean":
            total = total / y_train.numel()
        grads = torch.autograd.grad(total, [params[k] for k in names])
        with torch.no_grad():
            for k, g in zip(names, grads):
                params[k].sub_(lr * g)
    return list(torch.stack(snaps, 1))


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def unit_circle(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def write_results(out_dir: Path, results: Dict) -> Dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def figure():
    """matplotlib's pyplot with the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
