"""Run under the neural-tangents virtualenv (.peer-venv): time neural-tangents' Myrtle and
WideResNet kernels.

Usage: .peer-venv/bin/python benchmarks/peer/nt_resnet_kernels.py JSON_CONFIG
config: {"arch": "myrtle5"|"wrn", "depth": 16, "k": 1, "get": "nngp"|"ntk", "n": n,
         "size": 32, "dtype": "float32"|"float64", "repeats": r, "seed": s}.
Myrtle-5: Shankar et al. 2020 as in the neural-tangents example (W_std = sqrt 2, b_std = 0,
3x3 SAME convs [2, 1, 1], 2x2 pools, three final 2x2 pools, Flatten, Dense). WRN: the
neural-tangents README's WideResnet (block_size = (depth - 4) / 6). Times the jitted
kernel_fn(x, None, get) on n random NHWC images (after one compile call); prints JSON with the
median seconds and the kernel. Only neural-tangents' and JAX's public APIs are used.
"""
import json
import sys
from pathlib import Path

import numpy as np
import jax

cfg = json.loads(sys.argv[1])
if cfg["dtype"] == "float64":
    jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _nt_time import time_jitted  # noqa: E402

s2 = float(np.sqrt(2.0))


def myrtle5():
    conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=s2, b_std=0.0)  # noqa: E731
    pool = lambda: stax.AvgPool((2, 2), strides=(2, 2))  # noqa: E731
    layers = [conv(), stax.Relu()] * 2 + [pool(), conv(), stax.Relu(), pool(), conv(), stax.Relu()]
    return stax.serial(*layers, pool(), pool(), pool(), stax.Flatten(), stax.Dense(10, s2, 0.0))


def wrn(depth, k):
    def block(c, strides, mismatch):
        main = stax.serial(stax.Relu(), stax.Conv(c, (3, 3), strides, padding="SAME"),
                           stax.Relu(), stax.Conv(c, (3, 3), padding="SAME"))
        short = stax.Conv(c, (3, 3), strides, padding="SAME") if mismatch else stax.Identity()
        return stax.serial(stax.FanOut(2), stax.parallel(main, short), stax.FanInSum())

    def group(n, c, strides=(1, 1)):
        return stax.serial(block(c, strides, True), *[block(c, (1, 1), False) for _ in range(n - 1)])

    n = (depth - 4) // 6
    return stax.serial(stax.Conv(16, (3, 3), padding="SAME"), group(n, 16 * k),
                       group(n, 32 * k, (2, 2)), group(n, 64 * k, (2, 2)), stax.AvgPool((8, 8)),
                       stax.Flatten(), stax.Dense(10, 1.0, 0.0))


_, _, kernel_fn = myrtle5() if cfg["arch"] == "myrtle5" else wrn(cfg["depth"], cfg["k"])
seconds, k = time_jitted(kernel_fn, cfg["get"], {"repeats": 1, **cfg})
print(json.dumps({"seconds": seconds, "kernel": k.tolist()}))
