"""Run under the neural-tangents virtualenv (.peer-venv): stax kernels of nested specs.

Usage: .peer-venv/bin/python tests/peer/nt_graph.py IN.npz OUT.npz
Like nt_kernels.py (same files), with nested nodes besides [layer_name, kwargs]:
  ["Sum", {"branches": [spec, spec, ...]}]  ->  FanOut(n) >> parallel(*serials) >> FanInSum()
  (an empty spec [] is stax.Identity()).
Only neural-tangents' public stax API is used; this file is test tooling, not ntkit code.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import nt_kernels  # noqa: E402  (also enables float64)
from nt_kernels import main, stax  # noqa: E402


def build(spec):
    layers = []
    for name, kw in spec:
        if name == "Sum":
            branches = [build(b) if b else stax.Identity() for b in kw["branches"]]
            layers += [stax.FanOut(len(branches)), stax.parallel(*branches), stax.FanInSum()]
        else:
            layers.append(nt_kernels.build([[name, kw]]))
    return stax.serial(*layers)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], build=build)
