"""Run under the neural-tangents virtualenv (.peer-venv): time neural-tangents' empirical NTK.

Usage: .peer-venv/bin/python benchmarks/peer/nt_empirical_ntk.py IN.npz OUT.npz
IN.npz: `config` (JSON: repeats, and one entry per model: name, kind "mlp"|"cnn", widths,
inputs key), and the float32 inputs (NHWC for CNNs). OUT.npz: `timings` (JSON: median seconds
per model and implementation 1/2/3 = Jacobian contraction / NTK-vector products / structured
derivatives), and per model the parameters (`<name>_p<i>`) and the kernel of implementation 3
(`<name>_ntk`), so the caller can port the same network and compare values.
Only neural-tangents' and JAX's public APIs are used; this file is benchmark tooling.
"""
import json
import sys
import time

import numpy as np
import jax
from jax import random
import neural_tangents as nt
from neural_tangents import stax


def build(spec):
    if spec["kind"] == "mlp":
        layers = []
        for w in spec["widths"]:
            layers += [stax.Dense(w, W_std=spec["W_std"], b_std=spec["b_std"]), stax.Relu()]
        layers.append(stax.Dense(spec["out"], W_std=spec["W_std"], b_std=spec["b_std"]))
    else:
        layers = []
        for c in spec["channels"]:
            layers += [stax.Conv(c, (3, 3), padding="SAME", W_std=spec["W_std"],
                                 b_std=spec["b_std"], parameterization="standard"), stax.Relu()]
        layers += [stax.Flatten(), stax.Dense(spec["out"], W_std=spec["W_std"],
                                              b_std=spec["b_std"], parameterization="standard")]
    return stax.serial(*layers)


def median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(inp, out):
    data = np.load(inp, allow_pickle=False)
    config = json.loads(str(data["config"]))
    timings, arrays = {}, {}
    for spec in config["models"]:
        x = data[spec["inputs"]]
        init_fn, apply_fn, _ = build(spec)
        _, params = init_fn(random.PRNGKey(spec.get("seed", 0)), x.shape)
        timings[spec["name"]] = {}
        for impl in spec.get("implementations", [1, 2, 3]):
            kfn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                              implementation=impl))
            try:
                timings[spec["name"]][str(impl)] = median_time(lambda: kfn(x, None, params),
                                                               config["repeats"])
            except Exception as exc:  # e.g. out of memory on a busy machine: keep the others
                timings[spec["name"]][str(impl)] = f"failed: {type(exc).__name__}: {exc}"[:300]
                continue
            if impl == 3:
                arrays[f"{spec['name']}_ntk"] = np.asarray(kfn(x, None, params))
        leaves = jax.tree_util.tree_leaves(params)
        for i, leaf in enumerate(leaves):
            arrays[f"{spec['name']}_p{i}"] = np.asarray(leaf)
    np.savez(out, timings=np.array(json.dumps(timings)), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
