"""``ntkit experiment``: run one registered reproduction (``ntkit.experiments.REGISTRY``), with
its declared options (``experiment_options``) given as ``--name value`` and listed by
``ntkit experiment NAME --help``."""
from __future__ import annotations

import inspect
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

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


#: run() parameters every experiment has, given by the command's own options
_FIXED = ("out_dir", "quick", "seed")
#: run() parameters filled from the global options when the experiment declares them
_GLOBAL = {"device": "--device", "dtype": "--dtype", "data_dir": "--data-dir",
           "progress": "--quiet (off)"}


@dataclass
class Option:
    """One declared option of an experiment: ``default`` of the full run, ``quick`` of the quick
    configuration, ``is_list`` when it takes several values (one value is a list of one)."""

    name: str
    default: Any
    quick: Any
    is_list: bool
    global_option: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _is_list(values, annotation) -> bool:
    if any(isinstance(v, (list, tuple)) for v in values):
        return True
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return bool(re.search(r"\b(Sequence|List|list|Tuple|tuple)\b", str(text)))


def experiment_options(name: str) -> List[Option]:
    """The options experiment ``name`` declares: the keyword parameters of its ``run`` (their
    defaults) and the keys of its module's ``FULL`` and ``QUICK`` configurations."""
    from ..experiments import module

    mod = module(name)
    full, quick = getattr(mod, "FULL", {}), getattr(mod, "QUICK", {})
    out: List[Option] = []
    for p in inspect.signature(mod.run).parameters.values():
        if p.name in _FIXED or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = None if p.default is p.empty else p.default
        if default is None and p.name in full:
            default = full[p.name]
        q = quick.get(p.name, default)
        out.append(Option(p.name, default, q, _is_list((default, q), p.annotation),
                          _GLOBAL.get(p.name)))
    known = {o.name for o in out}
    for key, default in full.items():
        if key not in known:
            q = quick.get(key, default)
            out.append(Option(key, default, q, _is_list((default, q), None)))
    return out


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def experiment_help(name: str) -> str:
    """``ntkit experiment NAME --help``: what the experiment reproduces and its options, each
    with its default and its quick value."""
    from ..experiments import REGISTRY, module

    if name not in REGISTRY:
        raise UsageError(f"unknown experiment {name!r}; run 'ntkit experiment --list' "
                         f"(available: {', '.join(sorted(REGISTRY))})")
    doc = (module(name).__doc__ or "").strip().split("\n\n")[0]
    lines = [f"usage: ntkit experiment {name} [--out DIR] [--quick] [--seed N] [--OPTION VALUE ...]",
             "", f"{name}: {REGISTRY[name][1]}", "", doc, "",
             "options (--name VALUE or --name=VALUE; a list takes one value or several, "
             "comma-separated):"]
    rows = []
    for o in experiment_options(name):
        if o.name == "progress":
            continue
        value = " LIST" if o.is_list else " VALUE"
        where = (f"set by the global option {o.global_option}" if o.global_option else
                 f"default {_show(o.default)}" + (f", quick {_show(o.quick)}"
                                                   if _show(o.quick) != _show(o.default) else ""))
        if o.global_option is None and o.name in _GLOBAL:
            where += f" (the global option {_GLOBAL[o.name]} sets it)"
        rows.append((o.flag + value, where))
    width = max([len(r[0]) for r in rows] + [0])
    lines += [f"  {flag:<{width}}  {where}" for flag, where in rows] or ["  (none)"]
    lines += ["", "  --out DIR  output folder (default runs/NAME); --quick: the quick configuration;",
              "  --seed N; global options: see 'ntkit --help'"]
    return "\n".join(lines)


def _coerce(options: Dict[str, Any], declared: List[Option]) -> Dict[str, Any]:
    """A single value given to a list option becomes a list of one (``--depths 3``)."""
    lists = {o.name for o in declared if o.is_list}
    return {k: ([v] if k in lists and not isinstance(v, (list, tuple)) and v is not None else v)
            for k, v in options.items()}


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def run_experiment(ctx: Context, name: str, out_dir: Path, quick: bool,
                   options: Dict[str, Any], given: Sequence[str] = ()) -> dict:
    """Import and run experiment ``name`` into ``out_dir``; returns its results dict. Global
    options reach the experiment as keyword arguments when its ``run`` names them
    (``device``, ``dtype``, ``data_dir``, ``progress``), or when its configuration declares them
    and they were ``given`` on the command line (e.g. ``dtype`` of width-sweep);
    ``$NTKIT_DATA_DIR`` is set to ``--data-dir`` for experiments that read the default."""
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
    declared = experiment_options(name)
    extra = {"device": ctx.device, "dtype": ctx.dtype, "data_dir": ctx.data_dir,
             "progress": not ctx.quiet}
    in_config = {o.name for o in declared if o.global_option is None}
    for key, value in extra.items():
        wanted = _accepts(run, key) and key not in in_config or key in in_config and key in given
        if key not in options and wanted and value is not None:
            options[key] = value
    unknown = [k for k in options if k not in {o.name for o in declared}]
    if unknown:
        known = [o.flag for o in declared if o.name != "progress"]
        raise UsageError(f"experiment {name!r} has no option "
                         f"{', '.join('--' + k.replace('_', '-') for k in unknown)} (its options: "
                         f"{', '.join(known) or 'none'}; see 'ntkit experiment {name} --help')")
    options = _coerce(options, declared)
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
