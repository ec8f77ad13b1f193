"""The ``ntkit`` command.

    ntkit kernel --arch ARCH --data DATA --out FILE [--split train|test] [--n N]
    ntkit fit --arch ARCH --data DATA [--kernel ntk|nngp] [--t T] [--diag-reg R]
              [--solver cg --store K.zarr]     or     ntkit fit --kernel K.zarr --data DATA
    ntkit experiment NAME [--out DIR] [--quick] [--OPTION VALUE ...]  |  ntkit experiment --list
    ntkit reproduce [NAME ...] [--out results] [--shard I/K]   (full runs into results/NAME)
    ntkit demo [--out DIR] [--quick] [--results DIR]

Global options (before or after the subcommand): --quiet, --device auto|cpu|cuda,
--dtype float32|float64, --seed N, --data-dir DIR, --threads N.
Exit codes: 0 success, 2 bad usage or input (message names the problem), 1 runtime failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from .commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Context, UsageError

_ARCH_HELP = ("architecture: a preset such as 'fc:depth=3,act=relu,W_std=1.414,b_std=0.05' or "
              "'cnn:depth=6,readout=gap', or a .yaml/.json file listing layers "
              "(see 'ntkit --help-arch')")
_DATA_HELP = "dataset: digits (embedded), mnist, cifar10 or uci:<name> (read from --data-dir)"

_ARCH_GUIDE = """\
Architecture syntax (--arch)

Presets, name:key=value,... (every key optional):
  fc:depth=3,act=relu,W_std=1.414,b_std=0.05,width=512,param=ntk,out=1
      depth x [Linear(width), act], then Linear(out)
  cnn:depth=6,readout=gap,channels=256,kernel=3,stride=1,padding=same,act=relu,W_std=1.414,b_std=0
      depth x [Conv2d(channels, kernel), act], GlobalAvgPool2d (gap) or Flatten, Linear(out)
  myrtle:depth=5|7|10   wide_resnet:depth=16,k=4   cntk:depth=14,gap (or flatten)
      the literature's networks (ntkit.myrtle, wide_resnet, cntk); also width, pool, param, out
  act: relu, erf, gelu, sin, tanh, sigmoid, identity, leakyrelu(0.1), abrelu(a,b), ...
  b_std=none: no bias parameter. param: ntk or standard. Numbers may be written sqrt(2).

A YAML or JSON file (or the same text inline, starting with '[') listing ntkit layers:
  - Linear: {out_features: 512, W_std: 1.5, b_std: 0.05}
  - ReLU
  - Linear: {out_features: 1, W_std: 1.5}
