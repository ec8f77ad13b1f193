"""Benchmark: ntkit.scale.compute_kernel, a depth-3 ReLU MLP on d = 784, with 1 and 2 Dask
worker processes (LocalCluster, one thread each).

Inputs: seeded standard-normal vectors of dimension 784 (synthetic, the shape of MNIST
images), float32, x1 against itself (upper-triangle tiles). Prints one JSON object: per worker
count the cluster start time, the computation time (store creation + all tiles), tiles/s and
kernel entries/s, the peak resident memory of each worker, and the speed-up from 1 to 2
workers; plus the time to check a finished store's digests on resume (no tile recomputed),
and the n whose kernel would take one day at the measured rates (here, and on 100 workers
assuming linear scaling from the 1-worker rate).

    .venv/bin/python benchmarks/scale_kernel.py [--n 4000] [--tile 500] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import cloudpickle

import _rss
from fc_kernel import D, arch  # the same depth-3 ReLU MLP as the in-memory benchmark
from ntkit.scale import compute_kernel

cloudpickle.register_pickle_by_value(_rss)  # the workers cannot import benchmarks/


def run(n: int, tile: int, workers: int, root: Path) -> dict:
    from distributed import Client, LocalCluster
    x = np.random.default_rng(0).standard_normal((n, D)).astype(np.float32)
    store = root / f"k{workers}.zarr"
    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        k = compute_kernel(arch(), x, store=store, tile=tile, client=client, progress=False)
        seconds = time.perf_counter() - t1
        t2 = time.perf_counter()
        again = compute_kernel(arch(), x, store=store, client=client, progress=False)
        resume_check = time.perf_counter() - t2
        rss = sorted(client.run(_rss.peak_rss_mb).values())
    assert k.complete and again.run.computed == []
    tiles = len(k.tiles)
    return {"workers": workers, "tiles": tiles, "cluster_start_s": round(started, 3),
            "seconds": round(seconds, 3), "tiles_per_s": round(tiles / seconds, 3),
            "entries_per_s": round(n * (n + 1) / 2 / seconds, 1),
            "resume_check_s": round(resume_check, 3),
            "worker_peak_rss_mb": [round(r, 1) for r in rss]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--tile", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ntkit-scale-bench-"))
    try:
        results = [run(args.n, args.tile, w, root) for w in args.workers]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"benchmark": "scale_kernel", "inputs": f"standard normal, n={args.n}, d={D}, "
           "float32, x1 against itself", "arch": "depth-3 ReLU MLP (NNGP+NTK)",
           "tile": args.tile, "runs": results}
    by = {r["workers"]: r for r in results}
    if 1 in by and 2 in by:
        out["speedup_1_to_2_workers"] = round(by[1]["seconds"] / by[2]["seconds"], 3)
    # a symmetric kernel costs n(n+1)/2 entries: n for one day of work at the measured rates;
    # 100 workers assumed to scale linearly from the 1-worker rate (an upper bound)
    best = max(results, key=lambda r: r["entries_per_s"])
    per_worker = min(results, key=lambda r: r["workers"])
    rate_100 = per_worker["entries_per_s"] / per_worker["workers"] * 100
    out["n_for_one_day"] = {
        f"this_machine_{best['workers']}_workers": int((2 * best["entries_per_s"] * 86400) ** 0.5),
        "cluster_100_workers_linear": int((2 * rate_100 * 86400) ** 0.5)}
    out["store_bytes_per_n_squared"] = 4 * 2 / 2  # float32, NNGP + NTK, upper triangle
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
