"""All the ReLU NTKs of the UCI grid of Arora et al. (ICLR 2020) from one recursion.

Arora, Du, Li, Salakhutdinov, Wang, Yu (2020), "Harnessing the Power of Infinitely Wide Deep
Nets on Small-data Tasks", section 3 of ``shared/data/uci/PROTOCOL.md`` (their ``NTK.py``):
a fully-connected ReLU net without biases, on the raw features. Starting from Σ⁽⁰⁾ = X Xᵀ,
each hidden layer maps, with θ = arccos(Σ_ij / sqrt(Σ_ii Σ_jj)),

    Σ⁽ʰ⁺¹⁾_ij = sqrt(Σ_ii Σ_jj) (sin θ + (π - θ) cos θ) / (2π)
    Σ̇⁽ʰ⁺¹⁾_ij = (π - θ) / (2π)

and the kernel of ``dep`` hidden layers whose first ``fix`` layers are frozen is

    K[dep][fix] = Σ_{h=fix..dep} Σ⁽ʰ⁾ · Π_{h'=h+1..dep} Σ̇⁽ʰ'⁾     (0 <= fix <= dep)

so K[0][0] = X Xᵀ, K[dep][0] is the full NTK and K[dep][dep] = Σ⁽ᵈᵉᵖ⁾ is the NNGP kernel of the
same net. Normalization: the code's 1/(2π) is half of the He-normalized (c_σ = 2) map, so
K[dep][fix] = 2^-dep · d · Θ_std, where Θ_std is the NTK of
``Sequential(Linear(W_std=1), [ReLU, Linear(W_std=sqrt 2)] * dep)`` (no biases, first ``fix``
Linear layers ``trainable=False``, ntkit's input kernel X Xᵀ/d).

The partial sums H_fix obey H_fix ← H_fix · Σ̇⁽ʰ⁺¹⁾ + Σ⁽ʰ⁺¹⁾, so one pass of the recursion gives
all 15 kernels of depths 0..4; the grid is yielded in the protocol's selection order.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Tuple

import numpy as np

_TWO_PI = 2.0 * math.pi


def relu_step(S: np.ndarray, block: int = 1024) -> np.ndarray:
    """One hidden ReLU layer in place: S <- Σ⁽ʰ⁺¹⁾; returns Σ̇⁽ʰ⁺¹⁾ (both (n, n), 1/(2π) scale).

    Processed in row blocks so the temporaries are (block, n), not (n, n).
    """
    n = S.shape[0]
    diag = np.sqrt(np.clip(np.diag(S).copy(), 0.0, None))
    sdot = np.empty_like(S)
    for i0 in range(0, n, block):
        rows = slice(i0, min(i0 + block, n))
        norm = np.outer(diag[rows], diag)
        np.maximum(norm, 1e-9, out=norm)  # the same floor as the paper's code
        cos = S[rows]
        cos /= norm
        np.clip(cos, -1.0, 1.0, out=cos)
        pi_minus = np.arccos(cos)
        np.subtract(math.pi, pi_minus, out=pi_minus)          # π - θ
        sin = np.multiply(cos, cos)
        np.subtract(1.0, sin, out=sin)
        np.sqrt(sin, out=sin)                                 # sin θ
        cos *= pi_minus
        cos += sin
        cos *= norm
        cos /= _TWO_PI                                        # Σ⁽ʰ⁺¹⁾ rows
        np.divide(pi_minus, _TWO_PI, out=sdot[rows])          # Σ̇⁽ʰ⁺¹⁾ rows
    # θ = 0 exactly on the diagonal (the arccos of a rounded 1 would be off by ~1e-8)
    idx = np.arange(n)
    S[idx, idx] = diag * diag / 2.0
    sdot[idx, idx] = 0.5
    return sdot


def iter_ntk_grid(X: np.ndarray, n_depths: int = 5,
                  block: int = 1024) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield ``(dep, fix, K)`` for dep = 0..n_depths-1 and fix = 0..dep, in that order.

    X: (n, d) features. K: (n, n) float64 Gram matrix K[dep][fix] of the module docstring.
    K is an internal buffer, valid until the next item is requested: copy it to keep it.
    Memory: n_depths + 1 matrices of n² floats.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"iter_ntk_grid: X must be a 2-d (n, d) array, got shape {X.shape}")
    if int(n_depths) < 1:
        raise ValueError(f"iter_ntk_grid: n_depths must be >= 1, got {n_depths}")
    if not np.all(np.isfinite(X)):
        raise ValueError("iter_ntk_grid: X has NaN or infinite entries")
    S = X @ X.T
    partial = []  # partial[fix] = H_fix at the current depth
    for dep in range(int(n_depths)):
        if dep > 0:
            sdot = relu_step(S, block)
            for H in partial:
                H *= sdot
                H += S
            del sdot
        partial.append(S.copy())
        for fix in range(dep + 1):
            yield dep, fix, partial[fix]


def ntk_grid(X: np.ndarray, n_depths: int = 5) -> Dict[Tuple[int, int], np.ndarray]:
    """All kernels of ``iter_ntk_grid`` as a dict {(dep, fix): (n, n) array} (small n only)."""
    return {(dep, fix): K.copy() for dep, fix, K in iter_ntk_grid(X, n_depths)}
