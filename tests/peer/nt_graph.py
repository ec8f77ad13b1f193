"""Run under the neural-tangents virtualenv (.peer-venv): stax kernels of nested specs.

Usage: .peer-venv/bin/python tests/peer/nt_graph.py IN.npz OUT.npz
Like nt_kernels.py (same files), with nested nodes besides [layer_name, kwargs]:
  ["Sum", {"branches": [spec, spec, ...]}]  ->  FanOut(n) >> parallel(*serials) >> FanInSum()
  (an empty spec [] is stax.Identity()), and the layers LayerNorm and Dropout.
Only neural-tangents' public stax API is used; this file is test tooling, not ntkit code.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from nt_kernels import NAMES, _tuples, stax  # noqa: E402  (also enables float64)

NAMES = {**NAMES, "LayerNorm": stax.LayerNorm, "Dropout": stax.Dropout}


def build(spec):
    layers = []
    for name, kw in spec:
        if name == "Sum":
            branches = [build(b) if b else stax.Identity() for b in kw["branches"]]
            layers += [stax.FanOut(len(branches)), stax.parallel(*branches), stax.FanInSum()]
        else:
            layers.append(NAMES[name](*_tuples(kw.get("args", [])),
                                      **{k: _tuples(v) for k, v in kw.get("kwargs", {}).items()}))
    return stax.serial(*layers)


def main(inp, out):
    data = np.load(inp, allow_pickle=False)
    specs = json.loads(str(data["specs"]))
    x1 = data["x1"]
    x2 = data["x2"] if "x2" in data.files else None
    result = {}
    for k, spec in enumerate(specs):
        kern = build(spec)[2](x1, x2, ("nngp", "ntk"))
        result[f"nngp_{k}"] = np.asarray(kern.nngp)
        result[f"ntk_{k}"] = np.asarray(kern.ntk)
    np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
