"""Checks of layer hyperparameters, run when a layer is made (never while computing kernels).

A NaN or infinite W_std, a negative width or a negative standard deviation would otherwise give
an all-NaN or meaningless kernel with no error; each check raises a ValueError naming the
layer, the argument and the value.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional


def check_finite(value, what: str) -> float:
    """``value`` as a float; ValueError unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a finite real number, got {value!r}") from None
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be a finite real number, got {value!r}")
    return out


def check_scale(value, what: str) -> float:
    """A standard deviation: finite and >= 0 (only its square enters the kernels, so a
    negative one is a mistake, not a sign convention)."""
    out = check_finite(value, what)
    if out < 0:
        raise ValueError(f"{what} is a standard deviation and must be >= 0, got {value!r}")
    return out


def check_optional_scale(value, what: str) -> Optional[float]:
    """``None`` (no such parameter) or a standard deviation (``check_scale``)."""
    return None if value is None else check_scale(value, what)


def check_width(value, what: str) -> int:
    """A layer width: a positive integer (a float such as 512.0 is accepted, 512.5 is not)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if not math.isfinite(as_float) or as_float != int(as_float) or int(as_float) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(as_float)
