"""The kernel state that flows through the infinite-width layers.

One state describes the joint Gaussian law of a layer's pre- or post-activations on two
batches of inputs x1 (n1 of them) and x2 (n2 of them), in the infinite-width limit:

* ``cov``   E[z(x) z(x')] for every pair, shape (n1, n2) + S (the NNGP so far);
* ``var1``  E[z(x)^2] for x in x1, shape (n1,) + P; ``var2`` the same for x2;
* ``ntk``   the tangent kernel accumulated so far (same shape as ``cov``), or None while no
            trainable parameter has been seen (it is then identically zero);
* ``dist``  optional E[(z(x) - z(x'))^2], same shape as ``cov``. Carried only by the precise
            pairwise layout, where it keeps the angle between nearly equal inputs exact (the
            naive arccos of a correlation near 1 loses half the digits);
* ``width`` the channel count of the finite network at this point (only the standard
            parameterization's NTK depends on it, exactly as in neural-tangents);
* ``same_inputs`` True when x2 is x1 (layout "dense": cov is symmetric and var2 holds the same
            values as var1, so layers map the variances once), or when every pair of a
            "paired" state is an input with itself.

Layouts (``layout``):
* ``"dense"``  cov (n1, n2) + S, var1 (n1,) + P, var2 (n2,) + P: all pairs of x1 x x2;
* ``"paired"`` cov (m,) + S, var1/var2 (m,) + P: m selected pairs (x1[i_k], x2[j_k]).

Spatial regimes (``spatial``), for images (N, C, H, W):
* ``"none"``  flat inputs: S = P = ();
* ``"diag"``  same-position covariances E[z(x)_p z(x')_p]: S = P = (H, W);
* ``"full"``  pixel pairs E[z(x)_p z(x')_p']: S = (H, W, H, W), P = (H, W).

Layers that pool pixels need each input's own pixel-pair covariance to produce the variances
of their outputs. A "paired" pixel-pair state therefore contains, among its m pairs, the pair
of every input with itself: ``self_index1[k]`` is the row of this state holding (x1[i_k],
x1[i_k]), ``self_index2[k]`` the row holding (x2[j_k], x2[j_k]). Pooling reads them there, so
every layer maps a whole state to a whole state.

A pixel-pair input state may defer its covariance: ``cov`` is None and ``images`` = (a, b),
(m, C, H, W) each, until ``image_state.materialize`` computes it (the fused native pass writes
it straight into its padded buffers instead).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

from ..engine.scale import mul_pow2, representable

#: stored variances are kept within [2**-RENORM_BITS, 2**RENORM_BITS] by ``renormalized``
RENORM_BITS = 32
#: a constant added to stored values (a bias) is at most 2**CONSTANT_BITS: beyond, the state is
#: first rescaled to the constant's scale (the stored values then underflow harmlessly)
CONSTANT_BITS = 64


@dataclass
class KernelState:
    cov: Optional[torch.Tensor]
    var1: torch.Tensor
    var2: torch.Tensor
    ntk: Optional[torch.Tensor]
    width: int
    dist: Optional[torch.Tensor] = None
    layout: str = "dense"
    spatial: str = "none"
    same_inputs: bool = False
    self_index1: Optional[torch.Tensor] = None
    self_index2: Optional[torch.Tensor] = None
    #: False when the caller asked for the NNGP only: layers then never start an NTK.
    track_ntk: bool = True
    images: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    #: true second moments = 2**log2_scale x the stored tensors (module doc)
    log2_scale: int = 0

    def replace(self, **changes) -> "KernelState":
        return replace(self, **changes)

    # -- scale ----------------------------------------------------------------------------------
    def largest_variance(self) -> float:
        """The largest stored variance (over var1 and var2, every position), 0.0 if none."""
        best = 0.0
        for v in (self.var1, self.var2 if not self.same_inputs else None):
            if v is not None and v.numel():
                best = max(best, float(v.max()))
        return best

    def largest_value(self) -> float:
        """The largest stored magnitude among the variances and the NTK (which bounds cov and
        dist: |cov| <= sqrt(var1 var2), dist <= 2 (var1 + var2))."""
        best = self.largest_variance()
        if self.ntk is not None and self.ntk.numel():
            best = max(best, float(self.ntk.abs().max()))
        return best

    def at_scale(self, e: int) -> "KernelState":
        """The same state stored at scale 2**e (new tensors, multiplied by 2**(log2_scale - e):
        exact, values far below the largest may underflow to 0)."""
        shift = self.log2_scale - int(e)
        if shift == 0:
            return self
        var1 = mul_pow2(self.var1, shift)
        var2 = var1 if self.var2 is self.var1 else mul_pow2(self.var2, shift)
        return self.replace(cov=mul_pow2(self.cov, shift), var1=var1, var2=var2,
                            ntk=mul_pow2(self.ntk, shift), dist=mul_pow2(self.dist, shift),
                            log2_scale=int(e))

    def renormalized(self) -> "KernelState":
        """The state rescaled so that its largest stored variance m is near 1 when m left
        [2**-RENORM_BITS, 2**RENORM_BITS]: all tensors times 2**-round(log2 m), the exponent
        added to ``log2_scale``. Unchanged otherwise (and for a lazy input state, m = 0, or a
        non-finite m, which the kernel's final checks report)."""
        if self.cov is None:
            return self
        m = self.largest_variance()
        if not (0.0 < m < math.inf) or -RENORM_BITS <= math.log2(m) <= RENORM_BITS:
            return self
        return self.at_scale(self.log2_scale + round(math.log2(m)))

    def unnormalized(self, who: str) -> "KernelState":
        """The state in true units (log2_scale 0), for layers whose map is not homogeneous;
        OverflowError naming ``who`` when the true values are not representable."""
        if self.log2_scale == 0:
            return self
        dtype = self.var1.dtype
        m = self.largest_variance()
        top = self.largest_value()
        if m > 0.0 and not (representable(m, self.log2_scale, dtype)
                            and representable(top, self.log2_scale, dtype, margin=2.0)):
            k = math.log2(m) + self.log2_scale
            raise OverflowError(
                f"{who}: the pre-activation variance is 2^{k:.1f} (stored at scale "
                f"2^{self.log2_scale}); un-normalized values are not representable in "
                f"{str(dtype).replace('torch.', '')}, and this activation needs them (its kernel "
                f"map is not homogeneous); use "
                + ("smaller W_std/b_std" if k > 0 else "a larger W_std or a bias (b_std > 0)")
                + " or fewer layers")
        return self.at_scale(0)

    def scaled_constant(self, c: float) -> Tuple["KernelState", float]:
        """(state, c') with c' = c · 2**-log2_scale the constant c (a bias variance) in the
        state's stored units; when c' would exceed 2**CONSTANT_BITS (the constant dominates)
        the state is first rescaled to c's scale, so nothing overflows."""
        if c == 0.0 or (self.log2_scale == 0 and c <= 2.0 ** CONSTANT_BITS):
            return self, c
        state = self
        if math.log2(c) - self.log2_scale > CONSTANT_BITS:
            state = self.at_scale(round(math.log2(c)))
        return state, math.ldexp(c, -state.log2_scale)  # a negligible c underflows to 0

    def broadcast_vars(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """var1 and var2 reshaped so that they broadcast against ``cov`` entry by entry."""
        v1, v2 = self.var1, self.var2
        paired = self.layout == "paired"
        if self.spatial in ("none", "diag"):
            return (v1, v2) if paired else (v1[:, None], v2[None, :])
        if self.spatial == "full":
            if paired:
                return v1[:, :, :, None, None], v2[:, None, None, :, :]
            return v1[:, None, :, :, None, None], v2[None, :, None, None, :, :]
        raise ValueError(f"unknown spatial regime {self.spatial!r}")

    def self_pair_rows(self) -> Optional[torch.Tensor]:
        """(m,) bool: which rows of a paired state with self indices are an input with itself
        (None for other states)."""
        if self.layout != "paired" or self.self_index1 is None:
            return None
        rows = torch.arange(self.self_index1.shape[0], device=self.self_index1.device)
        return (self.self_index1 == rows) & (self.self_index2 == rows)

    def own_covariances(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Each pair's inputs' own entries of ``t`` (a tensor shaped like ``cov``): for pair k,
        t at (x1[i_k], x1[i_k]) and at (x2[j_k], x2[j_k]), each (m,) + S (paired layout), or
        (n,) + S for a dense state of x against itself. Pooling layers derive the variances
        of their outputs from these."""
        if self.layout == "paired" and self.self_index1 is not None:
            return t[self.self_index1], t[self.self_index2]
        if self.layout == "paired" and self.same_inputs:
            return t, t
        if self.layout == "dense" and self.same_inputs:
            own = torch.diagonal(t, 0, 0, 1)
            own = own.permute((own.dim() - 1,) + tuple(range(own.dim() - 1)))
            return own, own
        raise ValueError(
            "pooling needs each input's own pixel-pair covariance: apply it to a state of "
            "inputs against themselves, or to pairs that include each input's pair with "
            "itself (self_index1/self_index2), as Sequential.kernel builds them")


def dense_input_state(x1: torch.Tensor, x2: Optional[torch.Tensor]) -> KernelState:
    """Input kernel of flat inputs (n, d): cov = x1 x2^T / d, var = |x|^2 / d.

    The 1/d normalization is neural-tangents' convention for the input kernel, so that a first
    ``Linear(W_std, b_std)`` gives W_std^2 x.x'/d + b_std^2 (Jacot et al. 2018, eq. for Σ^1).
    """
    d = x1.shape[1]
    var1 = (x1 * x1).sum(1) / d
    if x2 is None:
        cov = x1 @ x1.T / d
        return KernelState(cov=cov, var1=var1, var2=var1, ntk=None, width=d,
                           same_inputs=True)
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
