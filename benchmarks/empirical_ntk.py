"""Benchmark: empirical NTK, ntkit's implementations side by side with neural-tangents'.

Models (float32, x2=None, trace over outputs = neural-tangents' trace_axes=(-1,)):
* "mlp": 784-512-512-512-1 ReLU MLP, NTK parameterization (W_std=1.5, b_std=0.05), 200 inputs;
* "cnn": two 3x3 'same' convolutions with 32 channels + ReLU, Flatten, Dense(10), standard
  parameterization (torch's nn.Conv2d/nn.Linear), 100 images of 3x16x16.
neural-tangents' three implementations (1 Jacobian contraction, 2 NTK-vector products,
3 structured derivatives) run in a subprocess under .peer-venv in the same invocation, on the
same inputs; its parameters are ported into the torch model, so the kernels are compared too
("max_rel_diff_vs_nt", float32 rounding expected). Prints one JSON object: median seconds;
"auto_1_thread" repeats ntkit's automatic choice with torch.set_num_threads(1) (on a loaded
shared machine torch's thread pool can be much slower than one thread), and
"nt_structured_over_ntkit_auto" is neural-tangents' structured time over ntkit's best auto time
(> 1: ntkit faster).

    .venv/bin/python benchmarks/empirical_ntk.py [--repeats 5] [--no-peer] [--skip-slow]
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
from torch import nn

import ntkit as nk
from ntkit.empirical import resolve_implementation
from _timing import median_time

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".peer-venv" / "bin" / "python"
MLP = {"name": "mlp", "kind": "mlp", "widths": [512, 512, 512], "out": 1, "W_std": 1.5,
       "b_std": 0.05, "inputs": "x_mlp", "n": 200, "d": 784}
CNN = {"name": "cnn", "kind": "cnn", "channels": [32, 32], "out": 10, "W_std": 1.5,
       "b_std": 0.05, "inputs": "x_cnn", "n": 100, "image": [3, 16, 16]}


def torch_mlp(spec, leaves=None):
    layers = []
    for w in spec["widths"]:
        layers += [nk.Linear(w, W_std=spec["W_std"], b_std=spec["b_std"]), nk.ReLU()]
    arch = nk.Sequential(*layers, nk.Linear(spec["out"], W_std=spec["W_std"], b_std=spec["b_std"]))
    net = arch.init((spec["d"],), seed=0)
    if leaves is not None:  # neural-tangents' Dense: W (in, out), b (out,)
        linears = [m for m in net if hasattr(m, "weight")]
        with torch.no_grad():
            for m, (w, b) in zip(linears, zip(leaves[0::2], leaves[1::2])):
                m.weight.copy_(torch.from_numpy(w.T.copy()))
                m.bias.copy_(torch.from_numpy(b.reshape(-1).copy()))
    return net.eval()


def torch_cnn(spec, leaves=None):
    c_in, h, w = spec["image"]
    mods, c = [], c_in
    for ch in spec["channels"]:
        mods += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
        c = ch
    mods += [nn.Flatten(), nn.Linear(c * h * w, spec["out"])]
    net = nn.Sequential(*mods)
    if leaves is not None:  # Conv: W (3, 3, in, out) HWIO, flatten order (h, w, c) in NHWC
        params = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            for m, (wt, b) in zip(params, zip(leaves[0::2], leaves[1::2])):
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_(torch.from_numpy(wt.transpose(3, 2, 0, 1).copy()))
                else:
                    wt = wt.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(wt.shape[-1], -1)
                    m.weight.copy_(torch.from_numpy(wt.copy()))
                m.bias.copy_(torch.from_numpy(b.reshape(-1).copy()))
    return net.eval()


def run_peer(inputs, repeats, skip_slow):
    specs = [dict(MLP), dict(CNN)]
    if skip_slow:
        for s in specs:
            s["implementations"] = [3]
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.npz", Path(d) / "out.npz"
        np.savez(inp, config=np.array(json.dumps({"repeats": repeats, "models": specs})),
                 x_mlp=inputs["mlp"], x_cnn=inputs["cnn"].transpose(0, 2, 3, 1).copy())
        proc = subprocess.run([str(PEER), str(ROOT / "benchmarks" / "peer" / "nt_empirical_ntk.py"),
                               str(inp), str(out)], capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}, None
        res = np.load(out)
        arrays = {k: res[k] for k in res.files if k != "timings"}
        return json.loads(str(res["timings"])), arrays


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--skip-slow", action="store_true",
                   help="only the structured/auto paths (and neural-tangents' implementation 3)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    inputs = {"mlp": rng.standard_normal((MLP["n"], MLP["d"])).astype(np.float32),
              "cnn": rng.standard_normal((CNN["n"], *CNN["image"])).astype(np.float32)}
    peer, arrays = ({}, None)
    if PEER.exists() and not args.no_peer:
        peer, arrays = run_peer(inputs, args.repeats, args.skip_slow)
    result = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_average_1min_at_start": os.getloadavg()[0]},
              "models": {"mlp": "784-512-512-512-1 ReLU MLP, NTK param, 200 inputs, float32",
                         "cnn": "conv3x3(32)-ReLU-conv3x3(32)-ReLU-Flatten-Dense(10), "
                                "100 images 3x16x16, float32"},
              "seconds": {}, "neural_tangents": peer}
    impls = ["structured", "auto"] if args.skip_slow else ["jacobian", "ntvp", "structured", "auto"]
    for name, build in (("mlp", torch_mlp), ("cnn", torch_cnn)):
        spec = MLP if name == "mlp" else CNN
        leaves = None
        if arrays is not None:
            leaves = [arrays[f"{name}_p{i}"] for i in range(sum(k.startswith(f"{name}_p") for k in arrays))]
        net = build(spec, leaves)
        x = torch.from_numpy(inputs[name])
        # slow cases (> 3 s): one timed run is enough for a ratio of 100
        times = {impl: median_time(lambda: nk.empirical_ntk(net, x, implementation=impl),
                                   args.repeats, slow_after=3.0)[0] for impl in impls}
        threads = torch.get_num_threads()
        if threads > 1:  # on a shared, loaded machine one thread can beat the thread pool
            torch.set_num_threads(1)
            times["auto_1_thread"] = median_time(lambda: nk.empirical_ntk(net, x), args.repeats,
                                                 slow_after=3.0)[0]
            torch.set_num_threads(threads)
        times["auto_resolves_to"] = resolve_implementation(net, x)
        result["seconds"][name] = times
        if arrays is not None and f"{name}_ntk" in arrays:
            ours = nk.empirical_ntk(net, x).double().numpy()
            ref = arrays[f"{name}_ntk"].astype(np.float64)
            times["max_rel_diff_vs_nt"] = float(np.abs(ours - ref).max() / np.abs(ref).max())
        if isinstance(peer, dict) and isinstance(peer.get(name, {}).get("3"), float):
            best = min(times["auto"], times.get("auto_1_thread", times["auto"]))
            times["nt_structured_over_ntkit_auto"] = peer[name]["3"] / best
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
