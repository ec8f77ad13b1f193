"""Output-axis modes of the empirical kernels and the memory-bounded block loop.

For a model with k outputs per example, the kernel between examples i and j is a k x k matrix
K[i, j, c, d]. The modes (neural-tangents' ``trace_axes`` / ``diagonal_axes`` conventions):

* ``"full"``:     K[i, j, c, d], returned as (n1, n2, *out_shape, *out_shape);
* ``"diagonal"``: K[i, j, c, c], returned as (n1, n2, *out_shape) (the c = d entries only);
* ``"trace"``:    (1/k) sum_c K[i, j, c, c], returned as (n1, n2): the mean over outputs, as
  neural-tangents' default ``trace_axes=(-1,)`` for (n, k) outputs. For wide networks
  K[i, j] -> Θ(x_i, x_j) I_k, so "trace" is the one to compare with ``arch.kernel(...).ntk``.

Internally every implementation computes blocks in a canonical layout: (na, nb, k, k) for
"full", (na, nb, k) for the other two; "trace" blocks are reduced to (na, nb) before they are
stored (``reduce_block``).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from tqdm import tqdm

from ..engine import compute_tiles
from ._batch import Batch, batch_len, take

MODES = ("trace", "full", "diagonal")


def check_mode(mode: str, caller: str) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{caller}: unknown mode {mode!r}; expected one of "
                         f"{', '.join(repr(m) for m in MODES)}")
    return mode


def check_batch_size(batch_size: Optional[int], caller: str) -> Optional[int]:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
        raise ValueError(f"{caller}: batch_size must be a positive integer or None, got "
                         f"{batch_size!r}")
    return int(batch_size)


def mirror(block: torch.Tensor) -> torch.Tensor:
    """The (j, i) block from the (i, j) block: K[j, i, d, c] = K[i, j, c, d]."""
    return block.permute(1, 0, 3, 2) if block.ndim == 4 else block.transpose(0, 1)


def reduce_block(block: torch.Tensor, mode: str) -> torch.Tensor:
    """A canonical block as stored: "trace" takes the mean over outputs at once, so memory
    holds (n1, n2) and not (n1, n2, k)."""
    return block.mean(dim=-1) if mode == "trace" else block


def stored_tail(mode: str, k: int) -> Tuple[int, ...]:
    return () if mode == "trace" else (k, k) if mode == "full" else (k,)


def finalize(kernel: torch.Tensor, mode: str, out_shape: Tuple[int, ...]) -> torch.Tensor:
    """Stored layout (``reduce_block``) -> the public shape of ``mode`` (module docstring)."""
    n1, n2 = kernel.shape[:2]
    if mode == "trace":
        return kernel
    if mode == "diagonal":
        return kernel.reshape(n1, n2, *out_shape)
    return kernel.reshape(n1, n2, *out_shape, *out_shape)


class _FeatureTiles:
    """The engine's tile function for empirical kernels: a tile of rows ia (indices into x1)
    and columns ib (indices into x2, or x1; None for a diagonal tile) is
    ``contract(prepare(rows), prepare(cols))``. Tiles come row by row, so the features of the
    current row block are kept for the next tile of the same rows (the same values as
    recomputing them: a memo, not state that changes results)."""

    def __init__(self, prepare: Callable, contract: Callable, x1: Batch, x2: Optional[Batch]):
        self.prepare, self.contract = prepare, contract
        self.x1, self.other = x1, (x1 if x2 is None else x2)
        self._row_key, self._row_features = None, None

    def _rows(self, ia: torch.Tensor):
        key = (int(ia[0]), int(ia[-1]) + 1)
        if key != self._row_key:
            self._row_key, self._row_features = key, self.prepare(take(self.x1, *key))
        return self._row_features

    def __call__(self, ia: torch.Tensor, ib: Optional[torch.Tensor], options) -> dict:
        fa = self._rows(ia)
        if ib is None:
            return {"k": self.contract(fa, fa, True)}
        fb = self.prepare(take(self.other, int(ib[0]), int(ib[-1]) + 1))
        return {"k": self.contract(fa, fb, False)}


def blockwise(prepare: Callable, contract: Callable, x1: Batch, x2: Optional[Batch],
              tail: Tuple[int, ...], batch_size: Optional[int], dtype: torch.dtype,
              device: torch.device, progress: Optional[bool] = None,
              desc: str = "empirical kernel") -> torch.Tensor:
    """The canonical kernel, as tiles of at most ``batch_size`` rows and columns computed by the
    kernel engine (``ntkit.engine.compute_tiles``; one tile when batch_size is None).

    ``prepare(x_block)`` computes per-block features (Jacobians, Gram factors, ...);
    ``contract(fa, fb, same)`` the (na, nb, *tail) block between two prepared blocks, ``same``
    telling that they are the same block (fa is fb). With x2=None only the tiles on and above
    the diagonal are computed and the others mirrored. Features of column blocks are recomputed
    for every row block: memory stays bounded by the block size, at the cost of recomputation.
    ``progress``: a tqdm bar over tiles (None: shown only when the run lasts over 2 seconds,
    False: never, True: always).
    """
    other = x1 if x2 is None else x2
    n1, n2 = batch_len(x1), batch_len(other)
    side = max(n1, n2) if batch_size is None else batch_size
    rows1 = torch.arange(n1)
    rows2 = None if x2 is None else torch.arange(n2)
    bar = tqdm(total=None, desc=desc, unit="block", disable=progress is False,
               delay=0 if progress else 2.0, leave=False)

    def advance(done: int, total: int) -> None:
        if total > 1:
            bar.total = total
            bar.update(done - bar.n)
    try:
        out = compute_tiles(_FeatureTiles(prepare, contract, x1, x2), rows1, rows2, side,
                            progress=advance, mirror=mirror)
    finally:
        bar.close()
    kern = out["k"]
    if kern.dtype != dtype or kern.device != device:
        kern = kern.to(dtype=dtype, device=device)
    return kern
