"""Run under the neural-tangents virtualenv (.peer-venv): compute stax kernels for specs.

Usage: .peer-venv/bin/python tests/peer/nt_kernels.py IN.npz OUT.npz
IN.npz holds x1, x2 (float64, or x2 absent) and `specs`, a JSON list of architectures, each a
list of [layer_name, kwargs]. OUT.npz gets nngp_<k>, ntk_<k> for each spec k.
Only neural-tangents' public stax API is used; this file is test tooling, not ntkit code.
"""
import json
import sys

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

NAMES = {
    "Dense": stax.Dense, "Relu": stax.Relu, "LeakyRelu": stax.LeakyRelu, "ABRelu": stax.ABRelu,
    "Erf": stax.Erf, "Gelu": stax.Gelu, "Sin": stax.Sin, "Identity": stax.Identity,
    "Conv": stax.Conv, "AvgPool": stax.AvgPool, "GlobalAvgPool": stax.GlobalAvgPool,
    "Flatten": stax.Flatten, "LayerNorm": stax.LayerNorm, "Dropout": stax.Dropout,
}


def _tuples(v):
    """JSON lists -> tuples (stax wants tuples for shapes and strides)."""
    return tuple(_tuples(a) for a in v) if isinstance(v, list) else v


def build(spec):
    """stax.serial of a flat spec [[layer_name, kwargs], ...]."""
    return stax.serial(*[NAMES[name](*_tuples(kw.get("args", [])),
                                     **{k: _tuples(v) for k, v in kw.get("kwargs", {}).items()})
                         for name, kw in spec])


def main(inp, out, build=build):
    data = np.load(inp, allow_pickle=False)
    specs = json.loads(str(data["specs"]))
    x1 = data["x1"]
    x2 = data["x2"] if "x2" in data.files else None
    result = {}
    for k, spec in enumerate(specs):
        _, _, kernel_fn = build(spec)
        kern = kernel_fn(x1, x2, ("nngp", "ntk"))
        result[f"nngp_{k}"] = np.asarray(kern.nngp)
        result[f"ntk_{k}"] = np.asarray(kern.ntk)
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
