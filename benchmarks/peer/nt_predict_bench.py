"""Run under .peer-venv: time neural-tangents' predict functions on the kernels in IN.npz.

Usage: .peer-venv/bin/python benchmarks/peer/nt_predict_bench.py IN.npz OUT.json REPEATS
IN.npz: k_dd_ntk, k_dd_nngp, k_td_ntk, k_td_nngp, k_tt_nngp, y, fx_train_0, fx_test_0, ts.
Writes median seconds per case (after one warm-up run) and the results' checksums.
"""
import json
import sys
import time
from collections import namedtuple

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402

K = namedtuple("Kernel", "nngp ntk")


def median_time(fn, repeats):
    out = fn()
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main(inp, out, repeats):
    d = {k: jnp.asarray(v) for k, v in np.load(inp).items()}
    kdd = K(d["k_dd_nngp"], d["k_dd_ntk"])
    ktd = K(d["k_td_nngp"], d["k_td_ntk"])
    res = {}

    def gd():
        fn = nt.predict.gradient_descent_mse(kdd.ntk, d["y"], 1.0, 1e-4)
        return fn(d["ts"], d["fx_train_0"], d["fx_test_0"], ktd.ntk)

    def gd_inf():
        fn = nt.predict.gradient_descent_mse(kdd.ntk, d["y"], 1.0, 1e-4)
        return fn(None, d["fx_train_0"], d["fx_test_0"], ktd.ntk)

    def gp():
        return nt.predict.gp_inference(kdd, d["y"], 1e-4)(("nngp", "ntk"), ktd, d["k_tt_nngp"])

    for name, fn in (("gradient_descent_mse_times", gd), ("gradient_descent_mse_inf", gd_inf),
                     ("gp_inference_cov", gp)):
        sec, value = median_time(fn, repeats)
        leaves = jax.tree_util.tree_leaves(value)
        res[name] = {"seconds": sec, "checksum": float(sum(jnp.abs(v).sum() for v in leaves))}
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
