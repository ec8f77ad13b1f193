"""UCI small-data benchmark of Arora et al. (ICLR 2020): NTK SVM vs NNGP SVM, RBF SVM, random
forest and MLP on the 90 Fernández-Delgado datasets (protocol: shared/data/uci/PROTOCOL.md).

    .venv/bin/python benchmarks/uci.py --out runs/uci-full --n-jobs 2      # full, resumable
    .venv/bin/python benchmarks/uci.py --quick --out /tmp/uci-quick        # 5 small datasets

Prints one JSON object: the summary per classifier, NTK vs RF head to head, the wall time.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from ntkit.experiments import uci


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/uci-full", help="output folder (results.json, CSV, PNG)")
    ap.add_argument("--datasets", default=None, help="comma-separated subset of the 90 names")
    ap.add_argument("--quick", action="store_true", help="5 small datasets, smaller RF/MLP")
    ap.add_argument("--n-jobs", type=int, default=2, help="datasets evaluated in parallel")
    ap.add_argument("--root", default=None, help="UCI folder (default: NTKIT_DATA_DIR or ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-resume", action="store_true", help="recompute cached datasets")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = uci.run(Path(args.out), quick=args.quick, seed=args.seed, datasets=args.datasets,
                  n_jobs=args.n_jobs, root=args.root, resume=not args.no_resume)
    out = {"benchmark": "uci", "n_datasets": res["n_datasets"], "n_jobs": args.n_jobs,
           "wall_seconds": time.perf_counter() - t0, "computed_now": res["computed_now"],
           "dataset_seconds_sum": sum(res["seconds_per_dataset"].values()),
           "cpu_seconds_sum": sum(v or 0.0 for v in res["cpu_seconds_per_dataset"].values()),
           "summary": res["summary"], "ntk_vs_rf": res["ntk_vs_rf"],
           "ntk_beats_rf": res["ntk_beats_rf"], "capped_fits": res["capped_fits"],
           "out": str(Path(args.out).resolve())}
    json.dump(out, sys.stdout, indent=1)
    print()
    return out


if __name__ == "__main__":
    main()
