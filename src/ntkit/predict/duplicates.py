"""Coincident and nearly coincident training inputs: detection, and the three remedies.

Why it matters: two training inputs x_i ≈ x_j give two nearly equal rows of the train-train
kernel K, so K is singular (exactly equal inputs) or nearly so; kernel regression
k(x, X) K⁻¹ y then fails or amplifies rounding. Deep networks make it worse: the kernels of
seed 000's deep limits are singular, k(x, x') ~ |x - x'|^(-α), and a deep NTK separates every
pair of distinct inputs only through entries that shrink like Ã'^(2L) relative to the diagonal.

Detection: ``near_duplicates(x)`` lists the pairs (i, j) with |x_i - x_j| ≤ rtol · max(|x_i|,
|x_j|) (distances recomputed exactly as |x_i - x_j| for the candidates of a Gram-matrix
screen); ``kernel_near_duplicates(K)`` the pairs whose kernel distance
K_ii + K_jj - 2 K_ij is at most rtol times (K_ii + K_jj)/2 (what the solver sees).
``warn_near_duplicates`` issues a ``NearDuplicateWarning`` naming them.

Remedies (documented in the warning):
  * drop: keep one input of each group (``drop_duplicates``), right when they are copies;
  * merge: one input per group with the mean target (``merge_duplicates``), the least-squares
    answer for conflicting targets at one point;
  * ridge: keep them all and regularize, ``diag_reg > 0`` (``MSEDynamics``, the estimators,
    ``gradient_descent_mse``): K + ρI is invertible whatever the duplicates.
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import numpy as np
import torch

#: default relative distance under which two inputs count as near-duplicates
RTOL = 1e-8
_NAMED = 5


class NearDuplicateWarning(UserWarning):
    """Coincident or nearly coincident training inputs (see ``ntkit.predict.duplicates``)."""


def _flat(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(torch.float64).cpu()
    return t.reshape(t.shape[0], -1)


def near_duplicates(x, rtol: float = RTOL, block: int = 2048) -> List[Tuple[int, int, float]]:
    """Pairs (i, j, |x_i - x_j| / max(|x_i|, |x_j|)) with i < j and relative distance ≤ rtol,
    sorted by i then j. x: (n, ...) array or tensor (flattened per row). O(n² d) time, in
    blocks of at most ``block`` rows and 2^24 entries (memory O(2^24) whatever n)."""
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    t = _flat(x)
    n = t.shape[0]
    norms = t.norm(dim=1)
    sq = norms * norms
    screen = max(1e-6, 4 * rtol)           # the Gram form is exact to ~1e-8 relative distance
    block = max(1, min(int(block), (1 << 24) // max(n, 1)))
    out: List[Tuple[int, int, float]] = []
    for i0 in range(0, n, block):
        a = t[i0:i0 + block]
        d2 = (sq[i0:i0 + block, None] + sq[None, :] - 2 * a @ t.T).clamp_(min=0)
        scale = torch.maximum(norms[i0:i0 + block, None], norms[None, :])
        cand = d2 <= (screen * scale) ** 2
        ii, jj = torch.nonzero(cand, as_tuple=True)
        ii = ii + i0
        keep = ii < jj
        ii, jj = ii[keep], jj[keep]
        if ii.numel():
            dist = (t[ii] - t[jj]).norm(dim=1)
            s = torch.maximum(norms[ii], norms[jj])
            rel = torch.where(s > 0, dist / torch.where(s > 0, s, torch.ones_like(s)), dist)
            for i, j, r in zip(ii.tolist(), jj.tolist(), rel.tolist()):
                if r <= rtol:
                    out.append((i, j, r))
    return sorted(out)


def kernel_near_duplicates(k, rtol: float = 1e-10) -> List[Tuple[int, int, float]]:
    """Pairs (i, j, δ) with i < j of a symmetric kernel matrix K (n, n) whose relative kernel
    distance δ = (K_ii + K_jj - 2 K_ij) / ((K_ii + K_jj)/2) is ≤ rtol."""
    kt = torch.as_tensor(k).detach().to(torch.float64).cpu()
    diag = torch.diagonal(kt)
    mean = (diag[:, None] + diag[None, :]) / 2
    rel = (2 * mean - 2 * kt) / torch.where(mean > 0, mean, torch.ones_like(mean))
    ii, jj = torch.nonzero(torch.triu(rel <= rtol, diagonal=1), as_tuple=True)
    return [(i, j, max(0.0, float(rel[i, j]))) for i, j in zip(ii.tolist(), jj.tolist())]


def describe(pairs: List[Tuple[int, int, float]], what: str = "relative distance") -> str:
    shown = ", ".join(f"({i}, {j}: {what} {r:.1e})" for i, j, r in pairs[:_NAMED])
    more = f" and {len(pairs) - _NAMED} more" if len(pairs) > _NAMED else ""
    return (f"{len(pairs)} pair(s) of coincident or nearly coincident training inputs: "
            f"{shown}{more}. Remedies: drop the copies (ntkit.predict.duplicates."
            f"drop_duplicates), merge them with their mean target (merge_duplicates), or add a "
            f"ridge (diag_reg > 0)")


def warn_near_duplicates(x, rtol: float = RTOL, stacklevel: int = 3) -> List[Tuple[int, int, float]]:
    """``near_duplicates(x, rtol)``, with a ``NearDuplicateWarning`` naming them if any."""
    pairs = near_duplicates(x, rtol)
    if pairs:
        warnings.warn(describe(pairs), NearDuplicateWarning, stacklevel=stacklevel)
    return pairs


def _groups(n: int, pairs) -> np.ndarray:
    """Group label of each index (union-find over the pairs); labels are the smallest index."""
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def drop_duplicates(x, y, rtol: float = RTOL):
    """(x, y, kept indices): the first input of each group of near-duplicates kept."""
    n = len(x)
    groups = _groups(n, near_duplicates(x, rtol))
    kept = np.flatnonzero(groups == np.arange(n))
    return x[kept], y[kept], kept


def merge_duplicates(x, y, rtol: float = RTOL):
    """(x, y, group of each original row): one input per group (its first member) with the
    mean of the group's targets (the least-squares fit of conflicting targets at one point)."""
    n = len(x)
    groups = _groups(n, near_duplicates(x, rtol))
    kept = np.flatnonzero(groups == np.arange(n))
    yy = np.asarray(y, dtype=np.float64)
    merged = np.stack([yy[groups == g].mean(0) for g in kept])
    return x[kept], merged, groups
