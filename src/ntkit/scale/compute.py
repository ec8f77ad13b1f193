"""``compute_kernel``: an architecture's kernel matrices as tiles in a Zarr store, computed by
Dask tasks, resumable."""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import zarr
from distributed import as_completed

from .._inputs import ArrayLike
from ..engine import KernelOptions
from ..layers.kernel_tile import check_kernel_inputs, regime, tile_side
from .cluster import check_client, dask_client
from .store import (KERNEL_NAMES, StoreSpec, as_kernel_dtype, bit_options, check_compatible,
                    check_device, done_digests, fingerprint, is_new_location, read_attrs, write_new)
from .tasks import compute_stored_tile, verify_stored_tile
from .view import RunReport, StoredKernel, open_kernel


# Default tile of a store of a flat (fully connected) kernel: the engine's in-memory tile (512)
# costs the same per entry to compute, but a 60,000-point store of it has 7,021 chunk files,
# Dask tasks and fsyncs instead of 465, and a pass over it reads 1 MB blocks instead of 16 MB.
STORE_FLAT_TILE = 2048


def default_tile(arch, x: torch.Tensor, options: KernelOptions) -> int:
    """The tile side of a new store: ``options.tile_size`` if set; ``STORE_FLAT_TILE`` for a
    flat architecture; else the engine's memory-bounded ``tile_side``."""
    if not options.tile_size and regime(arch, tuple(x.shape[1:])) == "flat":
        return STORE_FLAT_TILE
    return tile_side(arch, x, options)


log = logging.getLogger("ntkit.scale")


def _kernel_names(get) -> tuple:
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names or any(n not in KERNEL_NAMES for n in names):
        raise ValueError(f"get: expected 'nngp' and/or 'ntk', got {get!r}")
    return tuple(n for n in KERNEL_NAMES if n in names)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="tile", desc="kernel tiles")


def compute_kernel(arch, x1: ArrayLike, x2: Optional[ArrayLike] = None, *,
                   store: Union[str, os.PathLike], tile: Optional[int] = None,
                   client=None, get: Union[str, Sequence[str]] = ("nngp", "ntk"),
                   dtype=None, progress: bool = True, device: Optional[str] = None,
                   options: Optional[KernelOptions] = None,
                   tile_hook: Optional[Callable[[int], None]] = None) -> StoredKernel:
    """NNGP/NTK of ``arch`` between x1 (n1, ...) and x2 (n2, ...) (x2=None: x1 against itself,
    upper-triangle tiles only) written tile by tile into the Zarr store ``store``.

    The tiles are the kernel engine's (``ntkit.engine.plan_tiles`` with ``tile`` rows and
    columns; default ``default_tile``), one Dask task each
    (``ntkit.scale.tasks``), on ``client``: a ``distributed.Client``, a scheduler address, or
    None for a LocalCluster of one worker process per core started and closed by this call.

    An existing store is resumed: refused (``StoreMismatch``) unless it was made for the same
    architecture (repr), inputs (SHA-256), dtype, tile size, kernels and bit-relevant
    ``options``; its tiles marked done are checked against their digests on the workers, and
    only the tiles not done or failing the check are computed. Tiles are deterministic, so a
    resumed store is bit-identical to an uninterrupted one. ``dtype`` (float32/float64; None:
    the inputs', or the store's when resuming), ``tile`` and ``options`` (None: the store's when
    resuming, else ``KernelOptions.from_env()``) must then agree with the store.

    ``device="cuda"`` computes every tile on the worker's current CUDA device (a worker
    without one fails the task); the device is recorded, since its bits differ from the CPU's
    (None: "cpu", or the store's when resuming).
    ``tile_hook(index)`` runs on the worker after each tile is recorded (tests, monitoring).
    Returns ``open_kernel(store)`` with ``.run`` (a ``RunReport``) set.
    """
    start = time.perf_counter()
    path = Path(store)
    check_client(client)
    spec, options = _prepare(path, arch, x1, x2, tile, get, dtype, device, options)
    with dask_client(client) as c:
        log.info("kernel: Dask cluster of %d workers ready after %.1f s",
                 len(c.scheduler_info().get("workers", {})), time.perf_counter() - start)
        report = _run_tiles(c, path, spec.plan(), options, tile_hook, progress)
    report.seconds = time.perf_counter() - start
    log.info("kernel: %d tiles of %d x %d computed, %d found done (%d corrupt, recomputed) "
             "into %s in %.1f s", len(report.computed), spec.tile, spec.tile,
             len(report.reused), len(report.corrupt), path, report.seconds)
    result = open_kernel(path)
    result.run = report
    return result


