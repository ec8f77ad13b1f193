"""Run under the neural-tangents virtualenv (.peer-venv): predict.* results for a cross-check.

Usage: .peer-venv/bin/python tests/peer/nt_predict.py IN.npz OUT.npz
IN.npz: x_train, y_train, x_test, fx_train_0, fx_test_0, ts, spec (JSON list of
[layer_name, kwargs] as in nt_kernels.py), learning_rate, diag_reg.
OUT.npz: gd_* (gradient_descent_mse), ens_* (gradient_descent_mse_ensemble), gp_*
(gp_inference) and max_lr. Only neural-tangents' public API is used; this is test tooling.
"""
import json
import sys

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

from nt_kernels import NAMES  # noqa: E402


def main(inp, out):
    d = np.load(inp, allow_pickle=False)
    spec = json.loads(str(d["spec"]))
    layers = [NAMES[name](*kw.get("args", []), **kw.get("kwargs", {})) for name, kw in spec]
    _, _, kernel_fn = stax.serial(*layers)
    xtr, ytr, xte = d["x_train"], d["y_train"], d["x_test"]
    f0tr, f0te, ts = d["fx_train_0"], d["fx_test_0"], d["ts"]
    lr, reg = float(d["learning_rate"]), float(d["diag_reg"])
    kdd = kernel_fn(xtr, None, ("nngp", "ntk"))
    ktd = kernel_fn(xte, xtr, ("nngp", "ntk"))
    ktt = kernel_fn(xte, None, "nngp")
    res = {}
    fn = nt.predict.gradient_descent_mse(kdd.ntk, ytr, lr, reg)
    res["gd_train_t"], res["gd_test_t"] = fn(ts, f0tr, f0te, ktd.ntk)
    res["gd_train_inf"], res["gd_test_inf"] = fn(None, f0tr, f0te, ktd.ntk)
    res["gd_train_only_t"] = fn(ts, f0tr)
    res["gd_test_only_t"] = fn(ts, None, f0te, ktd.ntk)
    ens = nt.predict.gradient_descent_mse_ensemble(kernel_fn, xtr, ytr, lr, reg)
    for tag, t in (("t", ts), ("inf", None)):
        for where, x in (("test", xte), ("train", None)):
            r = ens(t, x, ("nngp", "ntk"), True)
            for g in ("nngp", "ntk"):
                res[f"ens_{tag}_{where}_{g}_mean"] = getattr(r, g).mean
                res[f"ens_{tag}_{where}_{g}_cov"] = getattr(r, g).covariance
    gp = nt.predict.gp_inference(kdd, ytr, reg)
    r = gp(("nngp", "ntk", "ntkgp"), ktd, kernel_fn(xte, None, ("nngp", "ntk")))
    for g in ("nngp", "ntk", "ntkgp"):
        res[f"gp_{g}_mean"] = getattr(r, g).mean
        res[f"gp_{g}_cov"] = getattr(r, g).covariance
    try:
        res["max_lr"] = np.array(nt.predict.max_learning_rate(kdd.ntk, ytr.size))
    except TypeError:
        # neural-tangents 0.6.5 calls scipy's removed eigvalsh(eigvals=...); apply its documented
        # formula 2 * y_train.size / (lambda_max + 1e-12) instead
        res["max_lr"] = np.array(2 * ytr.size / (np.linalg.eigvalsh(np.asarray(kdd.ntk))[-1]
                                                 + 1e-12))
    np.savez(out, **{k: np.asarray(v) for k, v in res.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
