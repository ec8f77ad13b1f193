"""``ntkit experiment``: run one registered reproduction (``ntkit.experiments.REGISTRY``)."""
from __future__ import annotations

import inspect
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List

from .common import Context, UsageError


def list_experiments() -> str:
    from ..experiments import REGISTRY, names

    width = max(len(n) for n in names())
    return "\n".join(f"{n:<{width}}  {REGISTRY[n][1]}" for n in names())


def _convert(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if "," in text:
        return [_convert(part) for part in text.split(",") if part != ""]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(extra: List[str]) -> Dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` -> {key: value}: dashes in keys become
    underscores, values are converted to bool/int/float/None, and comma lists to lists."""
    options: Dict[str, Any] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        m = re.fullmatch(r"--([A-Za-z][\w-]*)(?:=(.*))?", arg)
        if not m:
            raise UsageError(f"unexpected argument {arg!r}: experiment options are given as "
                             f"--name value or --name=value")
        key = m.group(1).replace("-", "_")
        if m.group(2) is not None:
            options[key] = _convert(m.group(2))
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            options[key] = _convert(extra[i + 1])
            i += 2
        else:
            options[key] = True
            i += 1
    return options


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def run_experiment(ctx: Context, name: str, out_dir: Path, quick: bool,
                   options: Dict[str, Any]) -> dict:
    """Import and run experiment ``name`` into ``out_dir``; returns its results dict. Global
    options reach the experiment as keyword arguments when its ``run`` names them
    (``device``, ``dtype``, ``data_dir``, ``progress``); ``$NTKIT_DATA_DIR`` is set to
    ``--data-dir`` for experiments that read the default."""
    from ..experiments import REGISTRY, get

    if name not in REGISTRY:
        raise UsageError(f"unknown experiment {name!r}; run 'ntkit experiment --list' "
                         f"(available: {', '.join(sorted(REGISTRY))})")
    try:
        run = get(name)
    except ImportError as err:
        raise RuntimeError(f"experiment {name!r} is registered but its module "
                           f"ntkit.experiments.{REGISTRY[name][0]} cannot be imported: {err}")
    if ctx.data_dir is not None:
        os.environ["NTKIT_DATA_DIR"] = str(ctx.data_dir)
    extra = {"device": ctx.device, "dtype": ctx.dtype, "data_dir": ctx.data_dir,
             "progress": not ctx.quiet}
    for key, value in extra.items():
        if key not in options and _accepts(run, key) and value is not None:
            options[key] = value
    params = inspect.signature(run).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown:
        known = [p for p in params if p not in ("out_dir", "quick", "seed")
                 and params[p].kind is not params[p].VAR_KEYWORD]
        raise UsageError(f"experiment {name!r} has no option {', '.join('--' + k for k in unknown)}"
                         f" (its options: {', '.join('--' + k for k in known) or 'none'})")
    ctx.say(f"experiment {name}{' (quick)' if quick else ''} -> {out_dir}")
    start = time.perf_counter()
    try:
        results = run(Path(out_dir), quick=quick, seed=ctx.seed, **options)
    except TypeError as err:  # an experiment taking **options rejects one it does not know
        if options and "option" in str(err):
            raise UsageError(f"experiment {name!r}: {err}") from None
        raise
    seconds = time.perf_counter() - start
    figures = sorted(p.name for p in Path(out_dir).glob("*.png"))
    ctx.say(f"done in {seconds:.1f} s; wrote {', '.join(figures + ['results.json'])} in {out_dir}")
    if not ctx.quiet and isinstance(results, dict):
        summary = {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool))}
        if summary:
            print(json.dumps(summary, indent=1, default=str)[:2000])
    return results if isinstance(results, dict) else {}
