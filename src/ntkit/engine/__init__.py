"""The kernel engine: a kernel matrix as a plan of deterministic tiles.

Every kernel matrix in ntkit (infinite-width kernels of ``Sequential`` architectures on flat
or image inputs, empirical kernels of torch models, the command line's kernels) is computed
the same way:

1. ``plan_tiles`` cuts the (n1, n2) matrix into tiles, row range x column range; for a kernel
   of x1 against itself only the tiles on and above the diagonal.
2. A *tile function* ``tile_fn(a, b, options) -> {name: (ra, rb, ...)}`` computes one tile from
   the tile's rows of x1 (``a``) and columns of x2 (``b``; None for a diagonal tile of x1
   against itself). It is a pure function of its arguments (no module state), so a tile has
   the same bits whenever and wherever it is computed again; that is what lets a Dask worker
   compute it, or a resumed computation recompute it.
3. ``compute_tiles`` runs the plan, writes each tile into the result and mirrors off-diagonal
   tiles of symmetric kernels, reporting progress through a callback.

``KernelOptions`` carries what the tile functions may tune (memory budget, the native CPU
kernel, torch.compile, threads); environment variables only provide its defaults.
"""
from .options import KernelOptions
from .plan import Tile, plan_tiles
from .run import compute_tiles

__all__ = ["KernelOptions", "Tile", "plan_tiles", "compute_tiles"]
