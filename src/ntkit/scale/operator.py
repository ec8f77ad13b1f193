"""A symmetric train-train kernel K (n, n) as a linear operator that is never held whole.

K is visited in *row bands*: band [r0, r1) is K[r0:r1, r0:n], the rows of the band from the
diagonal on (the upper triangle, as a kernel store holds it), delivered as *blocks*
(``bands.blocks(r0, r1)`` yields (c0, B)): first the diagonal block K[r0:r1, r0:r1] (c0 = r0,
symmetric), then blocks K[r0:r1, c0:c0+w] right of it (c0 >= r1), one stored tile or one
recomputed tile each. One pass over the bands gives

* ``matmul(V)`` = K V for V (n, k): a diagonal block D adds D V[r0:r1] to rows [r0, r1); a block
  B right of it adds B V[c0:c0+w] to rows [r0, r1) and Bᵀ V[r0:r1] to rows [c0, c0+w) (the
  mirrored lower triangle), so every stored entry is read once per product;
* ``columns(idx)`` = K[:, idx] (n, m), by selection from the same blocks;
* ``diagonal()`` from the diagonal blocks alone.

Where the blocks come from: ``StoreBands`` reads them from a complete kernel store
(``ntkit.scale.open_kernel``): for bands of one tile (the default) every block is one stored
chunk, read straight from its file when the store is uncompressed (``ntkit.scale.store``);
``RecomputedBands`` recomputes them tile by tile with ``ntkit.layers.kernel_tile.kernel_tile``
(when storing costs more than computing again). With a Dask ``client`` every band is one task
on the cluster (the bands object and V are scattered to the workers once per product) and the
partial products are summed on the client: a Dask reduction over the bands; without one the
bands run in this process on a pool of ``threads`` threads (torch single-threaded in each),
summed in band order (deterministic). Each block's product runs in the kernel dtype (float32
sums over at most one tile); the sums over blocks and bands accumulate in float64.
"""
from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..engine import KernelOptions
from ..engine.run import intra_op_threads
from ..layers.kernel_tile import kernel_tile
from .cluster import local_workers

Block = Tuple[int, np.ndarray]


