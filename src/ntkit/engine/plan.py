"""Tiles of a kernel matrix: row range x column range."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class Tile:
    """Rows [r0, r1) of x1 against columns [c0, c1) of x2.

    ``diagonal`` marks a tile of x1 against itself on the diagonal (r0 == c0, r1 == c1): its
    tile function gets b=None and computes the whole square (both triangles)."""

    r0: int
    r1: int
    c0: int
    c1: int
    diagonal: bool = False

    @property
    def shape(self):
        return (self.r1 - self.r0, self.c1 - self.c0)


def _check_size(v: int, name: str) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def plan_tiles(n1: int, n2: Optional[int], rows: int, cols: Optional[int] = None) -> List[Tile]:
    """Tiles of at most ``rows`` x ``cols`` covering an (n1, n2) matrix, in row-major order.

    ``n2=None`` plans a kernel of x1 against itself: the same cuts on both axes, and only the
    tiles on and above the diagonal (the others are mirrors).
    """
    n1 = _check_size(n1, "n1")
    rows = _check_size(rows, "tile rows")
    symmetric = n2 is None
    cols = rows if (cols is None or symmetric) else _check_size(cols, "tile cols")
    n2 = n1 if symmetric else _check_size(n2, "n2")
    tiles = []
    for r0 in range(0, n1, rows):
        r1 = min(r0 + rows, n1)
        for c0 in range(r0 if symmetric else 0, n2, cols):
            c1 = min(c0 + cols, n2)
            tiles.append(Tile(r0, r1, c0, c1, diagonal=symmetric and c0 == r0))
    return tiles
