"""Training along the kernel principal components of the limiting NTK (Jacot et al. 2018, §6 and
Fig. 3; seed 002: "learning governed by NTK PCA: conv. rate along v_i ∝ λ_i"). The shared part
of the experiments ``ntk-principal`` and ``eigen-rate`` (not an experiment itself).

Setup (Jacot et al.'s MNIST experiment): the first N training digits of MNIST, pixels in [0, 1]
(784 inputs); a depth-L ReLU network (L Linear layers, W_std = 1, b_std = β = 0.1, NTK
parameterization) with a scalar output. Θ∞ is its limiting NTK on the N digits; its kernel PCA
with respect to the empirical distribution of the digits is

    Θ∞ / N = Σ_i λ_i v_i v_iᵀ,    λ_1 ≥ λ_2 ≥ …,   v_i ∈ R^N orthonormal,

(λ_i: eigenvalues of the kernel's integral operator under the empirical distribution, the
normalization that makes sets of different N comparable). Full-batch gradient descent on
C(f) = (1/2N) Σ_n (f(x_n) − f*(x_n))², θ ← θ − η ∇_θ C, of the infinite-width network moves
the residual r_t = f_t − f* on the training set by r_{t+1} = (I − η Θ∞/N) r_t, so its
component along v_i,

    c_i(t) = ⟨r_t, v_i⟩ / √N  =  c_i(0) (1 − η λ_i)^t  ≈  c_i(0) e^{−η λ_i t}   (ηλ_i ≪ 1),

decays at the rate λ_i per unit of time ηt (gradient flow: exactly e^{−ηλ_i t}). A finite
network is compared with that prediction started from its own initial function.

The target is f* = a √N Σ_{i ≤ k} v_i (each of the k leading components of size a in units
of f): a regression target whose components along the leading principal directions are known
and equal. The amplitude a is of the order of the network's own outputs at initialization
(√Σ(x, x) ≈ 0.2 for Jacot's network on MNIST pixels, Σ the NNGP kernel): a target ten times
larger moves a width-1,024 network out of the lazy regime (on 64 digits its NTK grew during
training and the components along v_2, v_3 converged about 1.5 times faster than λ_i
predicts), as the
lazy-training ratio ||f_0 − f*|| ||∇²f|| / ||∇f||² of seed 004 says it should. The random
initial function's components along v_i have variance v_iᵀ Σ v_i / N; a = 0.1 keeps c_2(0) and
c_3(0) dominated by the target.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

import ntkit as nk
from ntkit.data import default_data_dir, load_mnist
from .common import one_thread
from .units import Shard, UnitStore


def mnist_digits(n: int, data_dir=None) -> Tuple[np.ndarray, np.ndarray]:
    """The first ``n`` MNIST training digits: (x (n, 784) float64 in [0, 1], labels (n,)).
    FileNotFoundError naming the path when MNIST is absent (nothing is downloaded)."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    data = load_mnist(folder / "mnist", dtype=np.float64)
    if not 1 <= int(n) <= len(data.x_train):
        raise ValueError(f"n must lie in 1..{len(data.x_train)}, got {n}")
    return data.x_train[:n], data.y_train[:n]


def jacot_mlp(width: int, depth: int = 4, beta: float = 0.1) -> nk.Sequential:
    """Jacot et al.'s network: ``depth`` Linear layers (``depth``−1 hidden of ``width`` with
    ReLU), W_std = 1, b_std = β, NTK parameterization, scalar output."""
    layers = []
    for _ in range(int(depth) - 1):
        layers += [nk.Linear(int(width), W_std=1.0, b_std=float(beta)), nk.ReLU()]
    return nk.Sequential(*layers, nk.Linear(1, W_std=1.0, b_std=float(beta)))


def kernel_pca(x: np.ndarray, depth: int, beta: float) -> Tuple[np.ndarray, np.ndarray]:
    """(λ (N,) descending, V (N, N) orthonormal columns) of Θ∞ / N on the rows of ``x``
    (float64)."""
    theta = jacot_mlp(1, depth, beta).kernel(torch.from_numpy(x), get="ntk").ntk.double()
    n = theta.shape[0]
    evals, evecs = torch.linalg.eigh(0.5 * (theta + theta.T) / n)
    return evals.flip(0).numpy(), evecs.flip(1).numpy()


def principal_target(v: np.ndarray, k: int, scale: float) -> np.ndarray:
    """f* = a √N Σ_{i ≤ k} v_i on the N training points (a = ``scale``), shape (N,)."""
    return float(scale) * math.sqrt(v.shape[0]) * v[:, :int(k)].sum(axis=1)