class StoreBands:
    """Row bands K[r0:r1, r0:] of the kernel ``name`` of a complete symmetric store at
    ``path``, as blocks (a picklable reader: the Zarr group is opened where it is called)."""

    def __init__(self, path: Union[str, os.PathLike], name: str = "ntk"):
        from .view import open_kernel
        k = open_kernel(path)
        spec = k.spec
        if not spec.symmetric:
            raise ValueError(f"{path} holds a kernel of x1 (n1={spec.n1}) against other inputs "
                             f"x2 (n2={spec.n2}); a solve needs the train-train kernel (x2=None)")
        if name not in spec.kernels:
            raise ValueError(f"{path} holds the kernels {list(spec.kernels)}, not {name!r}; "
                             f"compute it with get=({name!r},)")
        if not k.complete:
            raise ValueError(f"{path} holds {int(k.done.sum())} of {len(k.tiles)} tiles; call "
                             f"compute_kernel with the same arguments to finish it first")
        self.path, self.name = str(Path(path).resolve()), name
        self.n, self.tile, self.dtype = spec.n1, spec.tile, np.dtype(spec.dtype)
        self._array, self._direct = None, None

    def __getstate__(self):
        return {**self.__dict__, "_array": None, "_direct": None}

    def _zarr(self):
        if self._array is None:
            import zarr
            from .store import reads_directly
            self._array = zarr.open_group(self.path, mode="r")[self.name]
            self._direct = reads_directly(self._array)
        return self._array

    def _nan_error(self, r0: int, r1: int) -> ValueError:
        return ValueError(f"{self.path}: rows {r0}:{r1} of {self.name} hold NaN in tiles marked "
                          f"done; run compute_kernel on the store again to check and recompute "
                          f"them")

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """K[r0:r1, c0:c1] (c0 >= r0) through Zarr, the unwritten chunks below the diagonal
        filled from their stored mirrors (only where c0 = r0)."""
        b = np.asarray(self._zarr()[r0:r1, c0:c1])
        if c0 == r0:
            chunk = np.arange(r0, r1) // self.tile
            below = chunk[:, None] > chunk[None, :]
            if below.any():
                d = b[:, : r1 - r0]
                d[below] = d.T[below]
        return b

    def _chunk(self, i: int, j: int) -> np.ndarray:
        """Stored tile (i, j), i <= j: its chunk file read directly when the store is
        uncompressed (``store.reads_directly``), else through Zarr."""
        t = self.tile
        r0, r1, c0, c1 = i * t, min(i * t + t, self.n), j * t, min(j * t + t, self.n)
        array = self._zarr()
        if not self._direct:
            return self._read(r0, r1, c0, c1)
        path = Path(self.path) / self.name / array.metadata.encode_chunk_key((i, j))
        try:
            raw = np.fromfile(path, dtype=self.dtype)
        except FileNotFoundError:  # never written: the fill value, NaN
            raise self._nan_error(r0, r1) from None
        if raw.size != t * t:
            raise ValueError(f"{path}: a chunk of {raw.size} values, expected {t * t}; run "
                             f"compute_kernel on the store again to check and recompute it")
        return raw.reshape(t, t)[: r1 - r0, : c1 - c0]

    def blocks(self, r0: int, r1: int) -> Iterator[Block]:
        """(c0, K[r0:r1, c0:c0+w]): the diagonal block (c0 = r0), then one block per tile
        column right of it; each a stored chunk when [r0, r1) is one tile row."""
        t, n = self.tile, self.n
        aligned = r0 % t == 0 and r1 == min(r0 + t, n)
        yield r0, self._chunk(r0 // t, r0 // t) if aligned else self._read(r0, r1, r0, r1)
        c0 = r1
        while c0 < n:
            c1 = min((c0 // t + 1) * t, n)
            yield c0, (self._chunk(r0 // t, c0 // t) if aligned and c0 % t == 0
                       else self._read(r0, r1, c0, c1))
            c0 = c1

    def diagonal(self, r0: int, r1: int) -> np.ndarray:
        """diag K[r0:r1, r0:r1]."""
        return np.diagonal(next(self.blocks(r0, r1))[1]).copy()


class RecomputedBands:
    """Row bands K[r0:r1, r0:] of ``arch``'s kernel ``name`` on x (n, ...), recomputed as
    blocks of ``tile`` columns (the diagonal block with b=None, as the engine does)."""

    def __init__(self, arch, x: torch.Tensor, name: str = "ntk", tile: int = 1000,
                 options: Optional[KernelOptions] = None):
        if name not in ("nngp", "ntk"):
            raise ValueError(f"kernel name must be 'nngp' or 'ntk', got {name!r}")
        self.arch, self.x, self.name, self.tile = arch, x.detach().cpu(), name, int(tile)
        self.options = options or KernelOptions.from_env()
        self.n, self.dtype = x.shape[0], np.dtype(str(x.dtype).replace("torch.", ""))

    def _tile(self, a: torch.Tensor, b: Optional[torch.Tensor]) -> np.ndarray:
        return kernel_tile(self.arch, a, b, self.options,
                           want_ntk=self.name == "ntk")[self.name].numpy()

    def blocks(self, r0: int, r1: int) -> Iterator[Block]:
        a = self.x[r0:r1]
        yield r0, self._tile(a, None)
        for c0 in range(r1, self.n, self.tile):
            yield c0, self._tile(a, self.x[c0:min(c0 + self.tile, self.n)])

    def diagonal(self, r0: int, r1: int) -> np.ndarray:
        return np.diagonal(self._tile(self.x[r0:r1], None)).copy()


def band_product(bands, r0: int, r1: int, v: np.ndarray) -> Tuple[int, list]:
    """Band [r0, r1)'s share of K V: (r0, [(r0, None, P)]) with P (n - r0, k) to be added to
    rows r0: of the product (rows [r0, r1) from the band, rows [r1, n) from its mirror)."""
    vb = torch.from_numpy(np.ascontiguousarray(v[r0:], dtype=bands.dtype))
    out = torch.zeros((v.shape[0] - r0, v.shape[1]), dtype=torch.float64)
    h = r1 - r0
    for c0, block in bands.blocks(r0, r1):
        b = torch.from_numpy(block)
        c, w = c0 - r0, block.shape[1]
        out[:h] += b @ vb[c:c + w]
        if c0 != r0:
            out[c:c + w] += b.T @ vb[:h]
    if not torch.isfinite(out).all():
        raise ValueError(f"rows {r0}:{r1} of the kernel hold NaN or Inf values (a store: run "
                         f"compute_kernel on it again to check and recompute its tiles)")
    return r0, [(r0, None, out.numpy())]


def band_columns(bands, r0: int, r1: int, idx: np.ndarray) -> Tuple[int, list]:
    """Band [r0, r1)'s share of K[:, idx]: the entries it stores (rows [r0, r1), columns
    idx[j] >= r0) and mirrors (rows right of the diagonal block, columns idx[j] in [r0, r1)),
    as updates (first row, column positions or None for all, values); each entry comes from
    one band."""
    top = np.zeros((r1 - r0, len(idx)), dtype=np.float64)
    inside = np.flatnonzero((idx >= r0) & (idx < r1))
    updates = [(r0, None, top)]
    for c0, block in bands.blocks(r0, r1):
        w = block.shape[1]
        sel = np.flatnonzero((idx >= c0) & (idx < c0 + w))
        top[:, sel] = block[:, idx[sel] - c0]
        if c0 != r0 and inside.size:
            updates.append((c0, inside, block[idx[inside] - r0].T.astype(np.float64)))
    return r0, updates


def _in_process(fn, source, cuts, arg, threads: int):
    """``fn(source, r0, r1, arg)`` for every band, on ``threads`` threads (torch single-threaded
    in each), yielded in band order; at most 2·threads bands in flight."""
    if threads <= 1:
        yield from (fn(source, r0, r1, arg) for r0, r1 in cuts)
        return
    with intra_op_threads(1), ThreadPoolExecutor(threads) as pool:
        pending = collections.deque()
        for r0, r1 in cuts:
            pending.append(pool.submit(fn, source, r0, r1, arg))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def sum_over_bands(fn, source, cuts: Sequence[Tuple[int, int]], arg, shape: Tuple[int, int],
                   client=None, progress: bool = False, desc: str = "bands",
                   threads: Optional[int] = None) -> np.ndarray:
    """Σ over the bands (r0, r1) in ``cuts`` of ``fn(source, r0, r1, arg) -> (r0, updates)``
    into a float64 array of ``shape``: each update (row, cols, values) is added to rows
    row:row+len(values) and the columns ``cols`` (None: all). With a Dask ``client`` one task per
    band (``source`` may be a future of it scattered beforehand; ``arg`` is scattered to every
    worker once), summed here as the tasks finish; else in this process on ``threads`` threads
    (None: one per core), summed in band order. A tqdm bar over the bands with ``progress``."""
    out = np.zeros(shape, dtype=np.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cuts), desc=desc, unit="band", leave=False)
    try:
        if client is None:
            results = _in_process(fn, source, cuts, arg,
                                  local_workers() if threads is None else int(threads))
        else:
            from distributed import as_completed
            shared = client.scatter(arg, broadcast=True)
            futures = [client.submit(fn, source, r0, r1, shared, pure=False) for r0, r1 in cuts]
            results = (fut.result() for fut in as_completed(futures))
        for _, updates in results:
            for row, cols, values in updates:
                if cols is None:
                    out[row:row + values.shape[0]] += values
                else:
                    out[row:row + values.shape[0], cols] += values
            if bar is not None:
                bar.update(1)
        return out
    finally:
        if bar is not None:
            bar.close()


class KernelOperator:
    """K (n, n) symmetric, from ``bands`` (``StoreBands`` or ``RecomputedBands``) cut every
    ``band`` rows (default: the store's tile, so that every block is one stored chunk); on
    ``client`` (a ``distributed.Client``) or in this process (None: a thread per core, see
    ``sum_over_bands``). ``progress`` shows a bar over the bands of each pass."""

    def __init__(self, bands, band: Optional[int] = None, client=None, progress: bool = False):
        self.bands, self.n = bands, int(bands.n)
        self.band = int(band or getattr(bands, "tile", 1000))
        if self.band < 1:
            raise ValueError(f"band must be a positive number of rows, got {band!r}")
        self.client, self.progress = client, progress
        self.cuts = [(r0, min(r0 + self.band, self.n)) for r0 in range(0, self.n, self.band)]
        self._remote = None
        self.passes = 0

    @property
    def dtype(self) -> np.dtype:
        return self.bands.dtype

    def _pass(self, fn, arg, width: int, desc: str) -> np.ndarray:
        self.passes += 1
        if self.client is not None and self._remote is None:
            self._remote = self.client.scatter(self.bands, broadcast=True)
        return sum_over_bands(fn, self.bands if self._remote is None else self._remote,
                              self.cuts, arg, (self.n, width), self.client, self.progress, desc)

    def matmul(self, v: np.ndarray) -> np.ndarray:
        """K V for V (n,) or (n, k), in float64."""
        v = np.asarray(v, dtype=np.float64)
        flat = v.ndim == 1
        v2 = v[:, None] if flat else v
        if v2.ndim != 2 or v2.shape[0] != self.n:
            raise ValueError(f"expected V of shape ({self.n},) or ({self.n}, k), got {v.shape}")
        out = self._pass(band_product, v2, v2.shape[1], "K @ V")
        return out[:, 0] if flat else out

    def columns(self, idx: Sequence[int]) -> np.ndarray:
        """K[:, idx] (n, m) in float64."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= self.n)):
            raise ValueError(f"column indices must be a 1-D array within [0, {self.n})")
        return self._pass(band_columns, idx, len(idx), "K[:, centres]")

    def diagonal(self) -> np.ndarray:
        """diag K (n,) in float64, from the diagonal blocks."""
        parts: List[np.ndarray] = [self.bands.diagonal(r0, r1).astype(np.float64)
                                   for r0, r1 in self.cuts]
        return np.concatenate(parts)