Layers: %s.
"""


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The global options; ``suppress`` (for subcommands) keeps values given before the
    subcommand from being overwritten by the subparser's defaults."""
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = parser.add_argument_group("global options")
    g.add_argument("--quiet", "-q", action="store_true", default=d(False),
                   help="no progress bars and no messages (results and errors still printed)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d("auto"),
                   help="torch device for kernel computations (default: auto, CUDA when torch "
                        "sees a GPU, else the CPU)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=d("float64"),
                   help="floating-point type of inputs and kernels (default: float64)")
    g.add_argument("--seed", type=int, default=d(0), help="random seed (default: 0)")
    g.add_argument("--threads", type=_positive_int, default=d(None), metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 can be much faster "
                        "on a machine busy with other work)")
    g.add_argument("--data-dir", type=Path, default=d(None), metavar="DIR",
                   help="folder holding mnist/, cifar10/, uci/ (default: $NTKIT_DATA_DIR, "
                        "else ../shared/data next to the checkout)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ntkit",
        description="Infinite-width NNGP and Neural Tangent Kernels: compute kernels, fit kernel "
                    "estimators, run the reproductions, or build the demo report.",
        epilog="exit codes: 0 success, 2 bad usage or input, 1 runtime failure. "
               "Start with: ntkit demo --out ntkit-report")
    parser.add_argument("--version", action="version", version=f"ntkit {_version()}")
    parser.add_argument("--help-arch", action="store_true",
                        help="explain the architecture syntax and exit")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("kernel", help="compute NNGP/NTK matrices of an architecture on a dataset",
                       description="Compute the NNGP and NTK matrices of ARCH on a dataset and "
                                   "save them (with the row/column labels) in an .npz file, or "
                                   "as tiles in a Zarr store (--out K.zarr) computed on a Dask "
                                   "cluster and resumed where it stopped.")
    p.add_argument("--arch", help=_ARCH_HELP + " (required unless --info)")
    p.add_argument("--data", help=_DATA_HELP + " (required unless --info)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="output .npz file (arrays nngp, ntk, y_rows, y_cols, meta), or a .zarr "
                        "store (ntkit.scale: tiles on Dask; an existing store is resumed)")
    p.add_argument("--info", type=Path, metavar="STORE",
                   help="print what a .zarr kernel store holds and how complete it is, and exit")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="with --out K.zarr: a Dask scheduler address (default: a local cluster)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="train: K(train, train); test: K(test, train) (default: train)")
    p.add_argument("--n", type=_positive_int, default=None, metavar="N",
                   help="use N rows of each split (a fixed random subset; default: all)")
    p.add_argument("--kernel", choices=("both", "ntk", "nngp"), default="both",
                   help="which matrices to compute (default: both)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                   help="rows/columns per computed block (memory ~ B^2)")
    _global_options(p, suppress=True)

    p = sub.add_parser("fit", help="fit an NTK/NNGP kernel estimator and print test metrics",
                       description="Fit kernel regression with the NTK (nk.NTKClassifier) or the "
                                   "NNGP (nk.NNGPRegressor on one-hot targets) on the training "
                                   "split; print accuracy and MSE on the test split.")
    p.add_argument("--arch", help=_ARCH_HELP + " (required unless --kernel K.zarr)")
    p.add_argument("--data", required=True, help=_DATA_HELP)
    p.add_argument("--kernel", default="ntk", metavar="ntk|nngp|K.zarr",
                   help="kernel of the estimator (default: ntk), or a Zarr store of "
                        "K(train, train) from 'ntkit kernel --out K.zarr' to fit from (its "
                        "architecture; solved by conjugate gradients)")
    p.add_argument("--solver", choices=("direct", "cg"), default="direct",
                   help="direct: kernels in memory (default); cg: the train kernel as tiles "
                        "in --store on Dask, preconditioned conjugate gradients (NTK only)")
    p.add_argument("--store", type=Path, default=None, metavar="K.zarr",
                   help="with --solver cg: the Zarr store for the train kernel's tiles "
                        "(resumed if it exists; default: no store, tiles recomputed in "
                        "every CG iteration)")
    p.add_argument("--test-kernel", type=Path, default=None, metavar="KT.zarr",
                   help="with --kernel K.zarr: a store of K(test, train) ('ntkit kernel "
                        "--split test'); default: recomputed tile by tile")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="with --solver cg or --kernel K.zarr: a Dask scheduler address")
    p.add_argument("--cg-tol", type=float, default=1e-3, metavar="TOL",
                   help="CG stops at this relative residual (default: 1e-3; MNIST test "
                        "accuracy is settled from ~1e-2, docs/scale.md)")
    p.add_argument("--cg-max-iter", type=_positive_int, default=300, metavar="N",
                   help="CG iteration cap (default: 300)")
    p.add_argument("--cg-centres", type=int, default=1000, metavar="M",
                   help="Nyström preconditioner centres, 0 for none (default: 1000)")
    p.add_argument("--t", type=float, default=None, metavar="T",
                   help="training time of gradient flow (default: infinite, kernel regression)")
    p.add_argument("--diag-reg", type=float, default=0.0, metavar="R",
                   help="ridge added to the diagonal, relative to its mean (default: 0)")
    p.add_argument("--n-train", type=_positive_int, default=None, metavar="N",
                   help="use N training rows (a fixed random subset; default: all)")
    p.add_argument("--n-test", type=_positive_int, default=None, metavar="N",
                   help="use N test rows (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="B",
                   help="rows/columns per kernel block")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _global_options(p, suppress=True)

    p = sub.add_parser("experiment", help="run one reproduction (figures + results.json)",
                       add_help=False,
                       description="Run a registered reproduction, writing its figures and a "
                                   "results.json into --out. Options the experiment takes are "
                                   "given as --name value; 'ntkit experiment NAME --help' lists "
                                   "them with their defaults.")
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("-h", "--help", action="store_true", dest="help_experiment",
                   help="show this help, or with NAME the experiment's options and defaults")
    p.set_defaults(format_experiment_help=p.format_help)
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: runs/NAME)")
    p.add_argument("--quick", action="store_true", help="the small, fast configuration")
    _global_options(p, suppress=True)

    p = sub.add_parser("reproduce", help="run experiments in full into results/NAME (the "
                                         "full-run numbers kept in the repository)",
                       description="Run each named experiment (default: all of them) in its "
                                   "full configuration into OUT/NAME (results.json and "
                                   "figures), one after the other, and list what ran with its "
                                   "wall time. A failure is reported after the others ran (exit "
                                   "status 1). With one NAME, experiment options may follow it "
                                   "as --name value (recorded in results.json).")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments (default: all)")
    p.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                   help="folder of the NAME/ result folders (default: results)")
    p.add_argument("--shard", default=None, metavar="I/K",
                   help="run shard I of K of the experiments that split into units; the others "
                        "run in shard 1 only; run again without --shard to merge")
    p.add_argument("--quick", action="store_true",
                   help="the quick configurations (for tests of this command; labelled quick)")
    _global_options(p, suppress=True)

    p = sub.add_parser("demo", help="the main job: compare kernels and baselines on digits, run "
                                    "the fast experiments, write an HTML report",
                       description="On scikit-learn's digits, compare NTK and NNGP kernel "
                                   "regression at several depths with an RBF SVM, a random "
                                   "forest and a trained MLP; run the fast experiments; write "
                                   "OUT/index.html with figures, tables and results.json. Runs "
                                   "on one torch thread unless --threads is given.")
    p.add_argument("--out", type=Path, default=Path("ntkit-report"), metavar="DIR",
                   help="report folder (default: ntkit-report)")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run (subset of digits, fewer depths) for tests")
    p.add_argument("--experiments", default=None, metavar="LIST",
                   help="comma-separated experiments to include, 'all' or 'none' "
                        "(default: the fast ones; none with --quick)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="folder of the full runs kept by 'ntkit reproduce' (results/NAME/), "
                        "shown in the report beside the quick runs; 'none' to leave them out "
                        "(default: results)")
    _global_options(p, suppress=True)
    return parser


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "?"


