"""Exact power-of-two scaling of kernel values (deep kernels that would overflow or underflow).

A scaled kernel is a pair (values, e) meaning the true kernel 2**e · values. Multiplying by a
power of two only changes the exponents of floating-point numbers, so it is exact (no
rounding) unless a result leaves the dtype's normal range: values that fall below it round
to subnormals or 0 (harmless where they are negligible next to the largest), and nothing here
multiplies into overflow without being asked to.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

#: the largest exponent step of one multiplication (2**±64 is exact in float32 and float64)
_STEP = 64


def mul_pow2(t: Optional[torch.Tensor], e: int) -> Optional[torch.Tensor]:
    """t · 2**e, a new tensor (None stays None; e = 0 returns t itself). Exact: the factor is
    applied in steps of at most 2**±64, each representable in float32."""
    if t is None or e == 0:
        return t
    out = t
    rest = int(e)
    while rest:
        step = max(-_STEP, min(_STEP, rest))
        out = out * (2.0 ** step)
        rest -= step
    return out


def log2_ceiling(dtype: torch.dtype) -> float:
    """log2 of the largest finite value of ``dtype``."""
    return math.log2(torch.finfo(dtype).max)


def log2_floor(dtype: torch.dtype) -> float:
    """log2 of the smallest positive normal value of ``dtype``."""
    return math.log2(torch.finfo(dtype).tiny)


def representable(largest: float, e: int, dtype: torch.dtype, margin: float = 0.0) -> bool:
    """Whether 2**e · largest (largest > 0 finite, a stored maximum) lies in the normal range
    of ``dtype``, with ``margin`` bits of headroom at the top."""
    k = math.log2(largest) + e
    return log2_floor(dtype) <= k <= log2_ceiling(dtype) - margin
