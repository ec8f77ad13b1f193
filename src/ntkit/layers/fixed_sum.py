"""Sums whose bits do not depend on the thread count.

torch's CPU reductions split a long reduction into one chunk per thread and add the chunks'
partial sums, so ``x.sum()`` of a large tensor changes in the last bits with
``torch.set_num_threads``. ``fixed_order_sum`` adds in a fixed pairwise tree made of
elementwise additions only (each output of an elementwise op is computed by one thread from
the same two operands): the same bits for every thread count, with the error of pairwise
summation (O(log n) ulps). It costs about one extra pass over the data.
"""
from __future__ import annotations

import torch


def fixed_order_sum(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Sum of x over its last ``ndim`` axes, (..., *rest) -> (...), in a fixed pairwise order:
    at each level the first half of the remaining terms is added to the second half (an odd
    last term is added to the last sum)."""
    if ndim < 1 or ndim > x.dim():
        raise ValueError(f"fixed_order_sum: ndim must be in [1, {x.dim()}], got {ndim}")
    y = x.reshape(tuple(x.shape[:x.dim() - ndim]) + (-1,))
    if y.shape[-1] == 0:
        return y.sum(-1)
    while y.shape[-1] > 1:
        n = y.shape[-1]
        h = n // 2
        z = y[..., :h] + y[..., h:2 * h]
        if n % 2:
            z[..., h - 1:] += y[..., n - 1:]
        y = z
    return y[..., 0]


def fixed_order_mean(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Mean over the last ``ndim`` axes by ``fixed_order_sum``."""
    count = 1
    for s in x.shape[x.dim() - ndim:]:
        count *= s
    return fixed_order_sum(x, ndim) / count
