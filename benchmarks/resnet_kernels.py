"""Speed of the Myrtle-5 NNGP and the WideResNet NTK on 32x32x3 images, ntkit and
neural-tangents side by side in one run (issue 15). Prints JSON.

    .venv/bin/python benchmarks/resnet_kernels.py [--n 4] [--dtypes float32,float64]
                                                  [--wrn-depth 10] [--wrn-k 1] [--peer auto|no]
                                                  [--archs myrtle5,wrn] [--repeats 1]

Kernels of n random images against themselves (x2=None: n² entries, n(n+1)/2 pairs computed);
ms per entry = wall time / n² after one warm-up call. neural-tangents runs jitted in
.peer-venv (benchmarks/peer/nt_resnet_kernels.py) on the same images (NHWC there); each row
reports the speed-up and the largest relative difference between the two kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(os.environ.get("NTKIT_PEER_PYTHON", ROOT / ".peer-venv" / "bin" / "python"))
sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

import ntkit as nk  # noqa: E402


def _images(n: int, size: int, dtype: str) -> np.ndarray:
    """NHWC images, the same as the peer script draws."""
    return np.random.default_rng(0).standard_normal((n, size, size, 3)).astype(dtype)


def time_peer(cfg: dict):
    if not PEER.exists():
        return None
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([str(PEER), str(ROOT / "benchmarks/peer/nt_resnet_kernels.py"),
                          json.dumps(cfg)], capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode:
        return {"error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--wrn-depth", type=int, default=10)
    p.add_argument("--wrn-k", type=int, default=1)
    p.add_argument("--peer", default="auto")
    p.add_argument("--archs", default="myrtle5,wrn", help="comma-separated: myrtle5, wrn")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    wanted = set(args.archs.split(","))
    cases = [("myrtle5", nk.myrtle(5), "nngp", {"arch": "myrtle5"}),
             (f"wrn-{args.wrn_depth}-{args.wrn_k}", nk.wide_resnet(args.wrn_depth, args.wrn_k), "ntk",
              {"arch": "wrn", "depth": args.wrn_depth, "k": args.wrn_k})]
    rows = []
    for dtype in args.dtypes.split(","):
        xn = _images(args.n, 32, dtype)
        x = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy())
        for name, arch, get, peer_cfg in cases:
            if peer_cfg["arch"] not in wanted:
                continue
            sec, k = median_time(lambda: getattr(arch.kernel(x, get=get), get), args.repeats)
            row = {"arch": name, "get": get, "dtype": dtype, "n": args.n,
                   "ms_per_entry": 1e3 * sec / args.n ** 2, "threads": torch.get_num_threads(),
                   "load_avg_1min": os.getloadavg()[0]}
            if args.peer != "no":
                peer = time_peer({**peer_cfg, "get": get, "n": args.n, "size": 32, "dtype": dtype})
                if peer and "seconds" in peer:
                    ref = torch.tensor(peer["kernel"], dtype=torch.float64)
                    row["nt_ms_per_entry"] = 1e3 * peer["seconds"] / args.n ** 2
                    row["speedup_vs_nt"] = peer["seconds"] / sec
                    row["max_rel_diff_vs_nt"] = float(((k.double() - ref).abs().max()
                                                       / ref.abs().max()).item())
                elif peer:
                    row["nt_error"] = peer["error"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"benchmark": "resnet_kernels", "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
