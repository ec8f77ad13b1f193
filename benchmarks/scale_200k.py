"""Benchmark: what n = 200,000 inputs of dimension 784 would cost through ntkit.scale, from
measured samples, and the n at which kernel and solve would each take a day.

Inputs: the 70,000 MNIST images (train + test, pixels / 255, flat 784) followed by 130,000
augmented copies (image ``src[i]`` of those 70,000 shifted by (dy[i], dx[i]) in {-2..2}²
pixels, zeros shifted in; src, dy, dx drawn with seed 0). Only the rows a measurement needs are
built. Architecture: depth-3 ReLU MLP (``fc:depth=3``), NTK, float32, tiles of ``--tile``.

Measured (each with a LocalCluster of 1 and of 2 single-threaded worker processes):
* kernel: ``compute_kernel`` of a sample of the full plan's off-diagonal tiles: rows of
  ``--row-blocks`` random tile rows against ``--col-blocks`` random tile columns of the 200,000
  (a rectangular store of row-blocks x col-blocks tiles, Zarr writes, fsync and digests
  included) -> tiles/s; the 200,000 x 200,000 upper triangle has (B(B+1)/2) tiles, B = n/tile;
* solve: a symmetric store of the first ``--subset`` inputs (a random sample), then the PCG
  solve of 10 one-hot-like right-hand sides on it (``solve_kernel``, Nyström centres
  ``--centres``) with the products as Dask tasks over the stored bands: seconds per iteration
  per stored kernel entry, and the iterations needed at tol 1e-3;
* peak resident memory of each worker.
Extrapolated: kernel time and one CG iteration at n = 200,000 (both scale as n²; a product
reads the n(n+1)/2 stored entries once), and the n for one day of each, here (the better of 1
and 2 workers) and on 100 workers (linear scaling from the 1-worker rate: an upper bound; it
assumes storage that feeds every worker at this rate). Iterations per solve are assumed to stay
at the measured count (``--iterations`` overrides; the full-MNIST run, benchmarks/scale_mnist.py,
measures them at n = 60,000).

    nice python benchmarks/scale_200k.py [--tile 500] [--subset 2000]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cloudpickle

import _rss

cloudpickle.register_pickle_by_value(_rss)  # the workers cannot import benchmarks/

N = 200_000
DAY = 86_400.0


class Inputs:
    """Row i of the 200,000 inputs (see the module doc), built on demand."""

    def __init__(self, data_dir=None, seed: int = 0):
        from ntkit.data.registry import load_dataset
        ds = load_dataset("mnist", data_dir, dtype=np.float32)
        self.images = np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 28, 28)
        rng = np.random.default_rng(seed)
        extra = N - len(self.images)
        self.src = rng.integers(0, len(self.images), extra)
        self.shift = rng.integers(-2, 3, (extra, 2))

    def rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), 784), dtype=np.float32)
        base = len(self.images)
        for j, i in enumerate(idx):
            if i < base:
                out[j] = self.images[i].reshape(-1)
                continue
            img = self.images[self.src[i - base]]
            dy, dx = self.shift[i - base]
            moved = np.zeros_like(img)
            moved[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
                img[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
            out[j] = moved.reshape(-1)
        return out


def say(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def measure(workers: int, args, data: Inputs, root: Path) -> dict:
    from distributed import Client, LocalCluster

    from ntkit.commands.archspec import parse_arch
    from ntkit.scale import compute_kernel, solve_kernel

    arch = parse_arch("fc:depth=3")
    t, blocks = args.tile, N // args.tile
    rng = np.random.default_rng(1)
    rb = rng.choice(blocks, args.row_blocks, replace=False)
    cb = rng.choice(np.setdiff1d(np.arange(blocks), rb), args.col_blocks, replace=False)
    x1 = data.rows(np.concatenate([np.arange(b * t, (b + 1) * t) for b in rb]))
    x2 = data.rows(np.concatenate([np.arange(b * t, (b + 1) * t) for b in cb]))
    sub = data.rows(np.sort(rng.choice(N, args.subset, replace=False)))
    y = np.eye(10)[rng.integers(0, 10, args.subset)]
    out = {"workers": workers}
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        out["cluster_start_s"] = round(time.perf_counter() - start, 2)
        say(f"{workers} worker(s) started")
        # warm-up (imports, first-call costs on each worker), not timed
        compute_kernel(arch, x1[:8 * workers], x2[:8], store=root / f"warm{workers}.zarr",
                       tile=8, client=client, get="ntk", progress=False)
        s = time.perf_counter()
        k = compute_kernel(arch, x1, x2, store=root / f"tiles{workers}.zarr", tile=t,
                           client=client, get="ntk", progress=False)
        sec = time.perf_counter() - s
        out.update(sample_tiles=len(k.tiles), kernel_sample_s=round(sec, 2),
                   tiles_per_s=round(len(k.tiles) / sec, 4))
        say(f"{workers} worker(s): {len(k.tiles)} sample tiles in {sec:.1f} s")
        s = time.perf_counter()
        sym = root / f"sub{workers}.zarr"
        compute_kernel(arch, sub, store=sym, tile=t, client=client, get="ntk", progress=False)
        out["subset_kernel_s"] = round(time.perf_counter() - s, 2)
        res = solve_kernel(sym, y, diag_reg=1e-2, centres=min(args.centres, args.subset),
                           tol=1e-3, max_iter=200, client=client)
        per_it = res.seconds["iterations"] / max(res.iterations, 1)
        entries = args.subset * (args.subset + 1) / 2
        out.update(subset=args.subset, cg_iterations=res.iterations,
                   cg_residual=float(res.residuals[-1]),
                   cg_setup_s=round(res.seconds["setup"], 2),
                   cg_seconds_per_iteration=round(per_it, 4),
                   cg_entries_per_s=round(entries / per_it, 1),
                   worker_peak_rss_mb=sorted(round(v, 1) for v in
                                             client.run(_rss.peak_rss_mb).values()))
    return out


def extrapolate(runs: dict, args) -> dict:
    t = args.tile
    tiles = (N / t) * (N / t + 1) / 2
    best = max(runs.values(), key=lambda r: r["tiles_per_s"])
    one = runs[min(runs)]
    best_cg = max(runs.values(), key=lambda r: r["cg_entries_per_s"])
    iters = args.iterations or max(r["cg_iterations"] for r in runs.values())
    entries = N * (N + 1) / 2

    def n_for(seconds_per_entry: float) -> int:  # n(n+1)/2 entries in one day
        return int(math.sqrt(2 * DAY / seconds_per_entry))
    kernel_entry_s = 1.0 / (best["tiles_per_s"] * t * t)
    kernel_entry_s_100 = 1.0 / (one["tiles_per_s"] / one["workers"] * 100 * t * t)
    solve_entry_s = iters / best_cg["cg_entries_per_s"]
    solve_entry_s_100 = iters / (one["cg_entries_per_s"] / one["workers"] * 100)
    return {
        "n": N, "tiles": int(tiles), "store_bytes_float32": int(entries * 4),
        "kernel_s_here": round(tiles / best["tiles_per_s"], 1),
        "kernel_s_100_workers": round(tiles / (one["tiles_per_s"] / one["workers"] * 100), 1),
        "cg_iterations_assumed": iters,
        "cg_iteration_s_here": round(entries / best_cg["cg_entries_per_s"], 1),
        "solve_s_here": round(entries * solve_entry_s, 1),
        "solve_s_100_workers": round(entries * solve_entry_s_100, 1),
        "n_for_one_day": {"kernel_here": n_for(kernel_entry_s),
                          "kernel_100_workers": n_for(kernel_entry_s_100),
                          "solve_here": n_for(solve_entry_s),
                          "solve_100_workers": n_for(solve_entry_s_100)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tile", type=int, default=500)
    p.add_argument("--row-blocks", type=int, default=2)
    p.add_argument("--col-blocks", type=int, default=2)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--centres", type=int, default=500)
    p.add_argument("--iterations", type=int, default=None,
                   help="CG iterations assumed at n = 200,000 (default: the measured count)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    data = Inputs(args.data_dir)
    root = Path(tempfile.mkdtemp(prefix="ntkit-200k-", dir="/tmp"))
    try:
        runs = {w: measure(w, args, data, root) for w in args.workers}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"benchmark": "scale_200k", "inputs": "MNIST train+test (70,000) + 130,000 copies "
           "shifted by up to 2 pixels, flat 784, float32", "arch": "fc:depth=3 NTK",
           "tile": args.tile, "load_start": load, "runs": list(runs.values())}
    if 1 in runs and 2 in runs:
        out["kernel_speedup_1_to_2_workers"] = round(runs[2]["tiles_per_s"]
                                                     / runs[1]["tiles_per_s"], 3)
        out["cg_speedup_1_to_2_workers"] = round(runs[2]["cg_entries_per_s"]
                                                 / runs[1]["cg_entries_per_s"], 3)
    out["extrapolated"] = extrapolate(runs, args)
    out["load_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
