"""Run under the neural-tangents virtualenv (.peer-venv): time neural-tangents' CNTK.

Usage: .peer-venv/bin/python benchmarks/peer/nt_conv_kernel.py JSON_CONFIG
config: {"depth": L, "gap": bool, "n": n, "size": 32, "dtype": "float32"|"float64",
         "repeats": r, "seed": s}. Builds [Conv(3x3 SAME, W_std=sqrt 2, no bias), Relu] * L,
then GlobalAvgPool (first and last layers fixed) or Flatten, Dense(1); times the jitted
kernel_fn(x, None, "ntk") on n random NHWC images (after one compile call), prints JSON with
the median seconds and the kernel (for a value cross-check).
Only neural-tangents' and JAX's public APIs are used; this file is benchmark tooling.
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
layers = []
for l in range(cfg["depth"]):
    layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=s2, b_std=None), stax.Relu()]
if cfg["gap"]:
    layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=1.0, b_std=None)]
else:
    layers += [stax.Flatten(), stax.Dense(1, W_std=1.0, b_std=None)]
_, _, kernel_fn = stax.serial(*layers)
seconds, k = time_jitted(kernel_fn, "ntk", cfg)
print(json.dumps({"seconds": seconds, "ntk": k.tolist()}))
