"""Closed-form predictions of wide networks: MSE training dynamics, NTK-GP and NNGP posteriors.

ntkit's own API (explicit conventions: absolute ``diag_reg`` unless ``diag_reg_relative``,
``loss='sum'`` or ``'mean'``, ``discrete`` for gradient descent):
    MSEDynamics          gradient flow / descent outputs at any t (arrays of t share one eigh)
                         and readout_variance, the output variance of the readout-only ensemble
    ntk_ensemble         NTK-GP mean and covariance of an infinite trained ensemble at time t
    nngp_ensemble        the same with the NNGP as tangent kernel; exact GP posterior at t = ∞
    gp_posterior         exact GP regression (Cholesky), e.g. the NNGP posterior with noise
    log_marginal_likelihood, max_learning_rate, Gaussian, SingularKernelError

neural-tangents-compatible names with its semantics (see ``nt_compat``):
    gradient_descent_mse, gradient_descent_mse_ensemble, gp_inference, max_learning_rate
"""
from ._linalg import SingularKernelError, SingularKernelWarning
from .duplicates import (NearDuplicateWarning, drop_duplicates, merge_duplicates, near_duplicates,
                         warn_near_duplicates)
from .gradient_flow import MSEDynamics, max_learning_rate
from .nt_compat import gp_inference, gradient_descent_mse, gradient_descent_mse_ensemble
from .posteriors import Gaussian, gp_posterior, log_marginal_likelihood, nngp_ensemble, ntk_ensemble

__all__ = ["MSEDynamics", "ntk_ensemble", "nngp_ensemble", "gp_posterior",
           "log_marginal_likelihood", "max_learning_rate", "Gaussian", "SingularKernelError",
           "SingularKernelWarning", "NearDuplicateWarning", "near_duplicates", "drop_duplicates",
           "merge_duplicates", "warn_near_duplicates",
           "gradient_descent_mse", "gradient_descent_mse_ensemble", "gp_inference"]
