"""A symmetric train-train kernel K (n, n) as a linear operator that is never held whole.

K is visited in *row bands*: band [r0, r1) is K[r0:r1, r0:n], the rows of the band from the
diagonal on (the upper triangle, as a kernel store holds it). One pass over the bands gives

* ``matmul(V)`` = K V for V (n, k): band B adds B V[r0:] to rows [r0, r1) and, for its part
  right of the diagonal block, B[:, r1-r0:]^T V[r0:r1] to rows [r1, n) (the mirrored lower
  triangle), so every stored entry is read once per product;
* ``columns(idx)`` = K[:, idx] (n, m), by selection from the same bands;
* ``diagonal()`` from the diagonal blocks alone.

Where the bands come from (``bands``, a picklable callable ``bands(r0, r1) -> (r1-r0, n-r0)``):
``StoreBands`` reads them from a complete kernel store (``ntkit.scale.open_kernel``);
``RecomputedBands`` recomputes them tile by tile with ``ntkit.layers.kernel_tile.kernel_tile``
(when storing costs more than computing again). With a Dask ``client`` every band is one task
on the cluster (the bands object and V are scattered to the workers once per product) and the
partial products are summed on the client: a Dask reduction over the bands; without one the
bands are visited in this process. Products accumulate in float64 whatever the kernel dtype.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..engine import KernelOptions
from ..layers.kernel_tile import kernel_tile


class StoreBands:
    """Row bands K[r0:r1, r0:] of the kernel ``name`` of a complete symmetric store at
    ``path`` (a picklable reader: the Zarr group is opened where it is called)."""

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
        self._array = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def _read(self, r0: int, r1: int, c1: Optional[int]) -> np.ndarray:
        """K[r0:r1, r0:c1] with the unwritten chunks below the diagonal (inside the diagonal
        block when a band spans several tiles) filled from their stored mirrors."""
        if self._array is None:
            import zarr
            self._array = zarr.open_group(self.path, mode="r")[self.name]
        b = np.asarray(self._array[r0:r1, r0:c1])
        chunk = np.arange(r0, r1) // self.tile
        below = chunk[:, None] > chunk[None, :]
        if below.any():
            d = b[:, : r1 - r0]
            d[below] = d.T[below]
        if np.isnan(b).any():
            raise ValueError(f"{self.path}: rows {r0}:{r1} of {self.name} hold NaN in tiles "
                             f"marked done; run compute_kernel on the store again to check and "
                             f"recompute them")
        return b

    def __call__(self, r0: int, r1: int) -> np.ndarray:
        return self._read(r0, r1, None)

    def diagonal_block(self, r0: int, r1: int) -> np.ndarray:
        return self._read(r0, r1, r1)


class RecomputedBands:
    """Row bands K[r0:r1, r0:] of ``arch``'s kernel ``name`` on x (n, ...), recomputed tile by
    tile (``tile`` columns at a time; the diagonal block with b=None, as the engine does)."""

    def __init__(self, arch, x: torch.Tensor, name: str = "ntk", tile: int = 1000,
                 options: Optional[KernelOptions] = None):
        if name not in ("nngp", "ntk"):
            raise ValueError(f"kernel name must be 'nngp' or 'ntk', got {name!r}")
        self.arch, self.x, self.name, self.tile = arch, x.detach().cpu(), name, int(tile)
        self.options = options or KernelOptions.from_env()
        self.n, self.dtype = x.shape[0], np.dtype(str(x.dtype).replace("torch.", ""))

    def __call__(self, r0: int, r1: int) -> np.ndarray:
        want_ntk = self.name == "ntk"
        a = self.x[r0:r1]
        parts = [kernel_tile(self.arch, a, None, self.options, want_ntk=want_ntk)[self.name]]
        for c0 in range(r1, self.n, self.tile):
            b = self.x[c0:min(c0 + self.tile, self.n)]
            parts.append(kernel_tile(self.arch, a, b, self.options, want_ntk=want_ntk)[self.name])
        return torch.cat(parts, dim=1).numpy()

    def diagonal_block(self, r0: int, r1: int) -> np.ndarray:
        return kernel_tile(self.arch, self.x[r0:r1], None, self.options,
                           want_ntk=self.name == "ntk")[self.name].numpy()


def band_product(bands, r0: int, r1: int, v: np.ndarray) -> Tuple[int, list]:
    """Band [r0, r1)'s share of K V: (r0, [(r0, None, P)]) with P (n - r0, k) to be added to
    rows r0: of the product (rows [r0, r1) from the band, rows [r1, n) from its mirror)."""
    b = torch.from_numpy(bands(r0, r1))
    vb = torch.from_numpy(np.ascontiguousarray(v[r0:])).to(b.dtype)
    out = torch.zeros((b.shape[1], v.shape[1]), dtype=torch.float64)
    out[: r1 - r0] = (b @ vb).double()
    out[r1 - r0:] += (b[:, r1 - r0:].T @ vb[: r1 - r0]).double()
    return r0, [(r0, None, out.numpy())]


def band_columns(bands, r0: int, r1: int, idx: np.ndarray) -> Tuple[int, list]:
    """Band [r0, r1)'s share of K[:, idx]: the entries it stores (rows [r0, r1), columns
    idx[j] >= r0) and mirrors (rows [r1, n), columns idx[j] in [r0, r1)), as updates
    (first row, column positions or None for all, values); each entry comes from one band."""
    b = bands(r0, r1)
    top = np.zeros((r1 - r0, len(idx)), dtype=np.float64)
    right = np.flatnonzero(idx >= r0)
    top[:, right] = b[:, idx[right] - r0]
    inside = np.flatnonzero((idx >= r0) & (idx < r1))
    mirror = b[idx[inside] - r0, r1 - r0:].T.astype(np.float64)
    return r0, [(r0, None, top), (r1, inside, mirror)]


def sum_over_bands(fn, source, cuts: Sequence[Tuple[int, int]], arg, shape: Tuple[int, int],
                   client=None, progress: bool = False, desc: str = "bands") -> np.ndarray:
    """Σ over the bands (r0, r1) in ``cuts`` of ``fn(source, r0, r1, arg) -> (r0, updates)``
    into a float64 array of ``shape``: each update (row, cols, values) is added to rows
    row:row+len(values) and the columns ``cols`` (None: all). With a Dask ``client`` one task per
    band (``source`` may be a future of it scattered beforehand; ``arg`` is scattered to every
    worker once), summed here as the tasks finish; else in this process. A tqdm bar over the
    bands with ``progress``."""
    out = np.zeros(shape, dtype=np.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cuts), desc=desc, unit="band", leave=False)
    try:
        if client is None:
            results = (fn(source, r0, r1, arg) for r0, r1 in cuts)
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
    ``band`` rows; on ``client`` (a ``distributed.Client``) or in this process (None).
    ``progress`` shows a bar over the bands of each pass."""

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
        parts: List[np.ndarray] = []
        for r0, r1 in self.cuts:
            parts.append(np.diagonal(self.bands.diagonal_block(r0, r1)).astype(np.float64))
        return np.concatenate(parts)
