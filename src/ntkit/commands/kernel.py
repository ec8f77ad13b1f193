"""``ntkit kernel``: NNGP/NTK matrices of an architecture on a dataset, saved as ``.npz``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..kernels import Kernels
from .common import Context, UsageError

def compute_kernels(arch, x1: torch.Tensor, x2: Optional[torch.Tensor] = None,
                    get: Sequence[str] = ("nngp", "ntk"), batch_size: Optional[int] = None,
                    ctx: Optional[Context] = None, desc: str = "kernel") -> Kernels:
    """``arch.kernel(x1, x2, get=get)`` with a progress bar over the engine's tiles."""
    ctx = ctx or Context(quiet=True)
    with ctx.progress(total=None, desc=desc, unit="tile") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        return arch.kernel(x1, x2, get=tuple(get), batch_size=batch_size, progress=progress)


def _inputs(ctx: Context, arch, data: str, split: str, n: Optional[int]):
    """(dataset, x1, x2) of a split: train -> (train, None); test -> (test, train)."""
    from ..data.registry import inputs_for, load_dataset

    ds = load_dataset(data, ctx.data_dir, n_train=n, n_test=n, dtype=ctx.np_dtype, seed=ctx.seed)
    device = ctx.torch_device()
    xtr = torch.from_numpy(np.ascontiguousarray(inputs_for(arch, ds, ds.x_train))).to(device)
    if split == "test":
        x1 = torch.from_numpy(np.ascontiguousarray(inputs_for(arch, ds, ds.x_test))).to(device)
        return ds, x1, xtr
    return ds, xtr, None


def run_kernel_store(ctx: Context, arch, arch_text: str, data: str, out: Path, split: str,
                     n: Optional[int], get: Tuple[str, ...], tile: Optional[int],
                     scheduler: Optional[str]) -> dict:
    """The kernels as tiles of a Zarr store (``ntkit.scale.compute_kernel``): on the Dask
    cluster at ``scheduler`` or a local one; an existing store of the same computation is
    resumed (another architecture or other inputs are refused). Returns ``store_info``."""
    from ..scale import compute_kernel
    from ..scale.store import NotAKernelStore, StoreMismatch

    ds, x1, x2 = _inputs(ctx, arch, data, split, n)
    ctx.say(f"kernel: {arch_text} on {ds.name} ({split}: {x1.shape[0]} x "
            f"{(x2 if x2 is not None else x1).shape[0]}, {ctx.dtype}) -> {out}")
    start = time.perf_counter()
    try:
        compute_kernel(arch, x1, x2, store=out, tile=tile, client=scheduler, get=get,
                       progress=not ctx.quiet)
    except (NotAKernelStore, StoreMismatch) as err:  # the user's choice of --out: a usage error
        raise UsageError(f"{out}: {err}") from None
    info = store_info(out)
    ctx.say(f"wrote {', '.join(get)} tiles to {out} in {time.perf_counter() - start:.2f} s "
            f"({info['tiles_done']}/{info['tiles']} tiles)")
    return info


def store_info(store: Path) -> dict:
    """What a Zarr kernel store holds (``ntkit.scale.open_kernel``) and how complete it is."""
    from ..scale import open_kernel
    from ..scale.store import NotAKernelStore

    try:
        k = open_kernel(store)
    except NotAKernelStore as err:
        raise UsageError(f"{store}: {err}") from None
    meta = {key: v for key, v in k.meta.items() if isinstance(v, (str, int, float, bool, list))}
    return {"store": str(store), "complete": bool(k.complete), "tiles": int(len(k.tiles)),
            "tiles_done": int(np.asarray(k.done).sum()), "meta": meta}


def run_kernel(ctx: Context, arch, arch_text: str, data: str, out: Path, split: str,
               n: Optional[int], get: Tuple[str, ...], batch_size: Optional[int]) -> dict:
    """Compute and save. ``split='train'``: K(train, train); ``split='test'``: K(test, train)
    (the matrix a prediction needs). ``n`` keeps n rows of each split. Returns a summary."""
    ds, x1, x2 = _inputs(ctx, arch, data, split, n)
    device = x1.device
    ctx.say(f"kernel: {arch_text} on {ds.name} ({split}: {x1.shape[0]} x "
            f"{(x2 if x2 is not None else x1).shape[0]}, {ctx.dtype}, {ctx.device})")
    start = time.perf_counter()
    k = compute_kernels(arch, x1, x2, get=get, batch_size=batch_size, ctx=ctx,
                        desc=f"{'+'.join(get)} {split}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    arrays = {name: value for name, value in k.numpy().items() if name in get}
    arrays["y_rows"] = ds.y_train if split == "train" else ds.y_test
    arrays["y_cols"] = ds.y_train
    meta = {"arch": arch_text, "data": ds.name, "split": split, "dtype": ctx.dtype,
            "rows": int(x1.shape[0]), "cols": int((x2 if x2 is not None else x1).shape[0]),
            "seconds": round(seconds, 4)}
    np.savez(out, **arrays, meta=np.array(json.dumps(meta)))
    ctx.say(f"wrote {', '.join(sorted(arrays))} to {out} in {seconds:.2f} s")
    return meta
