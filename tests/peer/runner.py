"""Helper for the optional neural-tangents cross-checks: runs nt_kernels.py in .peer-venv."""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = Path(os.environ.get("NTKIT_PEER_PYTHON", ROOT / ".peer-venv" / "bin" / "python"))


def peer_available() -> bool:
    return PEER_PYTHON.exists()


def nt_kernels(x1, x2, specs, script="nt_kernels.py"):
    """Kernels of neural-tangents for each spec; returns a list of (nngp, ntk) numpy arrays.
    ``script``: the peer script in tests/peer that reads the specs (nt_graph.py for nested ones)."""
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in.npz", Path(d) / "out.npz"
        arrays = {"x1": np.asarray(x1, dtype=np.float64), "specs": np.array(json.dumps(specs))}
        if x2 is not None:
            arrays["x2"] = np.asarray(x2, dtype=np.float64)
        np.savez(inp, **arrays)
        subprocess.run([str(PEER_PYTHON), str(Path(__file__).with_name(script)), str(inp),
                        str(out)], check=True, capture_output=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
        res = np.load(out)
        return [(res[f"nngp_{k}"], res[f"ntk_{k}"]) for k in range(len(specs))]
