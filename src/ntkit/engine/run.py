"""``compute_tiles``: run a plan of tiles and assemble the kernel matrices."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from .memory import check_result_fits
from .options import KernelOptions
from .plan import Tile, plan_tiles
from .scale import SCALE_KEY, mul_pow2, scale_key

#: tile_fn(a, b, options) -> {name: tensor (ra, rb, *tail)}; b is None on a diagonal tile.
#: A tile may add SCALE_KEY: a 0-dim integer tensor e, its matrices then being 2**e times the
#: true values (``compute_tiles`` brings all tiles to a common scale); and ``scale_key(name)``
#: for a matrix with a scale of its own.
TileFn = Callable[[torch.Tensor, Optional[torch.Tensor], KernelOptions], Dict[str, torch.Tensor]]
#: progress(done_tiles, total_tiles)
Progress = Callable[[int, int], None]


def transpose_pair(block: torch.Tensor) -> torch.Tensor:
    """The (j, i) tile of a symmetric kernel from its (i, j) tile (trailing axes kept)."""
    return block.transpose(0, 1)


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (None: unchanged)."""
    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def compute_tile(tile_fn: TileFn, x1: torch.Tensor, x2: Optional[torch.Tensor], tile: Tile,
                 options: KernelOptions) -> Dict[str, torch.Tensor]:
    """One tile: ``tile_fn`` on rows [r0, r1) of x1 and columns [c0, c1) of x2 (x1 if None)."""
    a = x1[tile.r0:tile.r1]
    if tile.diagonal:
        return tile_fn(a, None, options)
    other = x1 if x2 is None else x2
    return tile_fn(a, other[tile.c0:tile.c1], options)


def compute_tiles(tile_fn: TileFn, x1: torch.Tensor, x2: Optional[torch.Tensor],
                  rows: int, cols: Optional[int] = None,
                  options: Optional[KernelOptions] = None,
                  progress: Optional[Progress] = None,
                  mirror: Callable[[torch.Tensor], torch.Tensor] = transpose_pair,
                  tiles: Optional[Sequence[Tile]] = None) -> Dict[str, torch.Tensor]:
    """The kernels {name: (n1, n2, ...)} of x1 (n1, ...) against x2 (n2, ...), tile by tile.

    With x2=None only the tiles on and above the diagonal are computed; each off-diagonal one is
    mirrored (``mirror``: the (j, i) tile from the (i, j) tile). Tiles are computed in the
    plan's order by ``tile_fn`` (see ``ntkit.engine``), ``progress(done, total)`` after each.
    A tile's values depend only on its rows, its columns and ``options``: whatever the plan,
    the assembled matrices agree to rounding, and the same plan gives the same bits.

    Scaled tiles: when tiles return SCALE_KEY (e, 0-dim), the result holds SCALE_KEY = the
    largest tile scale E and every tile's matrices times 2**(e - E) (exact; values of a tile
    far below the largest may underflow to 0), so that the true kernels are 2**E times the
    returned matrices. A matrix with its own ``scale_key(name)`` is brought to its own
    largest scale, returned under that key.
    """
    options = options or KernelOptions()
    n1 = x1.shape[0]
    n2 = None if x2 is None else x2.shape[0]
    plan = list(tiles) if tiles is not None else plan_tiles(n1, n2, rows, cols)
    out: Dict[str, torch.Tensor] = {}
    total = len(plan)
    scales = []
    with intra_op_threads(options.threads):
        for done, tile in enumerate(plan, 1):
            values = dict(compute_tile(tile_fn, x1, x2, tile, options))
            if SCALE_KEY in values:
                exps = {SCALE_KEY: int(values.pop(SCALE_KEY))}
                for name in list(values):
                    if scale_key(name) in values:
                        exps[name] = int(values.pop(scale_key(name)))
                scales.append((tile, exps))
            if not out and values:  # the first tile tells the names, dtype and trailing axes
                size2 = n1 if n2 is None else n2
                shapes = {name: (n1, size2) + tuple(block.shape[2:])
                          for name, block in values.items()}
                check_result_fits(shapes, next(iter(values.values())))
                for name, block in values.items():
                    out[name] = block.new_empty(shapes[name])
            for name, block in values.items():
                dest = out[name]
                dest[tile.r0:tile.r1, tile.c0:tile.c1] = block
                if n2 is None and not tile.diagonal:
                    dest[tile.c0:tile.c1, tile.r0:tile.r1] = mirror(block)
            if progress is not None:
                progress(done, total)
    if scales:
        _common_scale(out, scales, n2 is None)
    return out


def _common_scale(out: Dict[str, torch.Tensor], scales, symmetric: bool) -> None:
    """In place: each tile's entries of a matrix times 2**(e - E), e the tile's scale of that
    matrix (its own, or SCALE_KEY's) and E the largest such e over the tiles; the Es are
    returned under the same keys (0-dim int64)."""
    keys = list(scales[0][1])
    tops = {key: max(exps[key] for _, exps in scales) for key in keys}
    for tile, exps in scales:
        for name, dest in out.items():
            key = name if name in exps else SCALE_KEY
            shift = exps[key] - tops[key]
            if shift == 0:
                continue
            block = dest[tile.r0:tile.r1, tile.c0:tile.c1]
            block.copy_(mul_pow2(block, shift))
            if symmetric and not tile.diagonal:
                mirrored = dest[tile.c0:tile.c1, tile.r0:tile.r1]
                mirrored.copy_(mul_pow2(mirrored, shift))
    for key, top in tops.items():
        out[key if key == SCALE_KEY else scale_key(key)] = torch.tensor(top, dtype=torch.int64)
