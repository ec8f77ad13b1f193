"""Nyström preconditioner for (K + μI) x = r: the top eigenvectors of a column-sampled Nyström
approximation of K (Frangella, Tropp & Udell 2023, "Randomized Nyström preconditioning",
SIAM J. Matrix Anal. Appl. 44(2), eq. (5.3); the idea of EigenPro 2 (Ma & Belkin 2019) and
Falkon (Rudi et al. 2017): precondition with a few centres' eigensystem).

With m centres S, C = K[:, S] (n, m) and W = K[S, S] (m, m), the Nyström approximation is
K̂ = C W⁺ Cᵀ = U Λ Uᵀ (U (n, r) orthonormal, Λ = diag(λ_1 ≥ … ≥ λ_r > 0)). Then

    P⁻¹ = (λ_r + μ) U (Λ + μI)⁻¹ Uᵀ + (I − U Uᵀ)

maps the top of K's spectrum near λ_r + μ and leaves the rest alone, so CG on P⁻¹(K + μI) sees
a condition number of about (λ_{r+1}(K) + μ)/μ instead of (λ_1 + μ)/μ.

The eigensystem comes from the m x m matrix G = L⁻¹ CᵀC L⁻ᵀ with L Lᵀ = W + νI (a shift ν of
a few ulps of tr W for a stable Cholesky; ν is subtracted from the eigenvalues again): with
G = V Σ² Vᵀ, B = C L⁻ᵀ = U Σ Vᵀ, so U = C L⁻ᵀ V Σ⁻¹ and Λ = Σ² − ν. All in float64 torch
(never scipy's float32 LAPACK, whose 32-bit indices fail past n² = 2³¹). Memory: C and U,
(n, m) float64 each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NystromPreconditioner:
    """P⁻¹ of the module doc: ``U`` (n, r), ``eigenvalues`` Λ (r,), descending, ``ridge`` μ."""

    U: torch.Tensor
    eigenvalues: torch.Tensor
    ridge: float

    @classmethod
    def from_columns(cls, columns: np.ndarray, centres: np.ndarray, ridge: float,
                     rtol: float = 1e-10) -> "NystromPreconditioner":
        """From C = K[:, centres] (n, m) and the ridge μ > 0; eigenvalues below ``rtol`` times
        the largest are dropped (they carry no information at float64 precision)."""
        c = torch.as_tensor(np.asarray(columns), dtype=torch.float64)
        idx = torch.as_tensor(np.asarray(centres), dtype=torch.long)
        if c.ndim != 2 or c.shape[1] != len(idx):
            raise ValueError(f"columns must be (n, m) with m = {len(idx)} centres, got "
                             f"{tuple(c.shape)}")
        if not ridge > 0:
            raise ValueError(f"the Nyström preconditioner needs a ridge > 0, got {ridge}")
        w = c[idx]
        w = 0.5 * (w + w.T)
        shift = float(np.finfo(np.float64).eps) * max(float(torch.trace(w)), 1e-300) * 8
        eye = torch.eye(len(idx), dtype=torch.float64)
        lower, info = torch.linalg.cholesky_ex(w + shift * eye)
        while int(info) != 0:  # W only semi-definite to rounding: grow the shift
            shift *= 10
            lower, info = torch.linalg.cholesky_ex(w + shift * eye)
        b_t = torch.linalg.solve_triangular(lower, c.T, upper=False)  # L⁻¹ Cᵀ = Bᵀ (m, n)
        sigma2, v = torch.linalg.eigh(b_t @ b_t.T)
        sigma2, v = sigma2.flip(0), v.flip(1)
        keep = sigma2 > max(rtol * float(sigma2[0]), shift)
        sigma2, v = sigma2[keep], v[:, keep]
        u = (b_t.T @ v) / sigma2.sqrt()
        lam = (sigma2 - shift).clamp_min(0.0)
        return cls(U=u, eigenvalues=lam, ridge=float(ridge))

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    def apply(self, r: np.ndarray) -> np.ndarray:
        """P⁻¹ R for R (n, k), float64."""
        rt = torch.as_tensor(r, dtype=torch.float64)
        if not self.rank:
            return rt.numpy().copy()
        ur = self.U.T @ rt
        top = self.eigenvalues[-1] + self.ridge
        scale = (top / (self.eigenvalues + self.ridge))[:, None]
        return (rt + self.U @ ((scale - 1.0) * ur)).numpy()
