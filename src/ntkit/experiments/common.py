"""What the experiment modules share, and nothing else: the configuration and output folder of a
run, figures and ``results.json``, the standalone ``python -m ntkit.experiments.<name>`` entry,
a few small builders (ReLU MLPs, inputs on the sphere and the unit circle), log-log fits, and
ensembles of finite networks trained by full-batch gradient descent on MSE.

Experiments import this module and the public API of ntkit (layers, predict, empirical, data);
they never import each other or the command line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

import ntkit as nk


# -- a run: configuration, output folder, figures, results --------------------------------------
def start_run(out_dir, quick: bool, options: Dict, quick_cfg: Dict, full_cfg: Dict
              ) -> Tuple[Dict, Path, float]:
    """(configuration: the preset overridden by ``options``, the created output folder, the
    start time for ``seconds``). An option the presets do not know is a TypeError naming it."""
    preset = quick_cfg if quick else full_cfg
    unknown = sorted(set(options) - set(preset))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known options: "
                        f"{', '.join(sorted(preset))}")
    cfg = {**preset, **options}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return cfg, out, time.perf_counter()


def pyplot():
    """matplotlib's pyplot with the non-interactive Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """tight_layout, write the PNG, close the figure (frees its memory in long sessions)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def machine_record() -> Dict:
    """Where a run happened: platform, CPU count, load average (1, 5, 15 min) at the end of the
    run, GPU (None without one), torch and ntkit versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on every platform
        load = None
    return {"platform": platform.platform(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": load, "gpu": gpu, "torch": torch.__version__,
            "ntkit": nk.__version__}


def write_results(out_dir: Path, results: Dict, indent: Optional[int] = 1) -> Dict:
    """Write ``results`` as ``out_dir/results.json`` (creating the folder), with a ``machine``
    record (``machine_record``) added unless present; returns it."""
    results.setdefault("machine", machine_record())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=indent))
    return results


def standalone_main(doc: str, run: Callable[..., Dict], summary: Callable[[Dict], Dict],
                    argv: Optional[Sequence[str]] = None) -> None:
    """``OUT_DIR [--quick] [--seed S]``: run the experiment, print ``summary(results)`` as JSON."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(summary(run(args.out_dir, quick=args.quick, seed=args.seed))))


def progress_bar(iterable: Iterable, desc: str, enabled: Optional[bool] = None,
                 **kwargs) -> Iterator:
    """A tqdm bar on stderr over ``iterable``. ``enabled`` None: shown when stderr is a
    terminal (tqdm's ``disable=None``); True/False: always/never."""
    from tqdm.auto import tqdm
    disable = None if enabled is None else not enabled
    return tqdm(iterable, desc=desc, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def one_thread():
    """Small tensors train faster on one thread (and do not oversubscribe shared machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- architectures and inputs -------------------------------------------------------------------
def relu_mlp(width: int, hidden_layers: int, W_std: float = math.sqrt(2.0), b_std: float = 0.1,
             out: int = 1) -> nk.Sequential:
    """``hidden_layers`` × [Linear(width), ReLU], then a Linear(out) readout; NTK
    parameterization, the same W_std and b_std in every Linear layer."""
    layers = []
    for _ in range(int(hidden_layers)):
        layers += [nk.Linear(width, W_std=W_std, b_std=b_std), nk.ReLU()]
    return nk.Sequential(*layers, nk.Linear(out, W_std=W_std, b_std=b_std))


def sphere_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """n points uniform on the unit sphere of R^d (float64), drawn from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


def unit_circle(angles: np.ndarray) -> np.ndarray:
    """Points (cos γ, sin γ) of the unit circle, shape (len(angles), 2)."""
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


# -- measurements -------------------------------------------------------------------------------
def relative_frobenius(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F, in float64."""
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
    """Least-squares slope and intercept of log y against log x."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


def mse(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """½ Σ (f − y)² ('sum') or ½ Σ (f − y)² / y.size ('mean', neural-tangents' normalization)."""
    total = 0.5 * ((out - y) ** 2).sum()
    return total if loss == "sum" else total / y.numel()


# -- ensembles of finite networks trained by gradient descent -----------------------------------
_VMAP_MAX_PARAMS = 200_000


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