def _context(args) -> Context:
    data_dir = args.data_dir
    if data_dir is None:
        from .data.paths import default_data_dir
        data_dir = default_data_dir()
    from .commands.common import resolve_device
    ctx = Context(quiet=args.quiet, device=resolve_device(args.device), dtype=args.dtype,
                  seed=args.seed,
                  data_dir=Path(data_dir).expanduser(), threads=args.threads)
    if ctx.threads is not None:
        import torch
        torch.set_num_threads(ctx.threads)
    return ctx


def _arch(text: str):
    from .commands.archspec import parse_arch
    return parse_arch(text)


def _cmd_kernel(ctx: Context, args) -> int:
    from .commands.common import writable_file
    from .commands.kernel import run_kernel

    if args.info is not None:
        from .commands.kernel import store_info
        print(json.dumps(store_info(args.info), indent=1))
        return EXIT_OK
    missing = [flag for flag, v in (("--arch", args.arch), ("--data", args.data),
                                    ("--out", args.out)) if v is None]
    if missing:
        raise UsageError(f"ntkit kernel needs {', '.join(missing)} (or --info STORE)")
    arch = _arch(args.arch)
    out = args.out
    get = ("nngp", "ntk") if args.kernel == "both" else (args.kernel,)
    if out.suffix == ".zarr":
        from .commands.kernel import run_kernel_store
        ctx.seed_everything()
        run_kernel_store(ctx, arch, args.arch, args.data, out, args.split, args.n, get,
                         args.batch_size, args.scheduler)
        return EXIT_OK
    if args.scheduler is not None:
        raise UsageError("--scheduler needs --out K.zarr (a Zarr kernel store)")
    if not out.is_dir() and out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # what np.savez would write
    writable_file(out)
    ctx.seed_everything()
    run_kernel(ctx, arch, args.arch, args.data, out, args.split, args.n, get, args.batch_size)
    return EXIT_OK


