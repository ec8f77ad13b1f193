"""Run under the neural-tangents virtualenv (.peer-venv): time neural-tangents' empirical NTK.

Usage: .peer-venv/bin/python benchmarks/peer/nt_empirical_ntk.py IN.npz OUT.npz
IN.npz: `config` (JSON: repeats, and one entry per model: name, kind, its sizes, the inputs
key), the inputs (float32, NHWC for CNNs; int32 token ids for the transformer) and, for the
transformer, the torch model's parameters `<name>_tp<i>` (names in the config's
"param_names"). Kinds:
* "mlp", "cnn", "myrtle": neural-tangents' stax networks, initialized here; their parameters
  are written out (`<name>_p<i>`) so the caller ports them into its torch twin;
* "transformer": Embedding -> post-LN TransformerEncoderLayer x layers (ReLU, no dropout) ->
  mean over tokens -> Dense(out), written below in jax.numpy as the twin of torch's modules,
  with torch's parameters.
OUT.npz: `timings` (JSON: per model, median seconds per implementation 1/2/3 = Jacobian
contraction / NTK-vector products / structured derivatives; "peak_rss_mb": per implementation,
this process's peak resident memory during its compilation and calls (the peak is reset before
each implementation through /proc/self/clear_refs, so each is its own; "base_rss_mb" the
resident memory before it); "n_params"), the kernel of the first implementation timed
(`<name>_ntk`) and the network's outputs on the inputs (`<name>_out`, float64: for the
transformer twin, the caller compares them with the torch model's). Only neural-tangents' and
JAX's public APIs are used; this file is benchmark tooling.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp
from jax import random
import neural_tangents as nt
from neural_tangents import stax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _rss import peak_rss_mb, rss_mb as current_rss_mb  # noqa: E402


def build_stax(spec):
    ws, bs = spec["W_std"], spec["b_std"]
    if spec["kind"] == "mlp":
        layers = []
        for w in spec["widths"]:
            layers += [stax.Dense(w, W_std=ws, b_std=bs), stax.Relu()]
        layers.append(stax.Dense(spec["out"], W_std=ws, b_std=bs))
    elif spec["kind"] == "cnn":
        layers = []
        for c in spec["channels"]:
            layers += [stax.Conv(c, (3, 3), padding="SAME", W_std=ws, b_std=bs,
                                 parameterization="standard"), stax.Relu()]
        layers += [stax.Flatten(), stax.Dense(spec["out"], W_std=ws, b_std=bs,
                                              parameterization="standard")]
    else:  # "myrtle": conv-relu stem, then 3 stages of conv-relu + 2x2 average pooling
        conv = lambda: stax.Conv(spec["width"], (3, 3), padding="SAME", W_std=ws, b_std=bs,
                                 parameterization="standard")
        pool = stax.AvgPool((2, 2), strides=(2, 2))
        layers = [conv(), stax.Relu()]
        for repeat in spec["pools"]:
            layers += [conv(), stax.Relu()] + [pool] * repeat
        layers += [stax.Flatten(), stax.Dense(spec["out"], W_std=ws, b_std=bs,
                                              parameterization="standard")]
    return stax.serial(*layers)


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def transformer_apply(spec):
    heads, layers = spec["heads"], spec["layers"]

    def apply_fn(params, ids):
        h = params["emb.weight"][ids]  # (n, L, d)
        n, length, d = h.shape
        hd = d // heads
        for i in range(layers):
            p = lambda s: params[f"enc.layers.{i}.{s}"]
            qkv = h @ p("self_attn.in_proj_weight").T + p("self_attn.in_proj_bias")
            q, k, v = (t.reshape(n, length, heads, hd).transpose(0, 2, 1, 3)
                       for t in jnp.split(qkv, 3, axis=-1))
            att = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(hd), axis=-1) @ v
            att = att.transpose(0, 2, 1, 3).reshape(n, length, d)
            att = att @ p("self_attn.out_proj.weight").T + p("self_attn.out_proj.bias")
            h = layer_norm(h + att, p("norm1.weight"), p("norm1.bias"))
            ff = jax.nn.relu(h @ p("linear1.weight").T + p("linear1.bias"))
            ff = ff @ p("linear2.weight").T + p("linear2.bias")
            h = layer_norm(h + ff, p("norm2.weight"), p("norm2.bias"))
        return h.mean(axis=1) @ params["head.weight"].T + params["head.bias"]

    return apply_fn


def reset_peak_rss():
    """Reset VmHWM to the current resident memory (Linux >= 4.0; a no-op where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def median_time(fn, repeats):
    out = jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main(inp, out):
    data = np.load(inp, allow_pickle=False)
    config = json.loads(str(data["config"]))
    timings, arrays = {}, {}
    for spec in config["models"]:
        name = spec["name"]
        x = data[spec["inputs"]]
        if spec["kind"] == "transformer":
            params = {k: jnp.asarray(data[f"{name}_tp{i}"])
                      for i, k in enumerate(spec["param_names"])}
            apply_fn = transformer_apply(spec)
            x = jnp.asarray(x, dtype=jnp.int32)
        else:
            init_fn, apply_fn, _ = build_stax(spec)
            _, params = init_fn(random.PRNGKey(spec.get("seed", 0)), x.shape)
            for i, leaf in enumerate(jax.tree_util.tree_leaves(params)):
                arrays[f"{name}_p{i}"] = np.asarray(leaf)
        arrays[f"{name}_out"] = np.asarray(apply_fn(params, x), dtype=np.float64)
        result = {"n_params": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params))),
                  "base_rss_mb": {}, "peak_rss_mb": {}}
        for impl in spec.get("implementations", [1, 2, 3]):
            kfn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                              implementation=impl))
            reset_peak_rss()
            result["base_rss_mb"][str(impl)] = current_rss_mb()
            try:
                result[str(impl)], ntk = median_time(lambda: kfn(x, None, params),
                                                     config["repeats"])
            except Exception as exc:  # e.g. out of memory on a busy machine: keep the others
                result[str(impl)] = f"failed: {type(exc).__name__}: {exc}"[:300]
                continue
            finally:
                result["peak_rss_mb"][str(impl)] = peak_rss_mb()
            arrays.setdefault(f"{name}_ntk", np.asarray(ntk))
            del kfn, ntk
        timings[name] = result
    np.savez(out, timings=np.array(json.dumps(timings)), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
