"""Speed and memory of the convolutional NTK (CNTK-V and CNTK-GAP), with neural-tangents
side by side in the same run, and the memory/compute floor. Prints JSON.

    .venv/bin/python benchmarks/conv_kernel.py                       # CPU, float32 + float64
    .venv/bin/python benchmarks/conv_kernel.py --devices cuda --n 16  # on a GPU

Architecture (Arora et al. 2019): L layers of [Conv2d 3x3 "same", W_std=sqrt 2, no bias, ReLU]
on 32x32x3 images; GAP: GlobalAvgPool2d + Linear(1); vanilla: Flatten + Linear(1); all layers
trainable, as neural-tangents computes it (freezing the first/last layers costs the same). Kernels x against itself (x2=None, n images): the time per
kernel entry is the wall time over n². L counts conv layers (depth 5 = five conv+ReLU layers).

Floor (GAP, fused path): per pair and layer the pass reads (Σ, Θ) and writes them, on arrays
zero-padded to (34·34)², i.e. 4·34⁴·itemsize bytes, and does about F flops per entry
(9+9 adds and 2 multiplies of the stencils, ~45 for the activation with the polynomial arccos);
with the symmetry of x2=None only n(n+1)/2 pairs are computed. The floor is
max(bytes / measured copy bandwidth, flops / measured FMA rate) per pair, over entries.

Backends (``--backends``): "native" is the default CPU path (the C++ kernel of
ntkit.layers.conv_native); "torch" is the same fused pass written in torch ops and compiled by
torch.compile (the previous default, kept as the fallback where no C++ compiler exists): the
two side by side give the native kernel's speed-up on the same machine in the same run.
float32 rows also report the largest relative difference from ntkit's float64 kernel on the
same images ("max_rel_diff_vs_float64").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import ntkit as nk  # noqa: E402
from ntkit.engine import KernelOptions  # noqa: E402

PEER = ROOT / ".peer-venv" / "bin" / "python"
FLOPS_PER_ENTRY = 9 + 9 + 4 + 45


def arch(depth: int, gap: bool, fixed: bool = False):
    """All layers trainable (neural-tangents has no frozen layers, so that both compute the
    same kernel); ``fixed``: the paper's CNTK-GAP with first and last layers frozen (same cost)."""
    s2 = math.sqrt(2.0)
    layers = []
    for l in range(depth):
        layers += [nk.Conv2d(64, 3, W_std=s2, b_std=None, trainable=not (fixed and l == 0)),
                   nk.ReLU()]
    readout = nk.GlobalAvgPool2d() if gap else nk.Flatten()
    return nk.Sequential(*layers, readout, nk.Linear(1, W_std=1.0, b_std=None,
                                                     trainable=not fixed))


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_rates(dev, dtype):
    """Copy bandwidth (bytes/s, read+write) and fused multiply-add rate (flop/s)."""
    n = 1 << 25
    a = torch.rand(n, dtype=dtype, device=dev)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(dev)
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    bw = 2 * a.numel() * a.element_size() / best
    m = 2048 if dev.type == "cpu" else 8192
    x = torch.rand(m, m, dtype=dtype, device=dev)
    x @ x
    _sync(dev)
    t0 = time.perf_counter()
    x @ x
    _sync(dev)
    rate = 2 * m ** 3 / (time.perf_counter() - t0)
    return bw, rate


def time_ours(depth, gap, n, dev, dtype, size=32, backend="native", budget=1 << 30, repeats=1):
    options = KernelOptions(native=backend == "native", memory_budget=int(budget))
    return _time_ours(depth, gap, n, dev, dtype, size, options, repeats)


