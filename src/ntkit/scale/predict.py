"""Predictions K(test, train) α with K(test, train) streamed, never held whole.

The mean prediction of kernel regression is f(x) = K(x, X) α (``ntkit.estimators``:
``dual_coef_``; α from ``ntkit.scale.solve``). Here the rows of K(test, train) come in bands of
``rows`` test points, each multiplied by α (n_train, k) as soon as it exists:

* ``predict_stored``: the bands are read from a complete kernel store of x_test against
  x_train (``compute_kernel(arch, x_test, x_train, store=...)``);
* ``predict_recomputed``: each band is recomputed tile by tile (``kernel_tile``, ``tile``
  training columns at a time), so K(test, train) is never stored at all.

With a Dask ``client`` each band is one task (the inputs and α are scattered to the workers
once); else the bands run in this process. Products accumulate in float64.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..engine import KernelOptions
from ..layers.kernel_tile import check_kernel_inputs, kernel_tile
from .operator import sum_over_bands

log = logging.getLogger("ntkit.scale")


def _check_alpha(alpha, n_train: int) -> np.ndarray:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[0] != n_train:
        raise ValueError(f"alpha must have shape ({n_train},) or ({n_train}, k) for "
                         f"{n_train} training points, got {np.shape(alpha)}")
    if not np.isfinite(a).all():
        raise ValueError("alpha contains NaN or Inf values")
    return a.reshape(n_train, -1)


def _check_rows(rows) -> int:
    if isinstance(rows, bool) or int(rows) != rows or int(rows) < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return int(rows)


class StoredRows:
    """Bands K[r0:r1, :] of the kernel ``name`` of a complete store of x1 against x2."""

    def __init__(self, path: Union[str, os.PathLike], name: str = "ntk"):
        from .view import open_kernel
        k = open_kernel(path)
        spec = k.spec
        if spec.symmetric:
            raise ValueError(f"{path} holds a kernel of x1 against itself; predictions need "
                             f"K(x_test, x_train): compute_kernel(arch, x_test, x_train, ...)")
        if name not in spec.kernels:
            raise ValueError(f"{path} holds the kernels {list(spec.kernels)}, not {name!r}")
        if not k.complete:
            raise ValueError(f"{path} holds {int(k.done.sum())} of {len(k.tiles)} tiles; call "
                             f"compute_kernel with the same arguments to finish it first")
        self.path, self.name = str(Path(path).resolve()), name
        self.n_test, self.n_train, self.tile = spec.n1, spec.n2, spec.tile

    def product(self, r0: int, r1: int, alpha: np.ndarray) -> np.ndarray:
        import zarr
        band = torch.from_numpy(np.asarray(zarr.open_group(self.path, mode="r")[self.name]
                                           [r0:r1, :]))
        return (band @ torch.from_numpy(alpha).to(band.dtype)).double().numpy()


class RecomputedRows:
    """Bands K(x_test[r0:r1], x_train) of ``arch``'s kernel ``name``, recomputed ``tile``
    training columns at a time."""

    def __init__(self, arch, x_test: torch.Tensor, x_train: torch.Tensor, name: str = "ntk",
                 tile: int = 1000, options: Optional[KernelOptions] = None):
        if name not in ("nngp", "ntk"):
            raise ValueError(f"kernel name must be 'nngp' or 'ntk', got {name!r}")
        self.arch, self.name, self.tile = arch, name, _check_rows(tile)
        self.x_test, self.x_train = x_test.detach().cpu(), x_train.detach().cpu()
        self.n_test, self.n_train = x_test.shape[0], x_train.shape[0]
        self.options = options or KernelOptions.from_env()

    def product(self, r0: int, r1: int, alpha: np.ndarray) -> np.ndarray:
        a = self.x_test[r0:r1]
        out = torch.zeros((r1 - r0, alpha.shape[1]), dtype=torch.float64)
        for c0 in range(0, self.n_train, self.tile):
            c1 = min(c0 + self.tile, self.n_train)
            k = kernel_tile(self.arch, a, self.x_train[c0:c1], self.options,
                            want_ntk=self.name == "ntk")[self.name]
            out += (k @ torch.from_numpy(alpha[c0:c1]).to(k.dtype)).double()
        return out.numpy()


def _band_prediction(source, r0: int, r1: int, alpha: np.ndarray):
    return r0, [(r0, None, source.product(r0, r1, alpha))]


def _stream(source, alpha, rows: int, client, progress: bool) -> np.ndarray:
    start = time.perf_counter()
    a = _check_alpha(alpha, source.n_train)
    cuts = [(r0, min(r0 + rows, source.n_test)) for r0 in range(0, source.n_test, rows)]
    remote = source if client is None else client.scatter(source, broadcast=True)
    out = sum_over_bands(_band_prediction, remote, cuts, a, (source.n_test, a.shape[1]),
                         client, progress, "K(test, train) @ alpha")
    log.info("predict: K(test, train) alpha, %d x %d (%s) in %.1f s", source.n_test,
             source.n_train, type(source).__name__, time.perf_counter() - start)
    return out[:, 0] if np.ndim(alpha) == 1 else out


def predict_stored(store: Union[str, os.PathLike], alpha, *, name: str = "ntk",
                   rows: Optional[int] = None, client=None, progress: bool = False) -> np.ndarray:
    """K(x_test, x_train) α (n_test,) or (n_test, k) from a complete store of x_test against
    x_train, ``rows`` test rows at a time (default: the store's tile)."""
    source = StoredRows(store, name)
    return _stream(source, alpha, _check_rows(rows or source.tile), client, progress)


def predict_recomputed(arch, x_test, x_train, alpha, *, name: str = "ntk",
                       rows: int = 1000, tile: int = 1000, dtype=None, client=None,
                       options: Optional[KernelOptions] = None,
                       progress: bool = False) -> np.ndarray:
    """K(x_test, x_train) α with ``arch``'s kernel recomputed in (rows x tile) tiles, in
    ``dtype`` (None: the inputs')."""
    t1, t2 = check_kernel_inputs(arch, x_test, x_train)
    if dtype is not None:
        from .store import as_kernel_dtype
        t1, t2 = t1.to(as_kernel_dtype(dtype)), t2.to(as_kernel_dtype(dtype))
    source = RecomputedRows(arch, t1, t2, name, tile, options)
    return _stream(source, alpha, _check_rows(rows), client, progress)
