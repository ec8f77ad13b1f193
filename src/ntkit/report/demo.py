"""``ntkit demo``: the digits comparison, the fast experiments, and the HTML report.

Layout of the report folder::

    index.html            the page
    results.json          every number on the page (the tables are checked against it)
    digits-kernels/       figures + results.json of the digits comparison
    experiments/NAME/     figures + results.json of each fast experiment (quick runs)
    full/NAME/            figures of the full runs kept in ``results/NAME/`` (``ntkit
                          reproduce``), shown first and labelled with their date and machine
"""
from __future__ import annotations

import json
import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

#: experiments the full demo runs (quick variants); the others need data or more time
DEMO_EXPERIMENTS = ("width-sweep", "unit-circle", "ntk-gp", "linearization", "ntk-drift",
                    "two-layer-sigmoid", "lazy-training", "deep-limits", "kernel-pca",
                    "error-prediction", "ntk-principal", "eigen-rate", "nngp-init")


def select_experiments(experiments: Optional[str], quick: bool) -> List[str]:
    """The experiments a demo runs besides the digits comparison: ``experiments`` is a
    comma-separated list, 'all' or 'none'; None means DEMO_EXPERIMENTS (none when quick).
    ValueError naming the unknown names and the choices."""
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
        raise ValueError(f"--experiments: unknown experiment(s) {', '.join(unknown)}; available: "
                         f"{', '.join(sorted(REGISTRY))}")
    return [n for n in names if n != "digits-kernels"]


def _run_experiment(name: str, out_dir: Path, seed: int) -> Dict[str, Any]:
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
        results = module.run(out_dir, quick=True, seed=seed, progress=False)
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


def _environment(device: str, dtype: str, seed: int) -> Dict[str, Any]:
    import os

    import torch

    from .. import __version__
    return {"ntkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device, "dtype": dtype,
            "seed": seed}


def run_demo(out: Path, experiments: Sequence[str], *, quick: bool = False, seed: int = 0,
             dtype: str = "float64", device: str = "cpu",
             say: Optional[Callable[[str], None]] = None,
             progress: Optional[Callable[..., Iterable]] = None,
             results_dir: Optional[Path] = None) -> Path:
    """Run the digits comparison and the named ``experiments`` (quick variants), and write
    ``out/index.html`` (returned) and ``out/results.json``. ``results_dir``: the folder of the
    full runs kept in the repository (``results/``; None: none shown).

    ``say(message)`` prints status lines and ``progress(iterable, desc=...)`` wraps a loop in a
    progress bar (the command line passes its own; None: silent).
    """
    from ..experiments import digits_kernels
    from .full_runs import collect_full_runs
    from .page import render

    say = say or (lambda message: None)
    names = list(experiments)
    start = time.perf_counter()
    say(f"demo: digits comparison{' (quick)' if quick else ''}, then "
        f"{len(names)} experiment(s) -> {out}")
    digits = digits_kernels.run(out / "digits-kernels", quick=quick, seed=seed, dtype=dtype,
                                device=device, progress=progress is not None)
    done: Dict[str, Any] = {}
    loop = names if progress is None else progress(names, desc="experiments", unit="exp")
    for name in loop:
        done[name] = _run_experiment(name, out / "experiments" / name, seed)
        status = done[name]["status"]
        say(f"  {name}: {status}" + (f" ({done[name].get('seconds', 0):.1f} s)"
                                     if status != "skipped" else ""))
    results = {
        "title": "ntkit report",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(quick),
        "environment": _environment(device, dtype, seed),
        "digits": _jsonable(digits),
        "experiments": done,
        "full_runs": collect_full_runs(results_dir, out),
    }
    if results["full_runs"]:
        say(f"  full runs from {results_dir}: {', '.join(results['full_runs'])}")
    results["total_seconds"] = round(time.perf_counter() - start, 2)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    index = out / "index.html"
    index.write_text(render(results), encoding="utf-8")
    say(f"demo: done in {results['total_seconds']:.1f} s")
    return index
