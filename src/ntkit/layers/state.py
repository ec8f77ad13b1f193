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
* ``chord`` optional 2 sqrt(v1 v2)(1 - rho) = E[(z(x) - z(x'))^2] - (sqrt(v1) - sqrt(v2))^2,
            rho the correlation, same shape as ``cov``: the squared chord between the
            normalized pre-activations times sqrt(v1 v2). Carried by dense flat states of deep
            ReLU-family chains (``precise_angles``), where it keeps 1 - rho, hence the angle,
            to working precision when rho is within rounding of 1 (``ntkit.layers.chord``);
* ``precise_angles`` True inside a chain of many ReLU-family layers (set from the
            architecture by ``base.apply_chain``): the ReLU family then starts ``chord``;
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

Scales (deep kernels, issue 13). The NNGP tensors (cov, var1, var2, dist, chord) are stored at
scale 2**log2_scale: the true second moments are 2**log2_scale times them. The NTK has its own
exponent, stored relative to the NNGP's: the true NTK is 2**(log2_scale + ntk_log2_offset)
times ``ntk``. Both are kept near 1 by ``renormalized`` (exact power-of-two rescaling). The NTK
needs its own: in the chaotic phase (e.g. Erf with W_std = 3) Θ grows like χ^L while Σ stays at
its fixed point, and their ratio leaves any dtype's range. Storing the offset (rather than an
absolute exponent) makes every map that scales Θ and Σ alike (activations, pooling, LayerNorm,
dropout) ignore it; only maps that add Σ into Θ (``ntk_add_``) or sum NTKs read it.
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
    #: true NTK = 2**(log2_scale + ntk_log2_offset) x ``ntk`` (0 while ntk is None)
    ntk_log2_offset: int = 0
    chord: Optional[torch.Tensor] = None
    #: set by ``base.apply_chain`` for deep ReLU-family chains (``ntkit.layers.chord``)
    precise_angles: bool = False

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

    @property
    def ntk_log2_scale(self) -> int:
        """The NTK's absolute exponent: the true NTK is 2**ntk_log2_scale x ``ntk``."""
        return self.log2_scale + self.ntk_log2_offset

    def at_scale(self, e: int) -> "KernelState":
        """The same state with its NNGP tensors stored at scale 2**e (new tensors, multiplied by
        2**(log2_scale - e): exact, values far below the largest may underflow to 0). The NTK's
        stored values are untouched (its offset absorbs the change)."""
        shift = self.log2_scale - int(e)
        if shift == 0:
            return self
        var1 = mul_pow2(self.var1, shift)
        var2 = var1 if self.var2 is self.var1 else mul_pow2(self.var2, shift)
        offset = self.ntk_log2_offset + shift if self.ntk is not None else 0
        return self.replace(cov=mul_pow2(self.cov, shift), var1=var1, var2=var2,
                            dist=mul_pow2(self.dist, shift),
                            chord=mul_pow2(self.chord, shift), log2_scale=int(e),
                            ntk_log2_offset=offset)

    def ntk_at_offset(self, offset: int) -> "KernelState":
        """The same state with the NTK stored at offset ``offset`` (``ntk`` times
        2**(ntk_log2_offset - offset), exact but for underflow of negligible values)."""
        if self.ntk is None or offset == self.ntk_log2_offset:
            return self
        return self.replace(ntk=mul_pow2(self.ntk, self.ntk_log2_offset - int(offset)),
                            ntk_log2_offset=int(offset))

    def at_scales(self, e: int, e_ntk: int) -> "KernelState":
        """The state with its NNGP stored at 2**e and its NTK at the absolute scale 2**e_ntk."""
        out = self.at_scale(e)
        return out.ntk_at_offset(int(e_ntk) - int(e))

    def ntk_add_(self, ntk: torch.Tensor, own: torch.Tensor, alpha: float = 1.0
                 ) -> Tuple[torch.Tensor, int]:
        """(alpha·ntk + own, offset) in place into ``ntk``: ``ntk`` stored at this state's NTK
        offset, ``own`` (a tangent-kernel term such as Σ') in the NNGP's stored units; the sum is
        stored at offset max(ntk_log2_offset, 0) (the larger scale: the smaller term is rescaled
        exactly and underflows where it is negligible)."""
        offset = self.ntk_log2_offset
        if offset == 0:  # one pass
            return torch.add(own, ntk, alpha=alpha, out=ntk), 0
        if offset > 0:
            if alpha != 1.0:
                ntk.mul_(alpha)
            return ntk.add_(mul_pow2(own, -offset)), offset
        ntk = mul_pow2(ntk, offset)
        if alpha != 1.0:
            ntk = ntk.mul_(alpha)
        return ntk.add_(own), 0

    def renormalized(self) -> "KernelState":
        """The state rescaled so that its largest stored variance m is near 1 when m left
        [2**-RENORM_BITS, 2**RENORM_BITS]: the NNGP tensors times 2**-round(log2 m), the
        exponent added to ``log2_scale``; the same for the NTK by its own largest magnitude
        (``ntk_log2_offset``). Unchanged otherwise (and for a lazy input state, m = 0, or a
        non-finite m, which the kernel's final checks report)."""
        if self.cov is None:
            return self
        state = self
        m = self.largest_variance()
        if 0.0 < m < math.inf and not -RENORM_BITS <= math.log2(m) <= RENORM_BITS:
            state = self.at_scale(self.log2_scale + round(math.log2(m)))
        t = state.largest_ntk()
        if 0.0 < t < math.inf and not -RENORM_BITS <= math.log2(t) <= RENORM_BITS:
            state = state.ntk_at_offset(state.ntk_log2_offset + round(math.log2(t)))
        return state

    def largest_ntk(self) -> float:
        """The largest stored |ntk| (0.0 when there is no NTK)."""
        if self.ntk is None or not self.ntk.numel():
            return 0.0
        lo, hi = torch.aminmax(self.ntk)
        return max(-float(lo), float(hi))

    def true_variance_log2(self) -> Optional[float]:
        """log2 of the largest true variance, 2**log2_scale x the largest stored one (None when
        every variance is 0)."""
        m = self.largest_variance()
        return math.log2(m) + self.log2_scale if 0.0 < m < math.inf else None

    def unnormalized(self, who: str) -> "KernelState":
        """The state's NNGP in true units (log2_scale 0), for layers whose map is not
        homogeneous; OverflowError naming ``who`` when the true values are not representable.
        The NTK keeps its scale (its offset absorbs the change)."""
        if self.log2_scale == 0:
            return self
        dtype = self.var1.dtype
        m = self.largest_variance()
        if m > 0.0 and not representable(m, self.log2_scale, dtype, margin=2.0):
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
