"""Exact power-of-two scaling of kernel values (deep kernels that would overflow or underflow).

A scaled kernel is a pair (values, e) meaning the true kernel 2**e · values. Multiplying by a
power of two only changes the exponents of floating-point numbers, so it is exact (no
rounding) unless a result leaves the dtype's normal range: values that fall below it round
to subnormals or 0 (harmless where they are negligible next to the largest), and nothing here
multiplies into overflow without being asked to.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

def _step(dtype: torch.dtype) -> int:
    """The largest exponent step of one multiplication: 2**±step is a normal number of the
    tensor's dtype (the scalar factor is rounded to it), so each step is exact."""
    return int(min(log2_ceiling(dtype), -log2_floor(dtype))) - 1


def mul_pow2(t: Optional[torch.Tensor], e: int) -> Optional[torch.Tensor]:
    """t · 2**e, a new tensor (None stays None; e = 0 returns t itself). Exact: the factor is
    applied in steps 2**±step that are normal numbers of t's dtype. A factor below what can
    leave any finite value nonzero gives t · 0 (zeros; non-finite values stay non-finite)."""
    if t is None or e == 0:
        return t
    e = int(e)
    if not t.is_floating_point():
        raise TypeError(f"mul_pow2 needs a floating-point tensor, got {t.dtype}")
    if e < -(log2_ceiling(t.dtype) - log2_floor(t.dtype) + mantissa_bits(t.dtype) + 2):
        return t * 0.0  # |t| < 2**ceiling: every finite value underflows
    step = _step(t.dtype)
    out = t
    rest = e
    while rest:
        s = max(-step, min(step, rest))
        out = out * (2.0 ** s)
        rest -= s
    return out


def log2_ceiling(dtype: torch.dtype) -> float:
    """log2 of the largest finite value of ``dtype``."""
    return math.log2(torch.finfo(dtype).max)


def log2_floor(dtype: torch.dtype) -> float:
    """log2 of the smallest positive normal value of ``dtype``."""
    return math.log2(torch.finfo(dtype).tiny)


def safe_log2_bounds(dtype: torch.dtype, headroom: int = 20) -> Tuple[float, float]:
    """(bottom, top): the log2 bounds that values of ``dtype`` may reach with ``2**headroom`` of
    room left inside its normal range on each side."""
    return log2_floor(dtype) + headroom, log2_ceiling(dtype) - headroom


def variance_log2_range(var1: torch.Tensor, var2: torch.Tensor) -> Optional[Tuple[float, float]]:
    """(log2 max(v, 1), log2 min v) over the positive entries v of both variance tensors (any
    shapes): the starting point of a bound on how far a chain of layers moves the values; None
    when no entry is positive."""
    v = torch.cat([var1.reshape(-1), var2.reshape(-1)])
    v = v[v > 0]
    if not v.numel():
        return None
    return math.log2(max(float(v.max()), 1.0)), math.log2(float(v.min()))


def mantissa_bits(dtype: torch.dtype) -> int:
    """Bits of precision of ``dtype`` (53 for float64, 24 for float32)."""
    return {torch.float64: 53, torch.float32: 24, torch.float16: 11,
            torch.bfloat16: 8}.get(dtype, int(round(-math.log2(torch.finfo(dtype).eps))) + 1)


def representable(largest: float, e: int, dtype: torch.dtype, margin: float = 0.0) -> bool:
    """Whether 2**e · largest (largest > 0 finite, a stored maximum) lies in the normal range
    of ``dtype``, with ``margin`` bits of headroom at the top."""
    k = math.log2(largest) + e
    return log2_floor(dtype) <= k <= log2_ceiling(dtype) - margin


#: a tile's (and an assembled result's) power-of-two scale entry: SCALE_KEY applies to every
#: matrix without one of its own, ``scale_key(name)``
SCALE_KEY = "log2_scale"


def scale_key(name: str) -> str:
    """The entry holding the scale of matrix ``name`` alone (e.g. "ntk/log2_scale")."""
    return f"{name}/{SCALE_KEY}"


def largest_magnitude(t: torch.Tensor) -> float:
    """max |t| (0.0 for an empty tensor), in one pass."""
    if not t.numel():
        return 0.0
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))


def in_true_units(t: torch.Tensor, e: int, name: str = "kernel") -> torch.Tensor:
    """2**e · t, or OverflowError (naming ``normalize=True``) when its largest magnitude is not a
    normal number of t's dtype: the kernel ``name`` overflows or underflows in true units."""
    if e == 0:
        return t
    top = largest_magnitude(t)
    if top > 0.0 and not representable(top, e, t.dtype):
        k = math.log2(top) + e
        raise OverflowError(
            f"the {name} kernel's largest value is 2^{k:.1f}, not representable in "
            f"{str(t.dtype).replace('torch.', '')} ({'overflow' if k > 0 else 'underflow'}); "
            f"ask for the normalized kernel with kernel(..., normalize=True): the true kernel "
            f"is then 2**Kernels.log2_scale times the returned NNGP (2**Kernels.ntk_log2_scale "
            f"times the NTK)")
    return mul_pow2(t, e)


def shared_scale(t: torch.Tensor, e_t: int, companion: torch.Tensor, e: int, bits: int = 32
                 ) -> Tuple[torch.Tensor, int]:
    """(t, e_t) brought to the scale 2**e of ``companion`` (exact) when t's largest magnitude
    there is within 2**±bits of the companion's, else unchanged: a second matrix shares its
    companion's scale where the two are of comparable size."""
    top, ref = largest_magnitude(t), largest_magnitude(companion)
    if e_t == e or top == 0.0:
        return t, e
    if not (math.isfinite(top) and 0.0 < ref < math.inf):
        return t, e_t
    if abs(math.log2(top) + e_t - e - math.log2(ref)) <= bits:
        return mul_pow2(t, e_t - e), e
    return t, e_t
