"""The kernel state that flows through the infinite-width layers.

One state describes the joint Gaussian law of a layer's pre- or post-activations on two
batches of inputs x1 (n1 of them) and x2 (n2 of them), in the infinite-width limit:

* ``cov``   E[z(x) z(x')] for every pair, shape (n1, n2) + spatial (the NNGP so far);
* ``var1``  E[z(x)^2] for x in x1, shape (n1,) + spatial_var; ``var2`` the same for x2;
* ``ntk``   the tangent kernel accumulated so far (same shape as ``cov``), or None while no
            trainable parameter has been seen (it is then identically zero);
* ``dist``  optional E[(z(x) - z(x'))^2], same shape as ``cov``. Carried only by the precise
            pairwise layout, where it keeps the angle between nearly equal inputs exact (the
            naive arccos of a correlation near 1 loses half the digits);
* ``width`` the channel count of the finite network at this point (only the standard
            parameterization's NTK depends on it, exactly as in neural-tangents).

Layouts (``layout``):
* ``"dense"``  cov (n1, n2), var1 (n1,), var2 (n2,): all pairs of x1 x x2;
* ``"paired"`` cov (m,), var1 (m,), var2 (m,): m selected pairs (x1[i_k], x2[j_k]).
Convolutional layouts add spatial axes (see ``ntkit.layers.conv``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch


@dataclass
class KernelState:
    cov: torch.Tensor
    var1: torch.Tensor
    var2: torch.Tensor
    ntk: Optional[torch.Tensor]
    width: int
    dist: Optional[torch.Tensor] = None
    layout: str = "dense"
    spatial: str = "none"
    # True while the state still describes raw inputs (no layer applied yet).
    is_input: bool = True
    # True when the state is for x1 against itself (var2 is var1, cov symmetric).
    symmetric: bool = False
    # False when the caller asked for the NNGP only: layers then never start an NTK.
    track_ntk: bool = True
    # Pixel-pair input states of image pairs may defer their covariance: cov is None and
    # images = (a, b), (m, C, H, W) each, until ``conv_state.materialize_input`` computes it
    # (the fused native path writes it straight into its padded buffers instead).
    images: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def replace(self, **changes) -> "KernelState":
        return replace(self, **changes)

    def broadcast_vars(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """var1 and var2 reshaped so that they broadcast against ``cov`` entry by entry."""
        if self.spatial != "none":
            from .conv_state import broadcast_spatial_vars  # convolutional layouts
            return broadcast_spatial_vars(self)
        if self.layout == "paired":
            return self.var1, self.var2
        return self.var1[:, None], self.var2[None, :]


def dense_input_state(x1: torch.Tensor, x2: Optional[torch.Tensor]) -> KernelState:
    """Input kernel of flat inputs (n, d): cov = x1 x2^T / d, var = |x|^2 / d.

    The 1/d normalization is neural-tangents' convention for the input kernel, so that a first
    ``Linear(W_std, b_std)`` gives W_std^2 x.x'/d + b_std^2 (Jacot et al. 2018, eq. for Σ^1).
    """
    d = x1.shape[1]
    var1 = (x1 * x1).sum(1) / d
    if x2 is None:
        cov = x1 @ x1.T / d
        return KernelState(cov=cov, var1=var1, var2=var1, ntk=None, width=d, symmetric=True)
    var2 = (x2 * x2).sum(1) / d
    cov = x1 @ x2.T / d
    return KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=d)


def paired_input_state(x1: torch.Tensor, x2: torch.Tensor) -> KernelState:
    """Input kernel of m pairs (x1[k], x2[k]) with the exact squared distance carried along."""
    d = x1.shape[1]
    var1 = (x1 * x1).sum(1) / d
    var2 = (x2 * x2).sum(1) / d
    cov = (x1 * x2).sum(1) / d
    diff = x1 - x2
    dist = (diff * diff).sum(1) / d
    return KernelState(cov=cov, var1=var1, var2=var2, ntk=None, width=d, dist=dist, layout="paired")