def train_along_components(arch: nk.Sequential, x: np.ndarray, target: np.ndarray,
                           lam: np.ndarray, v: np.ndarray, *, seed: int, lr: float, steps: int,
                           top: int, dtype: torch.dtype) -> Dict:
    """Full-batch gradient descent of ``arch.init((d,), seed)`` on C = (1/2N) Σ (f − f*)² for
    ``steps`` steps at learning rate ``lr``, recorded at every step:

    * ``components`` (steps+1, top): c_i(t) = ⟨f_t − f*, v_i⟩/√N for i = 1..top;
    * ``deviation`` (steps+1,): ||r_t − (I − ηΘ∞/N)^t r_0|| / ||r_0||, the distance of the
      whole residual from the infinite-width dynamics started at the network's own f_0;
    * ``loss`` (steps+1,): C before each step and after the last.

    The outputs of the forward pass that computes each step's gradient are the ones recorded
    (no extra forward pass)."""
    n, d = x.shape
    net = arch.init((d,), seed=int(seed), dtype=dtype)
    params = [p for p in net.parameters() if p.requires_grad]
    xt = torch.as_tensor(x, dtype=dtype)
    yt = torch.as_tensor(target, dtype=dtype).reshape(n, 1)
    residuals = []
    for step in range(int(steps) + 1):
        out = net(xt)
        residuals.append((out - yt).detach().double().reshape(n).numpy().copy())
        if step == steps:
            break
        loss = 0.5 * ((out - yt) ** 2).sum() / n
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    del net, params
    r = np.stack(residuals)                                  # (steps+1, N)
    coeff = r @ v / math.sqrt(n)                             # components along every v_i
    decay = (1.0 - lr * lam)[None, :] ** np.arange(len(r))[:, None]
    predicted = coeff[0][None, :] * decay                    # infinite-width components
    deviation = np.linalg.norm(coeff - predicted, axis=1) / np.linalg.norm(coeff[0])
    return {"components": coeff[:, :int(top)].tolist(), "deviation": deviation.tolist(),
            "loss": (0.5 * (r ** 2).mean(axis=1)).tolist()}


def fit_factor(c: np.ndarray, start: int, window: int) -> float:
    """The per-step factor q of c(t+1) ≈ q c(t), least squares through the origin over the
    transitions t = start..start+window−1: q = Σ c(t+1)c(t) / Σ c(t)²."""
    c = np.asarray(c, float)
    start = int(min(max(start, 0), len(c) - 2))
    stop = int(min(start + max(window, 1), len(c) - 1))
    a, b = c[start:stop], c[start + 1:stop + 1]
    return float(np.dot(b, a) / np.dot(a, a))


def fit_window(lam: float, lr: float, steps: int, decades: float = 3.0) -> int:
    """Transitions used to fit the factor along a direction of eigenvalue ``lam``: the steps
    while the infinite-width prediction |1 − ηλ|^t stays above e^{−decades} (at least 1, at
    most ``steps``). Chosen from the prediction, not from the measured trajectory."""
    q = abs(1.0 - lr * lam)
    if q <= math.exp(-decades):
        return 1
    return int(min(steps, max(1, math.floor(decades / -math.log(q)))))


def fit_start(lam_max: float, lr: float, steps: int) -> int:
    """First transition fitted along the slower directions: after the fastest one (λ_1) has
    decayed, since a finite network's kernel couples it to the others during its first steps
    (its component kicks theirs by about η (Θ_0 − Θ∞)_{i1} c_1 / N). The steps for the
    predicted |1 − ηλ_1|^t to fall below e^{−3}, and at least 3 (a finite network's λ_1 differs
    from the limit's by a few per cent, so its factor is about 0.1 where the limit's is 0), at
    most a quarter of the steps."""
    return int(min(max(3, fit_window(lam_max, lr, steps)), max(steps // 4, 1)))


def measured_rate(c: np.ndarray, lam: float, lr: float, lam_max: float) -> float:
    """The rate (1 − q)/η of a recorded component c(t) along a direction of eigenvalue
    ``lam`` (q from ``fit_factor``: from step 0 along the leading direction λ = ``lam_max``,
    from ``fit_start`` along the others, over ``fit_window``): the infinite-width network gives
    exactly λ for any η (q = 1 − ηλ)."""
    steps = len(c) - 1
    start = 0 if lam >= lam_max else fit_start(lam_max, lr, steps)
    q = fit_factor(c, start, fit_window(lam, lr, steps - start))
    return (1.0 - q) / lr


def trained_units(experiment: str, out_dir, cfg: Dict, seed: int,
                  units: Dict[str, Tuple[int, int, int]], x: np.ndarray, target: np.ndarray,
                  lam: np.ndarray, v: np.ndarray, *, lr: float, top: int,
                  shard: Optional[str] = None,
                  progress: Optional[Callable] = None) -> Tuple[Dict[str, Dict], Optional[Dict]]:
    """The training runs of an experiment as resumable units (``units.UnitStore`` under
    ``out_dir/units``): ``units`` maps a key to (width, initialization, steps); each unit trains
    ``jacot_mlp(width, cfg["depth"], cfg["beta"])`` from seed ``seed·1000 + initialization``
    (``train_along_components`` in ``cfg["dtype"]``) and adds the measured ``rates`` along
    v_1..v_top and its ``seconds``. Returns ({key: unit} of the finished units, None), or with a
    ``shard`` ("i/k") the units it owns and the partial-run summary the experiment returns.
    Training runs on one torch thread (``common.one_thread``): on a shared two-core machine
    two threads wait on each other (a width-512 unit took 50 s on two threads, 1.5 s on one)."""
    dtype = getattr(torch, cfg["dtype"])

    def unit(key: str) -> Dict:
        width, init, steps = units[key]
        t1 = time.perf_counter()
        rec = train_along_components(jacot_mlp(width, cfg["depth"], cfg["beta"]), x, target,
                                     lam, v, seed=seed * 1000 + init, lr=lr, steps=steps,
                                     top=top, dtype=dtype)
        c = np.asarray(rec["components"])
        rec["rates"] = [measured_rate(c[:, i], lam[i], lr, lam[0]) for i in range(top)]
        rec["seconds"] = time.perf_counter() - t1
        return rec

    part = Shard.parse(shard) if shard else None
    with one_thread():
        done = UnitStore(out_dir, experiment, cfg, seed).compute(list(units), unit, shard=part,
                                                                 progress=progress)
    if part is None:
        return done, None
    return done, {"experiment": experiment, "shard": str(part), "units_done": len(done),
                  "units_total": len(units), "partial": True}
