"""Benchmark: ntkit.predict's neural-tangents-compatible functions against neural-tangents 0.6.5
on the same float64 kernels, side by side in one invocation (ratios; CPU).

Kernels: NTK/NNGP of a 3-hidden-layer ReLU net (W_std=1.5, b_std=0.1) on n training and 200
test points (random normal inputs, d=32), 10 outputs. Cases:
* gradient_descent_mse_times: one eigendecomposition + train/test outputs at 10 times;
* gradient_descent_mse_inf:  t=None (Cholesky solve);
* gp_inference_cov:          NNGP and NTK posterior means and test covariances at t=inf.
Prints one JSON object: median seconds per case, ntkit/nt ratios, and the relative difference
of the results' checksums (they must agree).

    .venv/bin/python benchmarks/predict.py [--n 1000 2000] [--repeats 3] [--no-peer]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit import predict
from _timing import median_time

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".peer-venv" / "bin" / "python"


def checksum(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.abs().sum())
    if isinstance(value, (tuple, list)):
        return sum(checksum(v) for v in value)
    return float(np.abs(np.asarray(value)).sum())


def one_size(n: int, repeats: int, peer: bool) -> dict:
    rng = np.random.default_rng(0)
    arch = nk.Sequential(*([nk.Linear(512, W_std=1.5, b_std=0.1), nk.ReLU()] * 3),
                         nk.Linear(1, W_std=1.5, b_std=0.1))
    xtr, xte = rng.normal(size=(n, 32)), rng.normal(size=(200, 32))
    kdd, ktd, ktt = arch.kernel(xtr), arch.kernel(xte, xtr), arch.kernel(xte)
    arrays = dict(k_dd_ntk=kdd.ntk.numpy(), k_dd_nngp=kdd.nngp.numpy(), k_td_ntk=ktd.ntk.numpy(),
                  k_td_nngp=ktd.nngp.numpy(), k_tt_nngp=ktt.nngp.numpy(),
                  y=rng.normal(size=(n, 10)), fx_train_0=rng.normal(size=(n, 10)),
                  fx_test_0=rng.normal(size=(200, 10)), ts=np.geomspace(1, 1e4, 10))
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def gd():
        fn = predict.gradient_descent_mse(t["k_dd_ntk"], t["y"], 1.0, 1e-4)
        return fn(t["ts"], t["fx_train_0"], t["fx_test_0"], t["k_td_ntk"])

    def gd_inf():
        fn = predict.gradient_descent_mse(t["k_dd_ntk"], t["y"], 1.0, 1e-4)
        return fn(None, t["fx_train_0"], t["fx_test_0"], t["k_td_ntk"])

    def gp():
        return predict.gp_inference(kdd, t["y"], 1e-4)(("nngp", "ntk"), ktd, ktt.nngp)

    out = {}
    for name, fn in (("gradient_descent_mse_times", gd), ("gradient_descent_mse_inf", gd_inf),
                     ("gp_inference_cov", gp)):
        sec, value = median_time(fn, repeats)
        out[name] = {"ntkit_seconds": sec, "ntkit_checksum": checksum(value)}
    if peer and PEER.exists():
        with tempfile.TemporaryDirectory() as d:
            inp, res = Path(d) / "in.npz", Path(d) / "out.json"
            np.savez(inp, **arrays)
            subprocess.run([str(PEER), str(ROOT / "benchmarks" / "peer" / "nt_predict_bench.py"),
                            str(inp), str(res), str(repeats)], check=True, capture_output=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu",
                                "TF_CPP_MIN_LOG_LEVEL": "3"})
            ref = json.loads(res.read_text())
        for name, r in ref.items():
            out[name]["nt_seconds"] = r["seconds"]
            out[name]["ntkit_over_nt"] = out[name]["ntkit_seconds"] / r["seconds"]
            out[name]["checksum_rel_diff"] = abs(out[name]["ntkit_checksum"] - r["checksum"]) \
                / r["checksum"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    result = {"torch_threads": torch.get_num_threads(), "dtype": "float64", "n_test": 200,
              "outputs": 10, "sizes": {str(n): one_size(n, args.repeats, not args.no_peer)
                                       for n in args.n}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
