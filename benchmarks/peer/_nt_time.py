"""Shared timing of the neural-tangents benchmark scripts (run under .peer-venv; imported from
the script's own folder). Only JAX's public API is used."""
import time

import numpy as np
import jax


def time_jitted(kernel_fn, get, cfg):
    """(median seconds, kernel) of the jitted ``kernel_fn(x, None, get)`` on cfg["n"] random
    NHWC images of cfg["size"]² x 3 (cfg["dtype"], seed cfg["seed"]), after one compile call,
    over cfg["repeats"] (default 2) calls."""
    kf = jax.jit(lambda x: kernel_fn(x, None, get))
    rng = np.random.default_rng(cfg.get("seed", 0))
    x = rng.standard_normal((cfg["n"], cfg["size"], cfg["size"], 3)).astype(cfg["dtype"])
    jax.block_until_ready(kf(x))
    times = []
    for _ in range(cfg.get("repeats", 2)):
        t0 = time.perf_counter()
        k = jax.block_until_ready(kf(x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), np.asarray(k, dtype=np.float64)
