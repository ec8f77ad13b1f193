"""neural-tangents side of benchmarks/fc_kernel.py (run under .peer-venv/bin/python).

Prints JSON {"<dtype>/<n>/<mode>": seconds} for depth-3 ReLU NNGP+NTK, jitted, median of repeats.
"""
import json
import sys
import time

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402


def main(sizes, dtypes, repeats, d, depth):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu()]
    layers += [stax.Dense(1, W_std=1.5, b_std=0.05)]
    _, _, kernel_fn = stax.serial(*layers)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    out = {}
    rng = np.random.default_rng(0)
    for dt in dtypes:
        for n in sizes:
            x1 = rng.normal(size=(n, d)).astype(dt)
            x2 = rng.normal(size=(n, d)).astype(dt)
            for mode in ("x2", "x2=None"):
                args = (x1, x2) if mode == "x2" else (x1, None)
                kfn(*args, get=("nngp", "ntk")).ntk.block_until_ready()
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    kfn(*args, get=("nngp", "ntk")).ntk.block_until_ready()
                    times.append(time.perf_counter() - t0)
                out[f"{dt}/{n}/{mode}"] = float(np.median(times))
    print(json.dumps(out))


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    main(cfg["sizes"], cfg["dtypes"], cfg["repeats"], cfg["d"], cfg["depth"])
