"""Closed-form NNGP/NTK of Linear(W0, b0) -> ReLU -> Linear(W1, b1) (NTK parameterization) in
float64 numpy: the arc-cosine kernel of Cho & Saul 2009, NTK recursion of Jacot et al. 2018
(Lee et al. 2019, eq. 7): Θ = K2 + W1² · K̇ · Θ0, with Θ0 = K0. An independent reference for
tests of ntkit.scale (no ntkit code involved)."""
import numpy as np


def relu_mlp_kernels(x1, x2, w0, b0, w1, b1):
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    d = x1.shape[1]
    k0 = w0 ** 2 * (x1 @ x2.T) / d + b0 ** 2
    v1 = w0 ** 2 * (x1 * x1).sum(1) / d + b0 ** 2
    v2 = w0 ** 2 * (x2 * x2).sum(1) / d + b0 ** 2
    norm = np.sqrt(np.outer(v1, v2))
    cos = np.clip(k0 / norm, -1.0, 1.0)
    theta = np.arccos(cos)
    relu = norm / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
    relu_dot = (np.pi - theta) / (2 * np.pi)
    nngp = w1 ** 2 * relu + b1 ** 2
    ntk = nngp + w1 ** 2 * relu_dot * k0
    return nngp, ntk
