"""Benchmark: empirical NTK, ntkit's implementations side by side with neural-tangents'.

Cases (float32, x2=None, trace over outputs = neural-tangents' trace_axes=(-1,)):
* "mlp": 784-512-512-512-1 ReLU MLP, NTK parameterization (W_std=1.5, b_std=0.05), 200 inputs;
* "cnn": two 3x3 'same' convolutions with 32 channels + ReLU, Flatten, Dense(10), standard
  parameterization (torch's nn.Conv2d/nn.Linear), 100 images of 3x16x16;
* "myrtle": Myrtle-5-shaped CNN of width 64 on 32x32x3 images: conv-ReLU stem, three stages of
  conv-ReLU + 2x2 average pooling (the last pooled 3 times, to 1x1), Dense(10); 100 images;
* "transformer": nn.Embedding(1000, 128) -> 2 post-LN nn.TransformerEncoderLayer (4 heads,
  feed-forward 256, ReLU, no dropout, batch_first) -> mean over 32 tokens -> nn.Linear(1);
  100 sequences of token ids; its neural-tangents twin is written in jax.numpy
  (benchmarks/peer/nt_empirical_ntk.py) and gets the torch model's parameters: the same
  function ("twin_same_n_params", "twin_max_rel_diff_outputs": the two networks' outputs on
  the same ids, float32 rounding), neural-tangents' Jacobian contraction (1), NTK-vector
  products (2) and structured derivatives (3) timed (3 may run out of memory: the gather of
  the embedding, its issue #199), each with its own peak memory;
* "mem10m" (with --memory): the 1,000 x 1,000 trace NTK of a 784-2048-2048-2048-1 MLP
  (10.0 M parameters), ntkit only, default settings: peak memory.
For the stax cases neural-tangents initializes the network and its parameters are ported into
the torch model, so the kernels are compared too ("max_rel_diff_vs_nt", float32 rounding).
Every measurement runs in a fresh subprocess (torch: one per case and implementation;
neural-tangents: one per case, in .peer-venv) that reports its median time over --repeats calls
after a warm-up, and its peak resident memory (VmHWM) and the resident memory before the
computation. torch keeps its default thread count; ntkit lowers it per call to the idle cores
(ntkit.empirical.threads); "auto_threads_1" is ntkit's auto with threads=1 ("threads_used": how many calls
of the model ran at each intra-op thread count). --busy N keeps N
cores busy with spinning processes during all measurements (the "one core busy" condition).
The automatic choice's cost model (ntkit.empirical.cost) is checked against the measured times:
"cost_model_gmacs" (predicted multiply-adds per implementation), "fastest_measured" and
"auto_is_fastest". Prints one JSON object; "nt_structured_over_ntkit_auto" and
"nt_best_over_ntkit_auto" (over neural-tangents' implementations that ran) > 1 mean ntkit is
faster.

    .venv/bin/python benchmarks/empirical_ntk.py [--repeats 5] [--cases mlp,cnn,myrtle,transformer]
        [--tiny] [--no-peer] [--skip-slow] [--busy 1] [--memory]

--calibrate checks the cost model instead, over the grid CALIBRATION (MLPs, CNNs, a small
Myrtle, transformer encoders and LSTMs, small and large batches; --cases picks from it): every
implementation timed at --threads intra-op threads (default 1, the least sensitive to load)
against its predicted multiply-adds; JSON with, per case, "predicted_gmacs", "measured_ms",
"auto_picks", "fastest_measured", "auto_slowdown", and overall the measured time per
multiply-add of each implementation relative to structured derivatives (what
``ntkit.empirical.cost.SECONDS_PER_MAC`` holds):

    .venv/bin/python benchmarks/empirical_ntk.py --calibrate [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PEER = Path(os.environ.get("NTKIT_PEER_PYTHON", ROOT / ".peer-venv" / "bin" / "python"))
if not PEER.exists():  # worktrees share the main checkout's peer venv
    PEER = Path("/work/main/.peer-venv/bin/python")

CASES = {
    "mlp": {"kind": "mlp", "widths": [512, 512, 512], "out": 1, "W_std": 1.5, "b_std": 0.05,
            "n": 200, "d": 784},
    "cnn": {"kind": "cnn", "channels": [32, 32], "out": 10, "W_std": 1.5, "b_std": 0.05,
            "n": 100, "image": [3, 16, 16]},
    "myrtle": {"kind": "myrtle", "width": 64, "pools": [1, 1, 3], "out": 10, "W_std": 1.5,
               "b_std": 0.05, "n": 100, "image": [3, 32, 32]},
    "transformer": {"kind": "transformer", "vocab": 1000, "d": 128, "heads": 4, "ff": 256,
                    "layers": 2, "length": 32, "out": 1, "n": 100},
    "mem10m": {"kind": "mlp", "widths": [2048, 2048, 2048], "out": 1, "W_std": 1.5,
               "b_std": 0.05, "n": 1000, "d": 784, "peer": False},
}
TINY = {"mlp": {"widths": [32, 32], "n": 12, "d": 20}, "cnn": {"channels": [4], "n": 6,
        "image": [3, 8, 8]}, "myrtle": {"width": 4, "n": 5, "image": [3, 8, 8],
        "pools": [1, 1, 1]}, "transformer": {"vocab": 50, "d": 16, "heads": 2, "ff": 32,
        "length": 6, "n": 6}, "mem10m": {"widths": [64, 64], "n": 40, "d": 30}}
IMPLS = ["jacobian", "ntvp", "structured", "auto"]


# -- the torch models ------------------------------------------------------------------------------
class Encoder(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.emb = nn.Embedding(s["vocab"], s["d"])
        layer = nn.TransformerEncoderLayer(s["d"], s["heads"], s["ff"], dropout=0.0,
                                           batch_first=True)
        self.enc = nn.TransformerEncoder(layer, s["layers"], enable_nested_tensor=False)
        self.head = nn.Linear(s["d"], s["out"])

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(dim=1))


class Recurrent(nn.Module):
    """nn.LSTM over the sequence -> last hidden state -> nn.Linear (torch.func.vmap cannot run
    nn.LSTM: ntkit falls back to per-example autograd)."""

    def __init__(self, s):
        super().__init__()
        self.rnn = nn.LSTM(s["d"], s["hidden"], batch_first=True)
        self.head = nn.Linear(s["hidden"], s["out"])

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def build(spec):
    """The torch model of a case (parameters as initialized by torch; ports replace them)."""
    import ntkit as nk

    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "mlp":
        layers = []
        for w in spec["widths"]:
            layers += [nk.Linear(w, W_std=spec["W_std"], b_std=spec["b_std"]), nk.ReLU()]
        arch = nk.Sequential(*layers, nk.Linear(spec["out"], W_std=spec["W_std"],
                                                b_std=spec["b_std"]))
        return arch.init((spec["d"],), seed=0).eval()
    if kind == "transformer":
        return Encoder(spec).eval()
    if kind == "lstm":
        return Recurrent(spec).eval()
    c_in, h, w = spec["image"]
    mods, c = [], c_in
    if kind == "cnn":
        for ch in spec["channels"]:
            mods += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU()]
            c = ch
        mods += [nn.Flatten(), nn.Linear(c * h * w, spec["out"])]
    else:  # myrtle
        width = spec["width"]
        mods += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
        for repeat in spec["pools"]:
            mods += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
            mods += [nn.AvgPool2d(2)] * repeat
            h, w = h // 2 ** repeat, w // 2 ** repeat
        mods += [nn.Flatten(), nn.Linear(width * h * w, spec["out"])]
    return nn.Sequential(*mods).eval()


def port_stax(net, spec, leaves):
    """neural-tangents' parameters into the torch twin: Dense W (in, out), b (out,); Conv W
    (3, 3, in, out) HWIO; the Dense after a Flatten reads NHWC order."""
    layers = [m for m in net.modules()
              if m is not net and isinstance(getattr(m, "weight", None), torch.Tensor)]
    with torch.no_grad():
        for m, (w, b) in zip(layers, zip(leaves[0::2], leaves[1::2])):
            if isinstance(m, nn.Conv2d):
                w = w.transpose(3, 2, 0, 1)
            elif spec["kind"] in ("cnn", "myrtle"):
                c, h, wd = flatten_shape(spec)
                w = w.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(w.shape[-1], -1)
            else:
                w = w.T
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            m.bias.copy_(torch.from_numpy(b.reshape(-1).copy()))


def flatten_shape(spec):
    """(C, H, W) at the Flatten of a CNN case."""
    _, h, w = spec["image"]
    if spec["kind"] == "cnn":
        return spec["channels"][-1], h, w
    down = 2 ** sum(spec["pools"])
    return spec["width"], h // down, w // down


def make_inputs(name, spec):
    rng = np.random.default_rng(0)
    if spec["kind"] == "mlp":
        return rng.standard_normal((spec["n"], spec["d"])).astype(np.float32)
    if spec["kind"] == "transformer":
        return rng.integers(0, spec["vocab"], (spec["n"], spec["length"])).astype(np.int64)
    if spec["kind"] == "lstm":
        return rng.standard_normal((spec["n"], spec["length"], spec["d"])).astype(np.float32)
    return rng.standard_normal((spec["n"], *spec["image"])).astype(np.float32)


#: the grid of the cost-model check (--calibrate): case name -> (base case, changed sizes)
CALIBRATION = {
    "mlp_n20": ("mlp", {"n": 20}), "mlp_n200": ("mlp", {"n": 200}),
    "mlp_narrow_n200": ("mlp", {"widths": [64, 64], "n": 200}),
    "cnn_n20": ("cnn", {"n": 20}), "cnn_n100": ("cnn", {"n": 100}),
    "myrtle_w16_n20": ("myrtle", {"width": 16, "n": 20}),
    "transformer_n10": ("transformer", {"n": 10}), "transformer_n60": ("transformer", {"n": 60}),
    "transformer_n100": ("transformer", {"n": 100}),
    "lstm_n20": ("lstm", {"n": 20}), "lstm_n100": ("lstm", {"n": 100}),
}
LSTM = {"kind": "lstm", "d": 16, "hidden": 64, "length": 12, "out": 1, "n": 20}


def calibration_worker(args):
    """One grid case in this process: every implementation timed (interleaved, median of
    --repeats after a warm-up) at --threads intra-op threads, against the cost model's
    multiply-adds; prints one JSON line."""
    import time
    import warnings

    import ntkit as nk
    from ntkit.empirical import VmapFallbackWarning, cost
    from ntkit.empirical._model import ModelFunction
    from ntkit.empirical.auto import Request, choose, predicted_costs, predicted_times
    from ntkit.empirical.memory import default_budget

    base, change = CALIBRATION[args.case]
    spec = dict(LSTM if base == "lstm" else CASES[base], **change)
    net = build(spec)
    x = torch.from_numpy(make_inputs(args.case, spec))
    fn = ModelFunction(net)
    t1, _ = fn.inputs(x, None)
    req = Request(fn, t1, None, False, default_budget())
    gmacs = {k: v / 1e9 for k, v in predicted_costs(req, bool(req.rules.covered)).items()}
    moved = {k: v / 1e9 for k, v in predicted_costs(req, bool(req.rules.covered),
                                                     cost.traffic).items()}
    weighted = {k: v / 1e9 for k, v in predicted_times(req, bool(req.rules.covered)).items()}
    impls = list(gmacs)
    times = {i: [] for i in impls}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        for rep in range(args.repeats + 1):
            for i in impls:
                t0 = time.perf_counter()
                nk.empirical_ntk(net, x, implementation=i, threads=args.threads)
                if rep:  # the first round warms up
                    times[i].append(time.perf_counter() - t0)
    ms = {i: 1e3 * float(np.median(v)) for i, v in times.items()}
    chosen = choose(req, "auto")
    fastest = min(ms, key=ms.get)
    print(json.dumps({
        "n_params": fn.n_params, "n": spec["n"], "predicted_gmacs": gmacs,
        "predicted_g_numbers_moved": moved, "predicted_weighted": weighted,
        "measured_ms": ms, "ms_per_gmac": {i: ms[i] / gmacs[i] for i in impls},
        "auto_picks": chosen, "fastest_measured": fastest,
        "auto_slowdown": ms[chosen] / ms[fastest]}))


def calibrate(args):
    """The cost model against measured times over CALIBRATION (one fresh process per case):
    per case the predicted multiply-adds and the measured ms of each implementation, whether
    "auto" picks the fastest (and its slowdown otherwise); overall the ratio of measured time
    per predicted multiply-add of Jacobian contraction and NTK-vector products to that of
    structured derivatives in the same case (median and range), i.e. the measured values of
    ``cost.SECONDS_PER_MAC``."""
    from ntkit.empirical import VmapFallbackWarning, cost

    names = [c for c in (args.cases.split(",") if args.cases != DEFAULT_CASES else CALIBRATION)
             if c]
    result = {"threads": args.threads, "repeats": args.repeats,
              "seconds_per_mac_in_library": cost.SECONDS_PER_MAC,
              "seconds_per_number_in_library": cost.SECONDS_PER_NUMBER,
              "load_average_1min_at_start": os.getloadavg()[0], "cases": {}}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--calibrate-worker", "--case", name,
                               "--repeats", str(args.repeats), "--threads", str(args.threads)],
                              capture_output=True, text=True, env=os.environ)
        result["cases"][name] = (json.loads(proc.stdout.strip().splitlines()[-1])
                                 if proc.returncode == 0 else {"error": proc.stderr[-1500:]})
    ratios = {i: [] for i in ("jacobian", "ntvp")}
    for case in result["cases"].values():
        per = case.get("ms_per_gmac", {})
        for i in ratios:
            if i in per and "structured" in per:
                ratios[i].append(per[i] / per["structured"])
    result["measured_seconds_per_mac_over_structured"] = {
        i: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v))}
        for i, v in ratios.items() if v}
    done = [c for c in result["cases"].values() if "auto_picks" in c]
    result["auto_picks_fastest"] = f"{sum(c['auto_picks'] == c['fastest_measured'] for c in done)}/{len(done)}"
    result["worst_auto_slowdown"] = max((c["auto_slowdown"] for c in done), default=None)
    print(json.dumps(result, indent=1))


# -- subprocess workers ------------------------------------------------------------------------------
def worker(args):
    """One case x implementation in this (fresh) process; prints one JSON line."""
    sys.path.insert(0, str(Path(__file__).parent))
    import ntkit as nk
    from ntkit.empirical import resolve_implementation
    from _rss import peak_rss_mb, rss_mb
    from _timing import median_time

    data = np.load(args.data)
    spec = json.loads(str(data["spec"]))
    net = build(spec)
    state = {k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files
             if k.startswith("state/")}
    net.load_state_dict(state)
    x = torch.from_numpy(data["x"])
    impl, kw = args.impl, {}
    if impl == "auto_threads_1":
        impl, kw = "auto", {"threads": 1}
    used = []  # intra-op threads in effect while the model runs (ntkit's choice per call)
    net.register_forward_pre_hook(lambda *_: used.append(torch.get_num_threads()))
    base = rss_mb()
    seconds, kern = median_time(lambda: nk.empirical_ntk(net, x, implementation=impl, **kw),
                                args.repeats, slow_after=3.0)
    out = {"ms": 1e3 * seconds, "peak_rss_mb": peak_rss_mb(), "base_rss_mb": base,
           "torch_threads": torch.get_num_threads(),
           "threads_used": {str(t): used.count(t) for t in sorted(set(used))}}
    if args.impl == "auto":
        from ntkit.empirical._model import ModelFunction
        from ntkit.empirical.auto import Request, predicted_costs
        from ntkit.empirical.memory import default_budget

        out["resolves_to"] = resolve_implementation(net, x)
        fn = ModelFunction(net)
        t1, _ = fn.inputs(x, None)
        out["cost_model_gmacs"] = {k: v / 1e9 for k, v in predicted_costs(
            Request(fn, t1, None, False, default_budget())).items()}
        if args.save:
            np.save(args.save, kern.double().numpy())
    print(json.dumps(out))


def run_torch(name, spec, state, x, impl, repeats, tmp):
    path = Path(tmp) / f"{name}.npz"
    np.savez(path, spec=np.array(json.dumps(spec)), x=x,
             **{f"state/{k}": v.detach().numpy() for k, v in state.items()})
    save = Path(tmp) / f"{name}_ntk.npy"
    proc = subprocess.run([sys.executable, __file__, "--worker", "--impl", impl, "--data",
                           str(path), "--repeats", str(repeats), "--save", str(save)],
                          capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}, None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return res, (np.load(save) if impl == "auto" and save.exists() else None)


def run_peer(name, spec, x, net, repeats, skip_slow, tmp):
    """neural-tangents on one case in a fresh .peer-venv process: (timings, leaves, ntk)."""
    peer_spec = dict(spec, name=name, inputs="x")
    if skip_slow:  # structured derivatives; for the transformer also Jacobian contraction,
        # since neural-tangents' structured rule for the embedding gather runs out of memory
        peer_spec["implementations"] = [1, 3] if spec["kind"] == "transformer" else [3]
    arrays = {"x": x.transpose(0, 2, 3, 1).copy() if x.ndim == 4 else x}
    if spec["kind"] == "transformer":
        names = list(dict(net.named_parameters()))
        peer_spec["param_names"] = names
        for i, (k, p) in enumerate(net.named_parameters()):
            arrays[f"{name}_tp{i}"] = p.detach().numpy()
    inp, out = Path(tmp) / f"peer_{name}_in.npz", Path(tmp) / f"peer_{name}_out.npz"
    np.savez(inp, config=np.array(json.dumps({"repeats": repeats, "models": [peer_spec]})),
             **arrays)
    proc = subprocess.run([str(PEER), str(ROOT / "benchmarks" / "peer" / "nt_empirical_ntk.py"),
                           str(inp), str(out)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}, None, None
    res = np.load(out)
    leaves = [res[f"{name}_p{i}"] for i in range(sum(k.startswith(f"{name}_p") for k in res.files))]
    ntk = res[f"{name}_ntk"] if f"{name}_ntk" in res.files else None
    timings = json.loads(str(res["timings"]))[name]
    if spec["kind"] == "transformer":  # the twin: same outputs on the same weights?
        with torch.no_grad():
            mine = net(torch.from_numpy(x)).double().numpy()
        theirs = res[f"{name}_out"]
        timings["twin_max_rel_diff_outputs"] = float(np.abs(mine - theirs).max()
                                                     / np.abs(theirs).max())
        timings["twin_same_n_params"] = timings["n_params"] == sum(
            q.numel() for q in net.parameters())
    return timings, leaves, ntk


def start_busy(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


DEFAULT_CASES = "mlp,cnn,myrtle,transformer"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"cases; with --calibrate names of the grid: {','.join(CALIBRATION)}")
    p.add_argument("--calibrate", action="store_true",
                   help="check the cost model of 'auto' against measured times over a grid")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads under --calibrate")
    p.add_argument("--calibrate-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a correctness smoke run)")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--skip-slow", action="store_true",
                   help="only ntkit's structured/auto (and Jacobians for the transformer) "
                        "and neural-tangents' implementation 3 (and 1 for the transformer)")
    p.add_argument("--busy", type=int, default=0, help="cores kept busy during measurements")
    p.add_argument("--memory", action="store_true", help="add the 10M-parameter memory case")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.calibrate_worker:
        return calibration_worker(args)
    if args.calibrate:
        return calibrate(args)
    names = [c for c in args.cases.split(",") if c] + (["mem10m"] if args.memory else [])
    busy = start_busy(args.busy)
    result = {"machine": {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "busy_processes": args.busy, "tiny": args.tiny,
                          "load_average_1min_at_start": os.getloadavg()[0]}, "cases": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                spec = dict(CASES[name], **(TINY.get(name, {}) if args.tiny else {}))
                x = make_inputs(name, spec)
                net = build(spec)
                case = {"spec": spec, "n_params": sum(q.numel() for q in net.parameters())}
                use_peer = PEER.exists() and not args.no_peer and spec.get("peer", True)
                nt_ntk = None
                if use_peer:
                    case["neural_tangents"], leaves, nt_ntk = run_peer(
                        name, spec, x, net, args.repeats, args.skip_slow, tmp)
                    if leaves:
                        port_stax(net, spec, leaves)
                impls = (["auto"] if name == "mem10m" else
                         IMPLS + ["auto_threads_1"] if not args.skip_slow else
                         ["jacobian", "structured", "auto", "auto_threads_1"]
                         if spec["kind"] == "transformer" else  # both close (--calibrate)
                         ["structured", "auto", "auto_threads_1"])
                case["ntkit"] = {}
                for impl in impls:
                    res, kern = run_torch(name, spec, net.state_dict(), x, impl, args.repeats,
                                          tmp)
                    case["ntkit"][impl] = res
                    if kern is not None and nt_ntk is not None:
                        ref = nt_ntk.astype(np.float64)
                        case["max_rel_diff_vs_nt"] = float(np.abs(kern - ref).max()
                                                           / np.abs(ref).max())
                measured = {k: v["ms"] for k, v in case["ntkit"].items()
                            if k in ("jacobian", "ntvp", "structured") and "ms" in v}
                if len(measured) == 3 and "resolves_to" in case["ntkit"].get("auto", {}):
                    fastest = min(measured, key=measured.get)
                    case["fastest_measured"] = fastest
                    case["auto_is_fastest"] = case["ntkit"]["auto"]["resolves_to"] == fastest
                nt = case.get("neural_tangents", {})
                auto = case["ntkit"].get("auto", {}).get("ms")
                if isinstance(nt.get("3"), float) and auto:
                    case["nt_structured_over_ntkit_auto"] = 1e3 * nt["3"] / auto
                nt_times = [v for key, v in nt.items() if key in "123" and isinstance(v, float)]
                if nt_times and auto:
                    case["nt_best_over_ntkit_auto"] = 1e3 * min(nt_times) / auto
                result["cases"][name] = case
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
