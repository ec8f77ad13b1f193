"""Speed of the local average pooling (LAP) readout map on pixel-pair covariances. Prints JSON.

    .venv/bin/python benchmarks/local_pool.py [--m 8] [--size 32]

For m pairs of (H, W, H, W) covariances (H = W = size, float32 and float64) and windows
c = 2, 4, 8, size, times per pair:
* "lap": ``LocalAvgPool2d(c).pool_kernel`` (for m >= 4 pairs one matrix-vector pass with the
  Kronecker weights A_h ⊗ A_w; fewer pairs use the separable contraction with the two small
  (H x H), (W x W) matrices: "lap_one_pair" times that on one pair);
* "avgpool_then_trace": the same kernel through AvgPool2d(c, stride=1, circular) on the full
  pixel-pair tensor (conv_ops.pool_map) and the trace of Flatten (the layer-by-layer reference);
* "gap": GlobalAvgPool2d's mean over all pixel pairs (the floor: one read of the tensor).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

from ntkit.layers.conv_ops import full_diagonal, pool_map  # noqa: E402
from ntkit.layers.local_pool import LocalAvgPool2d  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    s = args.size
    for dtype in (torch.float32, torch.float64):
        t = torch.randn(args.m, s, s, s, s, dtype=dtype, generator=torch.Generator().manual_seed(0))
        for c in sorted({2, 4, 8, s}):
            lap = LocalAvgPool2d(c)
            t_lap, v_lap = median_time(lambda: lap.pool_kernel(t), args.repeats)
            t_one, _ = median_time(lambda: lap.pool_kernel(t[:1]), args.repeats)
            t_ref, v_ref = median_time(
                lambda: full_diagonal(pool_map(t.clone(), (c, c), (1, 1), "circular")).mean(dim=(-2, -1)),
                args.repeats, slow_after=5.0)
            t_gap, _ = median_time(lambda: t.mean(dim=(-4, -3, -2, -1)), args.repeats)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "size": s, "c": c,
                         "ms_per_pair_lap": 1e3 * t_lap / args.m,
                         "ms_lap_one_pair": 1e3 * t_one,
                         "ms_per_pair_avgpool_then_trace": 1e3 * t_ref / args.m,
                         "ms_per_pair_gap": 1e3 * t_gap / args.m,
                         "max_rel_diff": float(((v_lap - v_ref).abs().max() / v_ref.abs().max()).item())})
    print(json.dumps({"benchmark": "local_pool", "m": args.m, "threads": torch.get_num_threads(),
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
