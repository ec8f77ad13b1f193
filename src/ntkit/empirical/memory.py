"""Memory budget of the empirical kernels and the block size it allows.

The kernels are assembled from tiles of at most b rows and b columns (``_modes.blockwise``).
While one tile is computed, memory holds the features of its rows and of its columns (per-example
Jacobians: k·P numbers each; structured features: layer inputs and cotangents), one more copy
of a side's features while they are produced (gradient buffers before they are stacked), the
transient memory of the passes that produce them (about (1 + k)·A for A bytes of activations
autograd saves per example: one forward pass and k batched backward passes) and the tile:

    M(b) = b · (3F + (1 + k) A) + b² · k_tile · itemsize,      k_tile = k² ("full") or k,

with F the measured feature bytes per example. The default block size is the largest b with
M(b) ≤ budget; the default budget is min(2 GiB, a quarter of the memory available now). For
x2=None a single block of all n examples is taken first when it fits: it holds its features
once (structured derivatives, whose features are autograd's outputs) or twice (Jacobians, while
stacked), not 3 times. Structured derivatives without parameters left to Jacobians count
A + 2·(the largest layer's k cotangents) as transient, not (1 + k)·A: the backward keeps the
forward's activations once and carries k cotangents of one layer at a time.
"""
from __future__ import annotations

import math
from typing import Optional

from ..engine.memory import available_bytes

DEFAULT_CAP = 2 * 2 ** 30


def default_budget() -> int:
    avail = available_bytes()
    return DEFAULT_CAP if avail is None else max(64 * 2 ** 20, min(DEFAULT_CAP, avail // 4))


def block_size(feature_bytes: float, transient_bytes: float, tile_bytes_per_pair: float,
               budget: int, n_max: int, whole_copies: Optional[float] = None) -> int:
    """Largest b ≤ n_max (at least 1) with b·(3F + T) + b²·t ≤ budget (see the module doc).

    ``whole_copies`` (x2=None only): one block of all n_max examples holds its features
    ``whole_copies`` times, not 3 (rows and columns are the same block); n_max when
    n_max·(whole_copies·F + T) + n_max²·t ≤ budget."""
    if whole_copies is not None:
        need = n_max * (whole_copies * feature_bytes + transient_bytes)
        if need + n_max * n_max * tile_bytes_per_pair <= budget:
            return max(1, n_max)
    lin = 3.0 * feature_bytes + transient_bytes
    quad = float(tile_bytes_per_pair)
    if quad > 0:
        b = (-lin + math.sqrt(lin * lin + 4.0 * quad * budget)) / (2.0 * quad)
    else:
        b = budget / max(lin, 1.0)
    return int(max(1, min(n_max, math.floor(b))))


def check_output(n1: int, n2: int, per_pair: int, itemsize: int, caller: str) -> None:
    """Raise MemoryError, before any work, when the kernel itself cannot fit in memory."""
    need = n1 * n2 * per_pair * itemsize
    avail = available_bytes()
    if avail is not None and need > avail:
        raise MemoryError(f"{caller}: the kernel itself needs {need / 2 ** 30:.1f} GiB "
                          f"({n1} x {n2} x {per_pair} entries) but {avail / 2 ** 30:.1f} GiB "
                          f"are available; use mode='trace' or fewer examples per call")
