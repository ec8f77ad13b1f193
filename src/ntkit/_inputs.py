"""Validation and conversion of user inputs at the public boundary."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


def as_input_tensor(x: ArrayLike, name: str = "x", device=None, dtype=None) -> torch.Tensor:
    """Convert ``x`` to a floating torch tensor and check it is usable as network input.

    Accepts torch tensors and numpy arrays. Floating dtypes are kept (float64 for reference
    work, float32 for speed); integer or boolean arrays are rejected, because silently casting
    pixel values (0..255) to float is a common source of wrong kernels.
    Raises ValueError with the name of the argument on empty arrays, NaN or Inf.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name}: object arrays are not supported")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if not torch.is_floating_point(t):
        raise TypeError(
            f"{name}: integer/boolean dtype {t.dtype} is not accepted; convert to float32 or "
            f"float64 explicitly (e.g. x.astype('float64') / 255)")
    if t.dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: dtype {t.dtype} is too imprecise for kernels; use float32 or float64")
    if dtype is not None:
        t = t.to(dtype)
    if device is not None:
        t = t.to(device)
    if t.ndim < 2:
        raise ValueError(f"{name}: expected a batch of inputs of shape (n, ...), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t[0].numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(t.shape)}")
    # a NaN or Inf anywhere makes the sum non-finite: one fast reduction (25x cheaper than
    # isfinite().all() on CPU); only a non-finite sum (bad values, or an overflow of large
    # finite ones) needs the elementwise check
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or Inf value(s)")
    return t


def as_input_pair(x1: ArrayLike, x2: Optional[ArrayLike]):
    """Validate ``x1`` and optional ``x2`` together: same trailing shape, dtype and device.

    Returns (x1, x2) as tensors; x2 is None when not given. A float32/float64 mix is promoted
    to float64.
    """
    t1 = as_input_tensor(x1, "x1")
    if x2 is None:
        return t1, None
    t2 = as_input_tensor(x2, "x2", device=t1.device)
    if t1.shape[1:] != t2.shape[1:]:
        raise ValueError(
            f"x1 and x2 have mismatched feature shapes {tuple(t1.shape[1:])} and {tuple(t2.shape[1:])}")
    if t1.dtype != t2.dtype:
        dt = torch.promote_types(t1.dtype, t2.dtype)
        t1, t2 = t1.to(dt), t2.to(dt)
    return t1, t2
