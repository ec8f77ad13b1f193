"""Kernel ridge regression (K + μI) α = Y by preconditioned conjugate gradients, K streamed.

``conjugate_gradient`` is PCG (Hestenes & Stiefel 1952; Saad, "Iterative Methods for Sparse
Linear Systems", Alg. 9.1) run on the k columns of Y together: one product K P (n, k) per
iteration serves every column, each column keeps its own step sizes, and a column stops moving
once its relative residual ‖y − (K + μI)α‖ / ‖y‖ is below ``tol``. The largest relative
residual over the columns is shown (tqdm) and kept per iteration (``CGResult.residuals``).

``solve_kernel`` is the kernel-regression solve of ``ntkit.estimators`` (the t = ∞ limit of
gradient flow on the MSE: α = (K + μI)⁻¹ Y with μ = diag_reg · mean(diag K), neural-tangents'
convention) for a K that is never held whole: a ``KernelOperator`` over a kernel store or over
recomputed tiles, preconditioned by ``NystromPreconditioner`` on ``centres`` random columns.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import numpy as np

from .operator import KernelOperator, StoreBands
from .precondition import NystromPreconditioner

log = logging.getLogger("ntkit.scale")


@dataclass
class CGResult:
    """``alpha`` (n, k) (or (n,) for a 1-D Y), ``iterations`` run, ``residuals``: the largest
    relative residual over the columns after each iteration (index 0: before the first, i.e.
    1.0 for a zero start), ``converged`` (all columns below ``tol``), ``ridge`` μ used,
    ``preconditioner_rank`` (0: none), ``seconds`` (setup = centres + eigensystem, and
    iterations)."""

    alpha: np.ndarray
    iterations: int
    residuals: List[float]
    converged: bool
    ridge: float
    preconditioner_rank: int = 0
    seconds: dict = field(default_factory=dict)


def _check_targets(y, n: int) -> np.ndarray:
    """Y (n,) or (n, k) as a finite float64 (n, k) array."""
    y = np.asarray(y)
    if y.dtype == object or not np.issubdtype(y.dtype, np.number):
        raise TypeError(f"Y must be a numeric array, got dtype {y.dtype}")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"Y must have shape ({n},) or ({n}, k) for a kernel of {n} points, "
                         f"got {y.shape}")
    y2 = y.astype(np.float64).reshape(n, -1)
    if not np.isfinite(y2).all():
        raise ValueError(f"Y contains {int((~np.isfinite(y2)).sum())} NaN or Inf value(s)")
    return y2


def _check_positive(value, name: str, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a {'positive integer' if integer else 'number > 0'}, "
                         f"got {value!r}")


def conjugate_gradient(matmul: Callable[[np.ndarray], np.ndarray], y, ridge: float = 0.0, *,
                       precondition: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                       tol: float = 1e-6, max_iter: int = 1000, progress: bool = False,
                       callback: Optional[Callable[[int, np.ndarray], None]] = None) -> CGResult:
    """(K + ridge·I) α = Y by PCG, K symmetric positive semi-definite given by ``matmul``
    (V (n, k) -> K V), Y (n,) or (n, k). ``precondition`` (R -> P⁻¹R, symmetric positive
    definite) or None. Stops when every column's relative residual is below ``tol`` or after
    ``max_iter`` iterations (then ``converged`` is False). ``callback(iteration, alpha)`` runs
    after each iteration (e.g. to keep snapshots)."""
    if not isinstance(ridge, numbers.Real) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge (λ) must be a finite number >= 0, got {ridge!r}")
    _check_positive(tol, "tol")
    _check_positive(max_iter, "max_iter", integer=True)
    y_in = np.asarray(y)
    n = y_in.shape[0] if y_in.ndim else 0
    y2 = _check_targets(y_in, n)
    start = time.perf_counter()
    norms = np.linalg.norm(y2, axis=0)
    norms[norms == 0] = 1.0
    alpha = np.zeros_like(y2)
    r = y2.copy()
    z = precondition(r) if precondition is not None else r.copy()
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    rel = np.linalg.norm(r, axis=0) / norms
    residuals = [float(rel.max(initial=0.0))]
    active = rel > tol
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_iter, desc="CG", unit="it")
    it = 0
    tick = time.perf_counter()
    try:
        while active.any() and it < max_iter:
            ap = matmul(p) + ridge * p
            pap = np.einsum("ij,ij->j", p, ap)
            if np.any(pap[active] <= 0) or not np.isfinite(ap).all():
                raise FloatingPointError(
                    "CG met a direction of non-positive curvature: K + λI is not positive "
                    "definite to working precision (add diag_reg > 0) or the kernel holds NaN")
            step = np.where(active, rz / np.where(active, pap, 1.0), 0.0)
            alpha += step * p
            r -= step * ap
            rel = np.linalg.norm(r, axis=0) / norms
            it += 1
            residuals.append(float(rel.max(initial=0.0)))
            active = active & (rel > tol)
            log.info("CG iteration %d: relative residual %.3e (%.1f s)", it, residuals[-1],
                     time.perf_counter() - tick)
            tick = time.perf_counter()
            if callback is not None:
                callback(it, alpha.reshape(y_in.shape))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(residual=f"{residuals[-1]:.2e}")
            if not active.any():
                break
            z = precondition(r) if precondition is not None else r.copy()
            rz_new = np.einsum("ij,ij->j", r, z)
            beta = np.where(active, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
            p = np.where(active, z + beta * p, 0.0)
            rz = rz_new
    finally:
        if bar is not None:
            bar.close()
    return CGResult(alpha=alpha.reshape(y_in.shape), iterations=it, residuals=residuals,
                    converged=bool(not active.any()), ridge=float(ridge),
                    seconds={"iterations": time.perf_counter() - start})


def solve_kernel(kernel: Union[KernelOperator, str, os.PathLike], y, diag_reg: float = 0.0, *,
                 centres: int = 1000, tol: float = 1e-6, max_iter: int = 1000, seed: int = 0,
                 name: str = "ntk", client=None, progress: bool = False,
                 callback: Optional[Callable[[int, np.ndarray], None]] = None) -> CGResult:
    """α = (K + μI)⁻¹ Y, μ = diag_reg · mean(diag K), by PCG with a Nyström preconditioner on
    ``centres`` columns drawn with ``seed`` (0: none). ``kernel``: a ``KernelOperator``, or the
    path of a complete kernel store of x1 against itself (its kernel ``name``, streamed from
    disk, on ``client`` when given). The preconditioner needs μ > 0: ``centres`` is ignored
    (no preconditioner) when diag_reg = 0."""
    if not isinstance(diag_reg, numbers.Real) or not math.isfinite(diag_reg) or diag_reg < 0:
        raise ValueError(f"diag_reg (λ, relative to the mean of diag K) must be a finite number "
                         f">= 0, got {diag_reg!r}")
    if isinstance(centres, bool) or not isinstance(centres, numbers.Integral) or centres < 0:
        raise ValueError(f"centres must be an integer >= 0 (0: no preconditioner), got "
                         f"{centres!r}")
    op = kernel if isinstance(kernel, KernelOperator) else \
        KernelOperator(StoreBands(kernel, name), client=client, progress=progress)
    y2 = _check_targets(y, op.n)
    start = time.perf_counter()
    diag = op.diagonal()
    ridge = float(diag_reg) * float(diag.mean())
    log.info("solve: diag K of %d points in %.1f s, ridge %.4g", op.n,
             time.perf_counter() - start, ridge)
    pre = None
    if centres and ridge > 0:
        idx = np.sort(np.random.default_rng(seed).choice(op.n, size=min(int(centres), op.n),
                                                         replace=False))
        tick = time.perf_counter()
        cols = op.columns(idx)
        log.info("solve: K[:, centres] (%d columns, one pass) in %.1f s", len(idx),
                 time.perf_counter() - tick)
        tick = time.perf_counter()
        pre = NystromPreconditioner.from_columns(cols, idx, ridge)
        del cols
        log.info("solve: Nyström eigensystem (rank %d) in %.1f s", pre.rank,
                 time.perf_counter() - tick)
    setup = time.perf_counter() - start
    result = conjugate_gradient(op.matmul, y2 if np.ndim(y) == 2 else y2[:, 0], ridge,
                                precondition=None if pre is None else pre.apply, tol=tol,
                                max_iter=max_iter, progress=progress, callback=callback)
    result.preconditioner_rank = 0 if pre is None else pre.rank
    result.seconds["setup"] = setup
    log.info("solve: %d CG iterations to relative residual %.3e (tol %g, %s) in %.1f s, "
             "setup %.1f s", result.iterations, result.residuals[-1], tol,
             "converged" if result.converged else "not converged",
             result.seconds["iterations"], setup)
    return result
