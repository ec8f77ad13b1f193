"""The public result type of an infinite-width kernel computation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Kernels:
    """NNGP and NTK matrices of an architecture on two sets of inputs.

    Attributes
    ----------
    nngp : torch.Tensor, shape (n1, n2)
        K(x, x') = E[f(x) f(x')] of the network at initialization (the Gaussian-process prior).
    ntk : torch.Tensor or None, shape (n1, n2)
        Θ(x, x') = <∂f(x)/∂θ, ∂f(x')/∂θ> in the infinite-width limit. None when the
        architecture has no trainable parameter.
    log2_scale : int
        The true NNGP is 2**log2_scale times ``nngp``. Always 0 unless the normalized kernel
        was asked for (``Sequential.kernel(..., normalize=True)``), where deep networks'
        kernels would overflow or underflow the dtype (a depth-1,000 ReLU network with
        W_std=2 has values near 2**1000). Ratios of entries, eigenvectors and
        kernel-regression predictions do not depend on it (a ridge added to the matrices is
        in their scaled units). See docs/conventions.md, section 10.
    ntk_log2_scale : int
        The true NTK is 2**ntk_log2_scale times ``ntk``. Equal to ``log2_scale`` (the default
        when not given) unless the NTK is more than 2**32 times larger or smaller than the
        NNGP (their ratio would then leave float32's range soon): in the
        chaotic phase (e.g. Erf with W_std = 3) the NTK grows geometrically with depth while
        the NNGP stays bounded.
    """

    nngp: torch.Tensor
    ntk: Optional[torch.Tensor]
    log2_scale: int = 0
    ntk_log2_scale: Optional[int] = None

    def __post_init__(self):
        if self.ntk_log2_scale is None:
            object.__setattr__(self, "ntk_log2_scale", self.log2_scale)

    def get(self, name: str) -> torch.Tensor:
        """Return ``self.nngp`` or ``self.ntk`` by name ('nngp' or 'ntk')."""
        if name not in ("nngp", "ntk"):
            raise ValueError(f"unknown kernel {name!r}: expected 'nngp' or 'ntk'")
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"kernel {name!r} was not computed (no trainable layer?)")
        return value

    def numpy(self) -> dict:
        """Both matrices as numpy arrays (on the CPU)."""
        out = {"nngp": self.nngp.detach().cpu().numpy()}
        if self.ntk is not None:
            out["ntk"] = self.ntk.detach().cpu().numpy()
        return out
