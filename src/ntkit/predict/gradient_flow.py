"""Closed-form MSE training dynamics of a linearized (or infinitely wide) network.

A network trained by gradient descent on MSE in its linear regime evolves as a linear model
with the (empirical or infinite-width) NTK Θ (Jacot et al. 2018; Lee et al. 2019 section 2.2;
seed 000, eqs. 24–26). With K = Θ(X, X) (n, n), targets Y (n, k), outputs at initialization
f₀, rate c = η/N (N = 1 for L = ½ Σ (f − y)², N = Y.size for L = 1/(2N) Σ (f − y)²) and an
optional ridge ρ (A = K + ρ I = V diag(λ) V^T):

    f_t(x) = f₀(x) + Θ(x, X) A^{-1} (I − D_t) (Y − f₀(X)),
    D_t = exp(−c A t)        (gradient flow, time t in units of steps of size η)
    D_t = (I − c A)^t        (gradient descent, t whole steps)

t = ∞ is kernel (ridge) regression f₀(x) + Θ(x, X) A^{-1} (Y − f₀(X)); with ρ = 0 the training
targets are interpolated. All times of an array share one eigendecomposition of A; t = ∞ alone
uses a Cholesky factor instead. Training points use Θ(X, X) = V diag(λ − ρ) V^T exactly.
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import torch

from ._linalg import (ArrayLike, SingularKernelError, SingularKernelWarning, Spectrum, as_kernel,
                      as_tensor, check_train, cholesky_solver, reg_value, singular_message,
                      through_diag)
from ._time import as_times, phi_over_lambda, scale

Times = Union[None, float, int, np.ndarray, torch.Tensor, list]


class MSEDynamics:
    """Predictions of MSE gradient flow / gradient descent at any time, for train and test points.

    Parameters
    ----------
    k_train_train : (n, n) kernel Θ(X, X) (NTK, or the empirical NTK of one network).
    y_train : (n,) or (n, k) targets.
    learning_rate : η.
    loss : 'sum' (L = ½ Σ (f − y)², time unit η) or 'mean' (L = ½ Σ (f − y)² / y.size, as in
        neural-tangents: the rate becomes η / y.size).
    diag_reg : ridge ρ added to the diagonal of Θ(X, X).
    diag_reg_relative : if True, ρ = diag_reg · mean(diag Θ(X, X)) (neural-tangents' convention).
    discrete : False for gradient flow (continuous t), True for gradient descent with step η
        (t = number of steps, residual factor (1 − ηλ/N)^t).
    on_singular : what t = ∞ does when Θ(X, X) + ρI is singular to working precision: 'raise'
        (SingularKernelError naming the fix) or 'warn' (a warning with the fix, then the
        minimum-norm limit of gradient flow: directions with λ ≈ 0 are never learned).

    The ridge ρ is exactly weight decay on the linearized model: the prediction equals gradient
    flow/descent on ½|f(X) − Y|² + ½ρ|θ − θ₀|² (divided by N for loss='mean') of the linear
    model f₀ + ∇f₀ (θ − θ₀), whose kernel is Θ.

    Example (seed 000): ``MSEDynamics(ntk_dd, y).predict(t=[0, 10, 100], k_test_train=ntk_td,
    fx_train_0=f0_train, fx_test_0=f0_test)`` -> (3, m, k).
    """

    def __init__(self, k_train_train: ArrayLike, y_train: ArrayLike, *, learning_rate: float = 1.0,
                 loss: str = "sum", diag_reg: float = 0.0, diag_reg_relative: bool = False,
                 discrete: bool = False, on_singular: str = "raise"):
        if on_singular not in ("raise", "warn"):
            raise ValueError(f"on_singular must be 'raise' or 'warn', got {on_singular!r}")
        self.on_singular = on_singular
        self.k, self.y = check_train(k_train_train, y_train)
        self.n = self.k.shape[0]
        self.c = scale(learning_rate, loss, self.y.numel())
        self.learning_rate, self.loss, self.discrete = float(learning_rate), loss, bool(discrete)
        self.rho = reg_value(self.k, diag_reg, diag_reg_relative)
        self._spectrum: Optional[Spectrum] = None
        self._solve = None

    # -- cached factorizations ----------------------------------------------------------------
    @property
    def spectrum(self) -> Spectrum:
        """Eigendecomposition of Θ(X, X) + ρ I (computed once, on first use)."""
        if self._spectrum is None:
            self._spectrum = Spectrum(self.k, self.rho)
        return self._spectrum

    def _solver(self):
        if self._solve is None:
            self._solve = cholesky_solver(self.k, self.rho)
        return self._solve

    def max_learning_rate(self) -> float:
        """Largest stable step of gradient descent: η < 2 N / λ_max(Θ + ρI) (N per ``loss``)."""
        return 2.0 * (self.learning_rate / self.c) / self.spectrum.lambda_max

    # -- predictions --------------------------------------------------------------------------
    def coefficients(self, t: Times = None, fx_train_0: ArrayLike = 0.0) -> torch.Tensor:
        """Dual coefficients α_t = A^{-1}(I − D_t)(Y − f₀(X)), so that for any point
        f_t(x) = f₀(x) + Θ(x, X) α_t. Shape t.shape + y_train.shape."""
        resid = self.y - self._fx(fx_train_0, "fx_train_0", self.n)
        if _is_inf_scalar(t) and not self.discrete:   # (descent at t = ∞ checks stability below)
            try:
                return self._solver()(resid)
            except SingularKernelError:
                if self.on_singular == "raise":
                    raise
        times, shape = as_times(t, self.k, self.discrete)
        g = self._factors(times)
        spec = self.spectrum
        r = spec.rotate(resid.reshape(self.n, -1))
        out = through_diag(spec.evecs, g, r)
        return out.reshape(shape + tuple(self.y.shape))

    def predict(self, t: Times = None, k_test_train: Optional[ArrayLike] = None,
                fx_train_0: ArrayLike = 0.0, fx_test_0: ArrayLike = 0.0) -> torch.Tensor:
        """Outputs at time(s) ``t`` (None = ∞) on the test points, or on the training points when
        ``k_test_train`` is None.

        k_test_train : (m, n) Θ(x, X); fx_train_0 : f₀(X), scalar or shape of y_train;
        fx_test_0 : f₀(x), scalar or (m,) + y_train.shape[1:] (ignored for training points).
        Returns shape t.shape + (m,) + y_train.shape[1:] (t = None or a scalar: no time axes).
        """
        f0_train = self._fx(fx_train_0, "fx_train_0", self.n)
        resid = self.y - f0_train                                   # (n, ...)
        if k_test_train is None:
            base, k_td = f0_train, None
        else:
            k_td = as_kernel(k_test_train, "k_test_train", n_cols=self.n, like=self.k)
            base = self._fx(fx_test_0, "fx_test_0", k_td.shape[0])
        if _is_inf_scalar(t) and not self.discrete:   # (descent at t = ∞ checks stability below)
            try:
                return self._predict_inf(resid, base, k_td)
            except SingularKernelError:
                if self.on_singular == "raise":
                    raise
        times, shape = as_times(t, self.k, self.discrete)
        spec = self.spectrum
        g = self._factors(times)                                                    # (T, n)
        if k_td is None:
            proj = spec.evecs * (spec.evals - self.rho)[None, :]                    # Θ V
        else:
            proj = k_td @ spec.evecs                                                 # (m, n)
        r = spec.rotate(resid.reshape(self.n, -1))                                  # (n, O)
        out = through_diag(proj, g, r)
        out = out.reshape(shape + base.shape[:1] + self.y.shape[1:])
        return base + out

    def readout_variance(self, k_test_train: ArrayLike, k_test_test_diag: ArrayLike,
                         t: Times = None) -> torch.Tensor:
        """Variance of the outputs at the test points of the infinite ensemble trained with this
        kernel K as its tangent kernel, the NNGP when only the readout is trained (Lee et al.
        2019, section 2.3.1), at time(s) ``t`` (None = ∞), from a zero-mean start:

            var_t(x) = K(x, x) − Σ_k (K(x, X) v_k)² (1 − d_k(2t)) / λ_k

        with (λ_k, v_k) the eigenpairs of A = K + ρI and d_k(t) the decay of ``predict``; the
        diagonal of ``nngp_ensemble(..., compute_cov=True)``, and at t = ∞ the exact GP posterior
        variance with noise ρ. k_test_train : (m, n) K(x, X); k_test_test_diag : (m,) K(x, x).
        Singular directions at t = ∞ follow ``on_singular`` ('warn': dropped, no new warning).
        Returns shape t.shape + (m,).
        """
        k_td = as_kernel(k_test_train, "k_test_train", n_cols=self.n, like=self.k)
        diag = as_tensor(k_test_test_diag, "k_test_test_diag", like=self.k)
        if tuple(diag.shape) != (k_td.shape[0],):
            raise ValueError(f"k_test_test_diag: expected shape ({k_td.shape[0]},), one K(x, x) "
                             f"per test point, got {tuple(diag.shape)}")
        times, shape = as_times(t, self.k, self.discrete)
        spec = self.spectrum
        g2 = phi_over_lambda(spec.evals, 2 * times, self.c, self.discrete, spec.tol,
                             "raise" if self.on_singular == "raise" else "pinv")    # (T, n)
        proj2 = (k_td @ spec.evecs) ** 2                                             # (m, n)
        var = diag[None, :] - g2 @ proj2.T                                           # (T, m)
        return var.reshape(shape + (k_td.shape[0],))

    def _factors(self, times: torch.Tensor) -> torch.Tensor:
        spec = self.spectrum
        if self.on_singular == "warn" and bool(torch.isinf(times).any()) \
                and spec.lambda_min <= spec.tol:
            warnings.warn(singular_message(spec.lambda_min, spec.lambda_max)
                          + " Using the minimum-norm limit of gradient flow (pseudo-inverse).",
                          SingularKernelWarning, stacklevel=3)
        return phi_over_lambda(spec.evals, times, self.c, self.discrete, spec.tol,
                               "raise" if self.on_singular == "raise" else "pinv")

    def _predict_inf(self, resid, base, k_td):
        solve = self._solver()
        if k_td is None and self.rho == 0.0:
            return self.y + 0 * base                 # interpolation (K invertible was checked)
        alpha = solve(resid)
        k = self.k if k_td is None else k_td
        return base + torch.tensordot(k, alpha, dims=1)

    def _fx(self, fx, name: str, rows: int) -> torch.Tensor:
        f = as_tensor(fx, name, like=self.k)
        target = (rows,) + tuple(self.y.shape[1:])
        try:
            return torch.broadcast_to(f, target)
        except RuntimeError:
            raise ValueError(f"{name}: shape {tuple(f.shape)} does not broadcast to the outputs' "
                             f"shape {target}") from None


def _is_inf_scalar(t) -> bool:
    if t is None:
        return True
    if isinstance(t, torch.Tensor):
        return t.ndim == 0 and bool(torch.isinf(t))
    return np.ndim(t) == 0 and float(t) == float("inf")


def max_learning_rate(ntk_train_train: ArrayLike, y_train_size: Optional[int] = None,
                      momentum: float = 0.0, eps: float = 1e-12, *, loss: str = "mean") -> float:
    """Largest stable learning rate of full-batch gradient descent (+ momentum) on MSE.

    The iteration r ← (I − η/N Θ) r contracts iff η < 2 N / λ_max(Θ); with heavy-ball momentum
    μ the bound is 2 (1 + μ) N / λ_max (Goh 2017, "Why Momentum Really Works").
    loss='mean' (neural-tangents' ``max_learning_rate``): N = ``y_train_size`` (default: n,
    one output per point); loss='sum': N = 1.
    """
    k = as_kernel(ntk_train_train, "ntk_train_train")
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"ntk_train_train must be square, got shape {tuple(k.shape)}")
    if loss == "mean":
        factor = k.shape[0] if y_train_size is None else int(y_train_size)
    elif loss == "sum":
        factor = 1
    else:
        raise ValueError(f"loss must be 'sum' or 'mean', got {loss!r}")
    lam_max = float(torch.linalg.eigvalsh(0.5 * (k + k.T))[-1])
    return 2.0 * (1.0 + momentum) * factor / (lam_max + eps)