def _prepare(path: Path, arch, x1, x2, tile, get, dtype, device, options):
    """Check the arguments against each other and an existing store; create the store if
    new (or left half-created). Returns (StoreSpec, KernelOptions)."""
    names = _kernel_names(get)
    existing = None if is_new_location(path) else read_attrs(path)["ntkit"]
    t1, t2 = check_kernel_inputs(arch, x1, x2)
    if dtype is None and existing is not None:
        dtype = existing["dtype"]
    if device is None:
        device = existing.get("device", "cpu") if existing is not None else "cpu"
    check_device(device)
    kdtype = as_kernel_dtype(t1.dtype if dtype is None else dtype)
    a1 = t1.detach().to("cpu", kdtype).numpy()
    a2 = None if t2 is None else t2.detach().to("cpu", kdtype).numpy()
    if options is None:
        options = (KernelOptions.from_env() if existing is None
                   else KernelOptions.from_env(**existing["options"]))
    if tile is None:
        tile = existing["tile"] if existing is not None else default_tile(arch, t1, options)
    if isinstance(tile, bool) or int(tile) != tile or int(tile) < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    spec = StoreSpec(n1=a1.shape[0], n2=None if a2 is None else a2.shape[0], tile=int(tile),
                     dtype=str(kdtype).replace("torch.", ""), kernels=names,
                     architecture=repr(arch), fingerprint=fingerprint(a1, a2),
                     options=bit_options(options), device=device)
    from .. import __version__
    if existing is not None:
        check_compatible(path, StoreSpec.from_attrs(existing), spec)
        if existing.get("ntkit_version") != __version__:
            warnings.warn(f"{path} was started by ntkit {existing.get('ntkit_version')}, "
                          f"resumed by {__version__}: tiles of the two versions may differ in "
                          f"their last bits", stacklevel=3)
    if existing is None or existing.get("state") != "ready":
        write_new(path, spec, arch, a1, a2, __version__)
    return spec, options


def _run_tiles(client, path: Path, plan, options: KernelOptions, hook, progress: bool
               ) -> RunReport:
    """Check the recorded tiles' digests, then compute the others, one task per tile."""
    report = RunReport()
    marked = np.flatnonzero(done_digests(zarr.open_group(str(path), mode="r"))
                            .reshape(len(plan), -1).any(axis=1)).tolist()
    where = str(path.resolve())
    if marked:
        checks = client.map(verify_stored_tile, [where] * len(marked), marked,
                            [plan[i] for i in marked], pure=False)
        valid = client.gather(checks)
        report.corrupt = [i for i, ok in zip(marked, valid) if not ok]
        report.reused = [i for i, ok in zip(marked, valid) if ok]
    todo = sorted(set(range(len(plan))) - set(report.reused))
    bar = _progress_bar(progress, len(plan), len(plan) - len(todo))
    futures = client.map(compute_stored_tile, [where] * len(todo), todo,
                         [plan[i] for i in todo], options=options, hook=hook, pure=False)
    try:
        for fut in as_completed(futures):
            report.computed.append(fut.result()["index"])
            if bar is not None:
                bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if bar is not None:
            bar.close()
    report.computed.sort()
    return report
