"""``ntkit demo``: the digits comparison, the fast experiments, and the HTML report.

Layout of the report folder::

    index.html            the page
    results.json          every number on the page (the tables are checked against it)
    digits-kernels/       figures + results.json of the digits comparison
    experiments/NAME/     figures + results.json of each fast experiment
"""
from __future__ import annotations

import json
import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..commands.common import Context, UsageError

#: experiments the full demo runs (quick variants); the others need data or more time
DEMO_EXPERIMENTS = ("width-sweep", "unit-circle", "ntk-gp", "linearization", "ntk-drift",
                    "two-layer-sigmoid", "lazy-training", "deep-limits", "kernel-pca",
                    "error-prediction")


def _select(experiments: Optional[str], quick: bool) -> List[str]:
    from ..experiments import REGISTRY

    if experiments is None:
        return [] if quick else list(DEMO_EXPERIMENTS)
    text = experiments.strip().lower()
    if text == "none":
        return []
    if text == "all":
        return [n for n in sorted(REGISTRY) if n != "digits-kernels"]
    names = [n.strip() for n in experiments.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageError(f"--experiments: unknown experiment(s) {', '.join(unknown)}; available: "
                         f"{', '.join(sorted(REGISTRY))}")
    return [n for n in names if n != "digits-kernels"]


def _run_experiment(ctx: Context, name: str, out_dir: Path) -> Dict[str, Any]:
    """Run one quick experiment in-process; failures are recorded, not raised."""
    import importlib

    from ..experiments import REGISTRY

    module_name = f"ntkit.experiments.{REGISTRY[name][0]}"
    entry: Dict[str, Any] = {"description": REGISTRY[name][1], "dir": f"experiments/{name}"}
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        entry.update(status="skipped", reason=f"not available in this installation ({err})")
        return entry
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        results = module.run(out_dir, quick=True, seed=ctx.seed)
        entry.update(status="ok", results=_jsonable(results))
    except Exception as err:  # noqa: BLE001 - one failing experiment must not sink the report
        entry.update(status="failed", reason=f"{type(err).__name__}: {err}",
                     traceback=traceback.format_exc(limit=4))
    entry["seconds"] = round(time.perf_counter() - start, 2)
    entry["figures"] = sorted(p.name for p in out_dir.glob("*.png"))
    return entry


def _jsonable(obj: Any) -> Any:
    """A JSON round trip (numpy scalars and arrays become plain numbers and lists)."""
    import numpy as np

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, default=default))


def _environment(ctx: Context) -> Dict[str, Any]:
    import os

    import torch

    from .. import __version__
    return {"ntkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": ctx.device, "dtype": ctx.dtype,
            "seed": ctx.seed}


def run_demo(ctx: Context, out: Path, quick: bool = False,
             experiments: Optional[str] = None) -> Path:
    """Run everything and write ``out/index.html`` (returned) and ``out/results.json``."""
    from ..experiments import digits_kernels
    from .page import render

    names = _select(experiments, quick)
    start = time.perf_counter()
    ctx.say(f"demo: digits comparison{' (quick)' if quick else ''}, then "
            f"{len(names)} experiment(s) -> {out}")
    digits = digits_kernels.run(out / "digits-kernels", quick=quick, seed=ctx.seed,
                                dtype=ctx.dtype, device=ctx.device, progress=not ctx.quiet)
    done: Dict[str, Any] = {}
    bar = ctx.progress(names, desc="experiments", unit="exp")
    for name in bar:
        bar.set_postfix_str(name)
        done[name] = _run_experiment(ctx, name, out / "experiments" / name)
        status = done[name]["status"]
        if not ctx.quiet:
            bar.write(f"  {name}: {status}" + (f" ({done[name].get('seconds', 0):.1f} s)"
                                               if status != "skipped" else ""))
    results = {
        "title": "ntkit report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(quick),
        "environment": _environment(ctx),
        "digits": _jsonable(digits),
        "experiments": done,
    }
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    index = out / "index.html"
    index.write_text(render(results), encoding="utf-8")
    ctx.say(f"demo: done in {results['total_seconds']:.1f} s")
    return index
