"""Gaussian predictive distributions of infinitely wide networks: the NTK-GP of an infinite
ensemble trained to time t, the NNGP-trained ensemble, and exact GP inference with the NNGP.

NTK-GP (Lee et al. 2019, section 2.3; Jacot et al. 2018, section 5): at initialization f₀ ~ GP(0, K)
(K the NNGP kernel); training by MSE gradient flow with the NTK Θ maps f₀ linearly, so the
outputs at time t are Gaussian with, writing A = Θ(X, X) + ρI and M_t = A^{-1}(I − D_t)
(D_t = exp(−cAt) or (I − cA)^t, see ``gradient_flow``):

    μ_t(x)      = Θ(x, X) M_t Y
    Σ_t(x, x')  = K(x, x') + Θ(x, X) M_t K(X, X) M_t Θ(X, x')
                  − Θ(x, X) M_t K(X, x') − K(x, X) M_t Θ(X, x')

NNGP ensemble (only the readout trained, so the tangent kernel is K itself; Lee et al. 2019):
    μ_t(x) = K(x, X) M_t Y,   Σ_t(x, x') = K(x, x') − K(x, X) A^{-1}(I − D_{2t}) K(X, x')
which at t = ∞ with ρ = σ² is the exact GP posterior with observation noise σ².

All times share one eigendecomposition of A; the covariance is shared by the k outputs
(Θ ⊗ I_k). Shapes: mean t.shape + (m,) + y.shape[1:], covariance t.shape + (m, m).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from ._linalg import (ArrayLike, Spectrum, as_kernel, check_train, cholesky_factor, reg_value,
                      sandwich_diag, through_diag)
from ._time import as_times, phi_over_lambda, scale
from .gradient_flow import Times


class Gaussian(NamedTuple):
    """Mean and covariance of a Gaussian prediction (covariance None when not computed)."""

    mean: torch.Tensor
    covariance: Optional[torch.Tensor]


def _kern(k, name: str) -> torch.Tensor:
    value = getattr(k, name, None)
    if value is None:
        raise ValueError(f"the kernels passed lack {name!r}: compute them with "
                         f"arch.kernel(x1, x2, get=('nngp', 'ntk'))")
    return value


def _ensemble(tangent_dd, nngp_dd, y, tangent_td, nngp_td, nngp_tt, t, *, c, rho, discrete,
              mode: str, compute_cov: bool) -> Gaussian:
    """Mean and covariance of the trained ensemble; ``mode`` 'ntk' or 'nngp' (see module doc).

    ``tangent_td`` None means the training points (Θ(X, X) V = V diag(λ − ρ) is used exactly).
    """
    n = y.shape[0]
    spec = Spectrum(tangent_dd, rho)
    times, shape = as_times(t, tangent_dd, discrete)
    g = phi_over_lambda(spec.evals, times, c, discrete, spec.tol)               # (T, n)
    if tangent_td is None:
        proj = spec.evecs * (spec.evals - rho)[None, :]                          # Θ(X,X) V
    else:
        proj = tangent_td @ spec.evecs                                           # (m, n)
    r = spec.rotate(y.reshape(n, -1))
    m = proj.shape[0]
    mean = through_diag(proj, g, r).reshape(shape + (m,) + tuple(y.shape[1:]))
    if not compute_cov:
        return Gaussian(mean, None)
    if mode == "nngp":
        g2 = phi_over_lambda(spec.evals, 2 * times, c, discrete, spec.tol)
        cov = nngp_tt[None] - sandwich_diag(proj, g2, proj)
    else:
        kproj = (nngp_dd if nngp_td is None else nngp_td) @ spec.evecs           # K(x, X) V
        s = spec.evecs.T @ nngp_dd @ spec.evecs                                  # V^T K V
        pd = proj[None] * g[:, None, :]                                          # (T, m, n)
        cross = pd @ kproj.T                                                     # Θ M K(X, x')
        cov = nngp_tt[None] + pd @ s @ pd.transpose(1, 2) - cross - cross.transpose(1, 2)
    return Gaussian(mean, cov.reshape(shape + (m, m)))


def ntk_ensemble(k_train_train, y_train: ArrayLike, k_test_train=None,
                 nngp_test_test: Optional[ArrayLike] = None, t: Times = None, *,
                 learning_rate: float = 1.0, loss: str = "sum", diag_reg: float = 0.0,
                 diag_reg_relative: bool = False, discrete: bool = False,
                 compute_cov: bool = False) -> Gaussian:
    """NTK-GP: outputs of an infinite ensemble of infinitely wide networks trained by MSE
    gradient flow (or descent) to time ``t`` (None = ∞), on test points or the training points.

    k_train_train, k_test_train : ``nk.Kernels`` (with .nngp and .ntk) on (X, X) and (x, X);
    k_test_train None means the training points. nngp_test_test : K(x, x) (m, m), needed for the
    test covariance. Returns ``Gaussian(mean, covariance)``; covariance only if compute_cov.
    Time and loss conventions as in ``MSEDynamics``.
    """
    ntk_dd, y = check_train(_kern(k_train_train, "ntk"), y_train)
    nngp_dd = as_kernel(_kern(k_train_train, "nngp"), "k_train_train.nngp", y.shape[0],
                        y.shape[0], like=ntk_dd) if compute_cov else None
    ntk_td = nngp_td = None
    nngp_tt = nngp_dd
    if k_test_train is not None:
        ntk_td = as_kernel(_kern(k_test_train, "ntk"), "k_test_train.ntk", n_cols=y.shape[0],
                           like=ntk_dd)
        if compute_cov:
            nngp_td = as_kernel(_kern(k_test_train, "nngp"), "k_test_train.nngp",
                                ntk_td.shape[0], y.shape[0], like=ntk_dd)
            if nngp_test_test is None:
                raise ValueError("compute_cov=True on test points needs nngp_test_test, the NNGP "
                                 "kernel K(x_test, x_test)")
            nngp_tt = as_kernel(nngp_test_test, "nngp_test_test", ntk_td.shape[0],
                                ntk_td.shape[0], like=ntk_dd)
    rho = reg_value(ntk_dd, diag_reg, diag_reg_relative)
    return _ensemble(ntk_dd, nngp_dd, y, ntk_td, nngp_td, nngp_tt, t,
                     c=scale(learning_rate, loss, y.numel()), rho=rho, discrete=discrete,
                     mode="ntk", compute_cov=compute_cov)


def nngp_ensemble(nngp_train_train: ArrayLike, y_train: ArrayLike,
                  nngp_test_train: Optional[ArrayLike] = None,
                  nngp_test_test: Optional[ArrayLike] = None, t: Times = None, *,
                  learning_rate: float = 1.0, loss: str = "sum", diag_reg: float = 0.0,
                  diag_reg_relative: bool = False, discrete: bool = False,
                  compute_cov: bool = False) -> Gaussian:
    """Ensemble trained with the NNGP kernel as tangent kernel (readout-only training), to time
    ``t``; at t = ∞ with diag_reg = σ² this is the exact NNGP posterior with noise σ².
    Arguments as in ``ntk_ensemble`` but with NNGP matrices (tensors) only.
    """
    k_dd, y = check_train(nngp_train_train, y_train)
    k_td = None
    k_tt = k_dd
    if nngp_test_train is not None:
        k_td = as_kernel(nngp_test_train, "nngp_test_train", n_cols=y.shape[0], like=k_dd)
        if compute_cov:
            if nngp_test_test is None:
                raise ValueError("compute_cov=True on test points needs nngp_test_test")
            k_tt = as_kernel(nngp_test_test, "nngp_test_test", k_td.shape[0], k_td.shape[0],
                             like=k_dd)
    rho = reg_value(k_dd, diag_reg, diag_reg_relative)
    return _ensemble(k_dd, k_dd, y, k_td, k_td, k_tt, t,
                     c=scale(learning_rate, loss, y.numel()), rho=rho, discrete=discrete,
                     mode="nngp", compute_cov=compute_cov)


def gp_posterior(k_train_train: ArrayLike, y_train: ArrayLike,
                 k_test_train: Optional[ArrayLike] = None,
                 k_test_test: Optional[ArrayLike] = None, noise: float = 0.0) -> Gaussian:
    """Exact Gaussian-process regression (Rasmussen & Williams 2006, Algorithm 2.1), e.g. the
    NNGP posterior of an infinitely wide Bayesian network (Lee et al. 2018).

    Prior f ~ GP(0, k), observations y = f(X) + ε, ε ~ N(0, noise·I). With L = chol(K + noise·I):
        mean = k(x, X) (K + noise I)^{-1} y,   cov = k(x, x) − Vᵀ V,  V = L^{-1} k(X, x)
    (the covariance of the latent f, without the observation noise). k_test_train None means the
    training points. Returns ``Gaussian(mean (m,) + y.shape[1:], cov (m, m) or None)``.
    """
    k_dd, y = check_train(k_train_train, y_train)
    n = y.shape[0]
    noise = reg_value(k_dd, noise, False)
    chol = cholesky_factor(k_dd, noise)
    k_td = k_dd if k_test_train is None else as_kernel(k_test_train, "k_test_train", n_cols=n,
                                                         like=k_dd)
    alpha = torch.cholesky_solve(y.reshape(n, -1), chol).reshape(y.shape)
    mean = torch.tensordot(k_td, alpha, dims=1)
    if k_test_test is None and k_test_train is not None:
        return Gaussian(mean, None)
    k_tt = k_dd if k_test_test is None else as_kernel(k_test_test, "k_test_test", k_td.shape[0],
                                                      k_td.shape[0], like=k_dd)
    v = torch.linalg.solve_triangular(chol, k_td.T, upper=False)
    return Gaussian(mean, k_tt - v.T @ v)


def log_marginal_likelihood(k_train_train: ArrayLike, y_train: ArrayLike,
                            noise: float = 0.0) -> float:
    """log p(y | X) of GP regression, summed over output columns (Rasmussen & Williams eq. 2.30):
    −½ yᵀ(K + σ²I)^{-1} y − Σ log L_ii − (n/2) log 2π per column."""
    k_dd, y = check_train(k_train_train, y_train)
    n = y.shape[0]
    chol = cholesky_factor(k_dd, reg_value(k_dd, noise, False))
    yy = y.reshape(n, -1)
    alpha = torch.cholesky_solve(yy, chol)
    cols = yy.shape[1]
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    value = -0.5 * (yy * alpha).sum() - 0.5 * cols * logdet - 0.5 * cols * n * torch.log(
        torch.tensor(2 * torch.pi, dtype=k_dd.dtype))
    return float(value)
