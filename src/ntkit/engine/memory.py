"""Whether the assembled kernel matrices fit in memory, checked before they are allocated.

A 60,000 x 60,000 float32 kernel is 14.4 GB; NNGP and NTK together do not fit a 24 GB machine.
Rather than torch's allocator error, ``check_result_fits`` names the sizes and the ways out
(fewer kernels or inputs at once, or ``ntkit.scale.compute_kernel``, which writes the tiles to
a Zarr store on disk and computes them on a Dask cluster).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch


def available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (bytes), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def check_result_fits(shapes: Dict[str, Tuple[int, ...]], like: torch.Tensor) -> None:
    """MemoryError when the matrices {name: shape} of ``like``'s dtype would not fit in the
    CPU memory available now (other devices: left to their allocator)."""
    if like.device.type != "cpu":
        return
    free = available_bytes()
    if free is None:
        return
    per = like.element_size()
    need = 0
    for shape in shapes.values():
        count = 1
        for s in shape:
            count *= int(s)
        need += count * per
    if need <= free:
        return
    sizes = ", ".join(f"{name} {' x '.join(str(s) for s in shape)}" for name, shape in shapes.items())
    raise MemoryError(
        f"the kernel matrices ({sizes}, {str(like.dtype).replace('torch.', '')}) need "
        f"{_size(need)} but only {_size(free)} of memory is available now: compute "
        f"fewer at once (get='ntk' alone, or a subset of the inputs), or use "
        f"ntkit.scale.compute_kernel, which writes the tiles to a Zarr store on disk and "
        f"computes them on a Dask cluster")