def _cmd_fit(ctx: Context, args) -> int:
    import json

    from .commands.fit import fit_from_args, format_metrics

    metrics = fit_from_args(ctx, args)
    print(json.dumps(metrics, indent=1) if args.json else format_metrics(metrics))
    return EXIT_OK


def _cmd_experiment(ctx: Context, args, extra: List[str], given: List[str]) -> int:
    from .commands.common import writable_dir
    from .commands.experiment import (experiment_help, list_experiments, parse_options,
                                      run_experiment)

    if args.help_experiment:
        print(experiment_help(args.name) if args.name else args.format_experiment_help())
        return EXIT_OK
    if args.list:
        print(list_experiments())
        return EXIT_OK
    if not args.name:
        raise UsageError("give an experiment NAME, or --list to see them")
    options = parse_options(extra)
    out = writable_dir(args.out or Path("runs") / args.name)
    ctx.seed_everything()
    run_experiment(ctx, args.name, out, args.quick, options, given)
    return EXIT_OK


def _cmd_reproduce(ctx: Context, args, extra: List[str], given: List[str],
                   argv: List[str]) -> int:
    from .commands.experiment import parse_options
    from .commands.reproduce import command_line, reproduce, summary

    outcomes = reproduce(ctx, args.names, args.out, quick=args.quick, shard=args.shard,
                         options=parse_options(extra), given=given, command=command_line(argv))
    print(summary(outcomes))
    return EXIT_FAILURE if any(o.status == "failed" for o in outcomes) else EXIT_OK


def _cmd_demo(ctx: Context, args) -> int:
    from .commands.common import writable_dir
    from .report.demo import run_demo, select_experiments

    try:
        names = select_experiments(args.experiments, args.quick)
    except ValueError as err:
        raise UsageError(str(err)) from None
    out = writable_dir(args.out, "report folder")
    if ctx.threads is None:
        # the demo is many small tensor operations: a second torch thread gains little on an
        # idle machine and loses many times over on a busy one (threads wait on each other)
        import torch
        torch.set_num_threads(1)
        ctx.threads = 1
    ctx.seed_everything()
    index = run_demo(out, names, quick=args.quick, seed=ctx.seed, dtype=ctx.dtype,
                     device=ctx.device, say=None if ctx.quiet else ctx.say,
                     progress=None if ctx.quiet else ctx.progress,
                     results_dir=None if args.results.lower() == "none" else Path(args.results))
    print(f"report: {index}")
    return EXIT_OK


def _given_globals(argv: List[str]) -> List[str]:
    """The global options written on the command line (not defaults), as run() names:
    'device', 'dtype', 'data_dir'."""
    names = {"--device": "device", "--dtype": "dtype", "--data-dir": "data_dir"}
    return [names[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in names]


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``ntkit`` console script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if args.help_arch:
        from .commands.archspec import layer_classes
        print(_ARCH_GUIDE % ", ".join(sorted(layer_classes())))
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if extra and args.command not in ("experiment", "reproduce"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # exits with code 2
    prog = f"ntkit {args.command}"
    try:
        ctx = _context(args)
        if args.command == "kernel":
            return _cmd_kernel(ctx, args)
        if args.command == "fit":
            return _cmd_fit(ctx, args)
        if args.command == "experiment":
            return _cmd_experiment(ctx, args, extra, _given_globals(argv))
        if args.command == "reproduce":
            return _cmd_reproduce(ctx, args, extra, _given_globals(argv), argv)
        return _cmd_demo(ctx, args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - mapped to exit codes below
        from .commands.archspec import ArchSpecError
        from .data.registry import DataNotFoundError, DatasetError

        if isinstance(err, (UsageError, ArchSpecError, DatasetError, DataNotFoundError)):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        if os.environ.get("NTKIT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        if not os.environ.get("NTKIT_DEBUG"):
            print("(set NTKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
