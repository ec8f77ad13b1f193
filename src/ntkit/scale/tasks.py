"""What a Dask worker runs: one tile of a kernel store, computed or checked.

A task carries only the store path, the tile's index and coordinates and the options; the
worker reads the tile's rows of x1 and columns of x2 from the store itself, so the inputs are
never shipped with the tasks.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import zarr

from ..engine import KernelOptions, Tile
from ..engine.run import intra_op_threads
from ..layers.kernel_tile import kernel_tile
from .store import StoreSpec, digest, fsync_chunk, load_arch


def _open(path: str):
    group = zarr.open_group(path, mode="r+")
    attrs = group.attrs.asdict()
    return group, attrs, StoreSpec.from_attrs(attrs["ntkit"])


def _chunk(tile: Tile, side: int):
    return (tile.r0 // side, tile.c0 // side)


def compute_stored_tile(path: str, index: int, tile: Tile, options: KernelOptions,
                        hook: Optional[Callable[[int], None]] = None) -> dict:
    """Compute tile ``index`` (rows [r0, r1) x columns [c0, c1)) of every kernel of the store
    at ``path``, write its chunks, fsync them, then record their SHA-256 in ``done``.
    ``hook(index)`` runs after the record (tests use it to slow a computation down)."""
    start = time.perf_counter()
    group, attrs, spec = _open(path)
    arch = load_arch(attrs)
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"the store {path} is computed on CUDA, but this Dask worker has no "
                           f"CUDA device")
    a = torch.from_numpy(np.asarray(group["x1"][tile.r0:tile.r1])).to(spec.device)
    b = None
    if not tile.diagonal:
        source = group["x1"] if spec.symmetric else group["x2"]
        b = torch.from_numpy(np.asarray(source[tile.c0:tile.c1])).to(spec.device)
    with intra_op_threads(options.threads):
        values = kernel_tile(arch, a, b, options, want_ntk="ntk" in spec.kernels)
    root = Path(path)
    coords = _chunk(tile, spec.tile)
    digests = []
    for name in spec.kernels:
        block = np.ascontiguousarray(values[name].detach().cpu().numpy().astype(spec.dtype,
                                                                                 copy=False))
        if not np.isfinite(block).all():
            raise FloatingPointError(f"{name} tile rows {tile.r0}:{tile.r1}, columns "
                                     f"{tile.c0}:{tile.c1} has non-finite values")
        group[name][tile.r0:tile.r1, tile.c0:tile.c1] = block
        fsync_chunk(root, name, group[name], coords)
        digests.append(digest(block))
    group["done"][index] = np.stack(digests)
    fsync_chunk(root, "done", group["done"], (index, 0, 0))
    if hook is not None:
        hook(index)
    return {"index": index, "seconds": time.perf_counter() - start}


def tile_matches(group: zarr.Group, spec: StoreSpec, index: int, tile: Tile) -> bool:
    """True when tile ``index`` has a done record and every kernel chunk of it hashes to the
    recorded digest (read only)."""
    recorded = np.asarray(group["done"][index])
    if not recorded.any():
        return False
    for k, name in enumerate(spec.kernels):
        try:
            block = np.asarray(group[name][tile.r0:tile.r1, tile.c0:tile.c1])
        except Exception:  # an unreadable (truncated, garbled) chunk
            return False
        if not np.array_equal(digest(block), recorded[k]):
            return False
    return True


def verify_stored_tile(path: str, index: int, tile: Tile) -> bool:
    """``tile_matches`` on the store at ``path``; a record that does not match is cleared (the
    tile counts as not done)."""
    group, _, spec = _open(path)
    if tile_matches(group, spec, index, tile):
        return True
    if np.asarray(group["done"][index]).any():
        group["done"][index] = 0
        fsync_chunk(Path(path), "done", group["done"], (index, 0, 0))
    return False
