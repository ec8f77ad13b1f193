"""Benchmark: NTK regression on full MNIST past one machine's memory (ntkit.scale), what
``ntkit kernel --out K.zarr`` + ``ntkit fit --kernel K.zarr`` do, phase by phase.

Depth-3 ReLU MLP (``fc:depth=3``: W_std=√2, b_std=0.05, NTK parameterization), float32, all
60,000 training images (flat 784, pixels in [0, 1]) against the 10,000 test images:

1. kernel: K(train, train) NTK as Zarr tiles (``compute_kernel``, upper triangle) on a
   LocalCluster of ``--workers`` single-threaded worker processes;
2. solve: (K + μI)α = onehot(y), μ = diag_reg·mean(diag K), by PCG with a Nyström
   preconditioner on ``--centres`` columns (``solve_kernel``), the products streamed from the
   store in this process (as ``ntkit fit --solver cg`` does); α is kept after every iteration
   up to 64 (then 128, 256, ...) and at the end;
3. predict: K(test, train)[α snapshots] recomputed tile by tile in this process
   (``predict_recomputed``), never stored: test accuracy after each kept iteration, i.e. the
   iterations (and residual) the accuracy needs;
4. exact: the in-memory solve (``nk.NTKClassifier(dtype="float32")``, what ``ntkit fit
   --n-train 20000`` does) on a 20,000-image subset, in a subprocess (its own peak memory).

Prints (and writes to ``--out`` after every phase) one JSON object: accuracy, seconds per phase,
peak resident memory of this process and of each worker, CG iterations and residuals, the
machine's load (``uptime``) at the start and end. The store is deleted afterwards
(``--keep-store`` keeps it).

    nice python benchmarks/scale_mnist.py [--n-train 60000] [--tile 2048] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
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

ARCH = "fc:depth=3"


def load(n_train, n_test, data_dir):
    from ntkit.commands.archspec import parse_arch
    from ntkit.data.registry import inputs_for, load_dataset
    arch = parse_arch(ARCH)
    ds = load_dataset("mnist", data_dir, n_train=n_train, n_test=n_test, dtype=np.float32)
    return (arch, ds, np.ascontiguousarray(inputs_for(arch, ds, ds.x_train)),
            np.ascontiguousarray(inputs_for(arch, ds, ds.x_test)))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def snapshot_iterations(max_iter: int):
    """Every iteration (alpha kept: n x 10 float64 each) up to 64, then powers of two."""
    its, k = set(range(1, min(max_iter, 64) + 1)), 128
    while k <= max_iter:
        its.add(k)
        k *= 2
    return its


def run_scale(args, out: dict, save) -> None:
    from distributed import Client, LocalCluster

    from ntkit.scale import compute_kernel, open_kernel, predict_recomputed, solve_kernel

    arch, ds, xtr, xte = load(args.n_train, args.n_test, args.data_dir)
    onehot = np.eye(10)[ds.y_train]
    root = Path(args.store or tempfile.mkdtemp(prefix="ntkit-mnist-", dir="/tmp"))
    store = root / "K.zarr"
    out["scale"] = res = {"n_train": len(xtr), "n_test": len(xte), "tile": args.tile,
                          "workers": args.workers, "store": str(store)}
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            t = time.perf_counter()
            if args.reuse_store:  # a complete store from an earlier run, its digests unchecked
                k = open_kernel(store)
                if not k.complete:
                    raise SystemExit(f"--reuse-store: {store} is not complete")
                res["kernel_reused"] = True
            else:
                k = compute_kernel(arch, xtr, store=store, tile=args.tile, client=client,
                                   get="ntk", progress=True)
                res["kernel_tiles_computed"] = len(k.run.computed)  # < tiles: resumed
            res["kernel_s"] = round(time.perf_counter() - t, 2)
            res["kernel_tiles"] = len(k.tiles)
            res["store_bytes"] = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
            save()
            snaps = {}
            keep = snapshot_iterations(args.max_iter)

            def callback(it, alpha):
                if it in keep:
                    snaps[it] = alpha.copy()
            t = time.perf_counter()
            sol = solve_kernel(store, onehot, args.diag_reg, centres=args.centres, tol=args.tol,
                               max_iter=args.max_iter, progress=False, callback=callback)
            res["solve_s"] = round(time.perf_counter() - t, 2)
            res["solve_setup_s"] = round(sol.seconds["setup"], 2)
            snaps[sol.iterations] = sol.alpha
            res.update(diag_reg=args.diag_reg, ridge=sol.ridge, centres=args.centres,
                       preconditioner_rank=sol.preconditioner_rank, cg_tol=args.tol,
                       cg_iterations=sol.iterations, cg_converged=sol.converged,
                       cg_residuals=[float(f"{r:.4g}") for r in sol.residuals])
            save()
            its = sorted(snaps)
            t = time.perf_counter()
            scores = predict_recomputed(arch, xte, xtr, np.concatenate([snaps[i] for i in its],
                                                                       axis=1),
                                        rows=1000, tile=1000, progress=False)
            res["predict_s"] = round(time.perf_counter() - t, 2)
            acc = {}
            for j, it in enumerate(its):
                pred = scores[:, 10 * j:10 * (j + 1)].argmax(axis=1)
                acc[str(it)] = float(np.mean(pred == ds.y_test))
            res["accuracy_by_iteration"] = acc
            res["residual_by_iteration"] = {str(i): float(f"{sol.residuals[i]:.4g}") for i in its}
            res["test_accuracy"] = acc[str(sol.iterations)]
            res["worker_peak_rss_mb"] = sorted(round(v, 1) for v in
                                               client.run(_rss.peak_rss_mb).values())
        res["client_peak_rss_mb"] = round(_rss.peak_rss_mb(), 1)
        res["total_s"] = round(res["kernel_s"] + res["solve_s"] + res["predict_s"], 2)
        res["load"] = uptime()
        save()
    finally:
        if not args.keep_store:
            shutil.rmtree(store, ignore_errors=True)
            if not args.store:
                shutil.rmtree(root, ignore_errors=True)


def run_exact(args) -> dict:
    """In this process: the in-memory NTKClassifier on ``--exact-n`` training images."""
    import ntkit as nk
    arch, ds, xtr, xte = load(args.exact_n, args.n_test, args.data_dir)
    t = time.perf_counter()
    clf = nk.NTKClassifier(arch=arch, diag_reg=args.diag_reg, dtype="float32").fit(xtr,
                                                                                   ds.y_train)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    acc = float(np.mean(clf.predict(xte) == ds.y_test))
    return {"n_train": len(xtr), "n_test": len(xte), "diag_reg": args.diag_reg,
            "test_accuracy": acc, "fit_s": round(fit_s, 2),
            "predict_s": round(time.perf_counter() - t, 2),
            "peak_rss_mb": round(_rss.peak_rss_mb(), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=60000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--exact-n", type=int, default=20000)
    p.add_argument("--tile", type=int, default=None, help="default: compute_kernel's")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--diag-reg", type=float, default=1e-2)
    p.add_argument("--centres", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--phases", nargs="+", default=["scale", "exact"],
                   choices=["scale", "exact", "exact-inline"])
    p.add_argument("--store", default=None, help="folder for the store (default: a /tmp dir)")
    p.add_argument("--keep-store", action="store_true")
    p.add_argument("--reuse-store", action="store_true",
                   help="with --store: use its complete kernel as is (no digest check)")
    p.add_argument("--data-dir", default=None, help="default: ntkit's (../shared/data)")
    p.add_argument("--out", default=None, help="also write the JSON here after every phase")
    args = p.parse_args()
    import logging
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.phases == ["exact-inline"]:
        print(json.dumps(run_exact(args)))
        return
    out = {"benchmark": "scale_mnist", "arch": ARCH + " (NTK, float32)",
           "inputs": "MNIST (shared/data/mnist), flat 784, pixels / 255", "cpus": os.cpu_count(),
           "load_start": uptime()}

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))
    save()
    if "scale" in args.phases:
        run_scale(args, out, save)
    if "exact" in args.phases:
        cmd = [sys.executable, __file__, "--phases", "exact-inline", "--exact-n",
               str(args.exact_n), "--n-test", str(args.n_test), "--diag-reg", str(args.diag_reg)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        done = subprocess.run(cmd, capture_output=True, text=True)
        out["exact_subset"] = (json.loads(done.stdout.strip().splitlines()[-1])
                               if done.returncode == 0 else {"error": done.stderr[-2000:]})
    out["load_end"] = uptime()
    save()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