def _time_ours(depth, gap, n, dev, dtype, size, options, repeats=1):
    """(median seconds of ``repeats`` calls after a warm-up, peak memory over them, the NTK)."""
    a = arch(depth, gap)
    import numpy as np  # the same images as benchmarks/peer/nt_conv_kernel.py (NHWC there)
    xn = np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(str(dtype)[6:])
    x = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()).to(dev)
    a.kernel(x, get="ntk", options=options)  # warm-up: compiles the fused layers (for these shapes) when used
    _sync(dev)
    _reset_peak(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        k = a.kernel(x, get="ntk", options=options)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak(dev), k.ntk.double().cpu()


def time_peer(depth, gap, n, dtype, size=32, repeats=1):
    if not PEER.exists():
        return None
    cfg = {"depth": depth, "gap": gap, "n": n, "size": size, "dtype": dtype, "repeats": repeats}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([str(PEER), str(ROOT / "benchmarks/peer/nt_conv_kernel.py"),
                          json.dumps(cfg)], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(dev, dt_name, depth, gap, n, sec, peak, budget, item, bw, rate, backend):
    entries = n * n
    pairs = n * (n + 1) // 2
    row = {"device": dev.type, "dtype": dt_name, "depth": depth,
           "readout": "gap" if gap else "vanilla", "backend": backend, "n": n,
           "ms_per_entry": 1e3 * sec / entries, "peak_MiB": peak,
           "under_budget": bool(peak * 2 ** 20 <= budget)}
    if dev.type == "cpu":
        row["peak_note"] = ("process peak RSS (includes the interpreter, torch and the "
                            "inputs), so an upper bound on the kernel's own memory")
    if gap:
        bytes_pair = 4 * 34 ** 4 * item * depth
        flops_pair = FLOPS_PER_ENTRY * 32 ** 4 * depth
        floor = max(bytes_pair / bw, flops_pair / rate) * pairs / entries
        row.update({"floor_ms_per_entry": 1e3 * floor, "x_floor": sec / entries / floor,
                    "bandwidth_GBps": bw / 1e9, "fma_rate_GFLOPs": rate / 1e9})
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--depths", default="5,11")
    p.add_argument("--n", type=int, default=4, help="images for the GAP kernel (n² entries)")
    p.add_argument("--n-vanilla", type=int, default=64, help="images for the vanilla kernel")
    p.add_argument("--readouts", default="gap,vanilla")
    p.add_argument("--peer", default="auto", help="time neural-tangents (GAP depth 5): auto|no")
    p.add_argument("--budget", type=float, default=float(1 << 30), help="memory budget, bytes")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed calls per configuration (the median is reported); "
                        "neural-tangents' GAP kernel is timed once (minutes per call)")
    p.add_argument("--backends", default="native,torch",
                   help="CPU backends of the fused pass: native (C++) and/or torch (compiled)")
    args = p.parse_args(argv)
    results = {"machine": {"cpu_threads": torch.get_num_threads(),
                           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
               "memory_budget_MiB": args.budget / 2 ** 20, "runs": []}
    for dev_name in args.devices.split(","):
        dev = torch.device(dev_name)
        for dt_name in args.dtypes.split(","):
            dtype = getattr(torch, dt_name)
            bw, rate = machine_rates(dev, dtype)
            item = torch.finfo(dtype).bits // 8
            for depth in [int(d) for d in args.depths.split(",")]:
                for gap in [r == "gap" for r in args.readouts.split(",")]:
                    n = args.n if gap else args.n_vanilla
                    backends = args.backends.split(",") if dev.type == "cpu" else ["torch"]
                    k = None
                    for backend in backends:
                        sec, peak, k_b = time_ours(depth, gap, n, dev, dtype, backend=backend,
                                                   budget=args.budget, repeats=args.repeats)
                        k = k_b if k is None else k
                        row = _row(dev, dt_name, depth, gap, n, sec, peak, args.budget, item,
                                   bw, rate, backend)
                        if dtype == torch.float32 and backend == backends[0]:
                            k64 = time_ours(depth, gap, n, dev, torch.float64,
                                            backend=backend)[2]
                            row["max_rel_diff_vs_float64"] = float(
                                ((k_b - k64).abs() / k64.abs()).max())
                        results["runs"].append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                    if depth == 5 and dev.type == "cpu" and args.peer != "no":
                        peer = time_peer(depth, gap, n, dt_name,
                                         repeats=1 if gap else args.repeats)
                        for row in results["runs"]:
                            if (row["device"], row["dtype"], row["depth"], row["readout"]) != (
                                    dev_name, dt_name, depth, "gap" if gap else "vanilla"):
                                continue
                            if peer and "seconds" in peer:
                                nt_ms = 1e3 * peer["seconds"] / (n * n)
                                ntk = torch.tensor(peer["ntk"])
                                row.update({"nt_ms_per_entry": nt_ms,
                                            "speedup_vs_nt": nt_ms / row["ms_per_entry"],
                                            "max_rel_diff_vs_nt": float(
                                                ((k - ntk).abs() / ntk.abs()).max())})
                            elif peer:
                                row["nt_error"] = peer.get("error")
                            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
