"""``open_kernel``: what a kernel store holds, with its kernels as Dask arrays."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import dask.array as da
import numpy as np
import zarr

from ..engine import Tile
from .store import StoreSpec, done_digests, load_arch, read_attrs


@dataclass
class RunReport:
    """What one ``compute_kernel`` call did: tile indices (in plan order) it computed, those of
    them that were marked done but failed their checksum, and those it found done and valid."""

    computed: List[int] = field(default_factory=list)
    corrupt: List[int] = field(default_factory=list)
    reused: List[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class StoredKernel:
    """A kernel store: ``meta`` (format, architecture repr, dtype, ntkit version, input
    fingerprint, tile size, shapes, kernel names, options), ``tiles`` (the plan), ``done``
    (bool per tile: its digest is recorded; ``compute_kernel`` also checks the digests),
    ``complete``, and ``nngp`` / ``ntk`` as (n1, n2) Dask arrays (the full symmetric matrix
    for x1 against itself: the lower-triangle blocks are the stored upper ones transposed).
    ``run`` is set when returned by ``compute_kernel``."""

    path: Path
    meta: dict
    tiles: List[Tile]
    done: np.ndarray
    run: Optional[RunReport] = None

    @property
    def spec(self) -> StoreSpec:
        return StoreSpec.from_attrs(self.meta)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def architecture(self):
        """The stored architecture (unpickled: open only stores you trust)."""
        return load_arch(read_attrs(self.path))

    def verify(self) -> List[int]:
        """Indices of the tiles marked done whose chunks no longer hash to their recorded
        SHA-256 (read in this process; changes nothing: ``compute_kernel`` recomputes them)."""
        from .tasks import tile_matches
        group = zarr.open_group(str(self.path), mode="r")
        spec = self.spec
        return [i for i in np.flatnonzero(self.done).tolist()
                if not tile_matches(group, spec, i, self.tiles[i])]

    def kernel(self, name: str) -> da.Array:
        spec = self.spec
        if name not in spec.kernels:
            raise KeyError(f"{self.path} holds {list(spec.kernels)}, not {name!r}")
        if not self.complete:
            raise ValueError(f"{self.path} holds {int(self.done.sum())} of {len(self.tiles)} "
                             f"tiles; call compute_kernel with the same arguments to finish it")
        stored = da.from_zarr(zarr.open_group(str(self.path), mode="r")[name])
        if not spec.symmetric:
            return stored
        nb = len(stored.chunks[0])
        return da.block([[stored.blocks[i, j] if i <= j else stored.blocks[j, i].T
                          for j in range(nb)] for i in range(nb)])

    @property
    def nngp(self) -> da.Array:
        return self.kernel("nngp")

    @property
    def ntk(self) -> da.Array:
        return self.kernel("ntk")


def open_kernel(store: Union[str, os.PathLike]) -> StoredKernel:
    """The kernel store at ``store`` (see ``ntkit.scale.store``); NotAKernelStore (a ValueError)
    if it is not one."""
    path = Path(store)
    attrs = read_attrs(path)
    meta = {k: v for k, v in attrs["ntkit"].items() if k != "architecture_pickle"}
    spec = StoreSpec.from_attrs(meta)
    if meta.get("state") != "ready":
        done = np.zeros(len(spec.plan()), dtype=bool)
    else:
        done = done_digests(zarr.open_group(str(path), mode="r")).reshape(len(spec.plan()), -1)
        done = done.any(axis=1)
    return StoredKernel(path=path, meta=meta, tiles=spec.plan(), done=done)
