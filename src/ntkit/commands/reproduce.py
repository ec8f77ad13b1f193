"""``ntkit reproduce [NAME ...]``: run experiments in their full configuration into
``results/NAME/`` (results.json and figures, the full-run numbers kept in the repository), one
after the other, and list what ran with its wall time.

No NAME: every registered experiment. An experiment that fails is reported (and the command
exits with status 1) after the others have run; none is skipped silently. With
``--shard I/K`` the experiments that declare a ``shard`` option compute only their shard's units
(the run without ``--shard`` merges), and the others run in shard 1/K only, which says so.
After each run the experiment's results.json gets a ``reproduce`` record: the command, the
wall time, the finishing date (UTC) and whether it was the quick configuration (``--quick``
exists for tests of this command; a quick result is labelled as such wherever it is shown).
"""
from __future__ import annotations

import json
import shlex
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .common import Context, UsageError, writable_dir

DEFAULT_OUT = Path("results")


@dataclass
class Outcome:
    """What happened to one experiment: ``status`` ok | partial (a shard) | failed |
    not in this shard; ``seconds`` of wall time; ``note`` the reason or a warning."""

    name: str
    status: str
    seconds: float
    out: Path
    note: str = ""


def _states_dtype(results: Dict[str, Any]) -> bool:
    config = results.get("config")
    return "dtype" in results or isinstance(config, dict) and "dtype" in config


def _record(out: Path, record: Dict[str, Any]) -> str:
    """Add ``record`` as ``reproduce`` to out/results.json; returns a warning ('' if none)."""
    path = out / "results.json"
    results = json.loads(path.read_text())
    results["reproduce"] = record
    results.setdefault("seconds", record["wall_seconds"])
    path.write_text(json.dumps(results, indent=1))
    warnings = [w for w, ok in (("states no dtype", _states_dtype(results)),
                                ("has no machine record", "machine" in results)) if not ok]
    return "results.json " + " and ".join(warnings) if warnings else ""


def reproduce(ctx: Context, names: Sequence[str], out_root: Path = DEFAULT_OUT, *,
              quick: bool = False, shard: Optional[str] = None,
              options: Optional[Dict[str, Any]] = None, given: Sequence[str] = (),
              command: str = "") -> List[Outcome]:
    """Run each experiment of ``names`` (all registered ones when empty) into
    ``out_root/NAME`` and return their outcomes, in order. ``options``: experiment options,
    allowed with exactly one name. ``command``: the command line, recorded in results.json."""
    from ..experiments import REGISTRY
    from ..experiments import names as all_names
    from ..experiments.units import Shard
    from .experiment import experiment_options, run_experiment

    names = list(names) or all_names()
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageError(f"unknown experiment(s) {', '.join(unknown)}; available: "
                         f"{', '.join(all_names())}")
    options = dict(options or {})
    if options and len(names) != 1:
        raise UsageError("experiment options (--name value) need exactly one experiment NAME")
    try:
        part = Shard.parse(shard) if shard else None
    except ValueError as err:
        raise UsageError(f"--shard: {err}") from None
    outcomes: List[Outcome] = []
    for name in names:
        out = writable_dir(Path(out_root) / name)
        opts = dict(options)
        if part is not None:
            if any(o.name == "shard" for o in experiment_options(name)):
                opts["shard"] = str(part)
            elif part.index != 1:
                outcomes.append(Outcome(name, "not in this shard", 0.0, out,
                                        f"{name} has no shards: shard 1/{part.count} runs it"))
                ctx.say(f"reproduce: {name}: {outcomes[-1].note}")
                continue
        ctx.say(f"reproduce: {name}{' (quick)' if quick else ''} -> {out}")
        ctx.seed_everything()   # each result independent of which experiments ran before
        start = time.perf_counter()
        try:
            results = run_experiment(ctx, name, out, quick, dict(opts), given)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - reported with the others, exit status 1
            seconds = time.perf_counter() - start
            ctx.say(traceback.format_exc(limit=6))
            outcomes.append(Outcome(name, "failed", seconds, out, f"{type(err).__name__}: {err}"))
            continue
        seconds = time.perf_counter() - start
        if results.get("partial"):
            outcomes.append(Outcome(name, "partial", seconds, out,
                                    f"shard {opts.get('shard')}: {results.get('units_done')} of "
                                    f"{results.get('units_total')} units done; merge without "
                                    f"--shard"))
            continue
        if not (out / "results.json").is_file():
            outcomes.append(Outcome(name, "failed", seconds, out, "wrote no results.json"))
            continue
        note = _record(out, {
            "command": command or f"ntkit reproduce {name}", "wall_seconds": round(seconds, 2),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": bool(quick), "options": opts, "device": ctx.device,
        })
        outcomes.append(Outcome(name, "ok", seconds, out, note))
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> str:
    """One line per experiment: name, status, wall time, folder and note."""
    width = max([len(o.name) for o in outcomes] + [4])
    lines = [f"{'name':<{width}}  {'status':<17}  {'wall time':>10}  folder"]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}  {o.status:<17}  {o.seconds:>8.1f} s  {o.out}"
                     + (f"  ({o.note})" if o.note else ""))
    total = sum(o.seconds for o in outcomes)
    failed = [o.name for o in outcomes if o.status == "failed"]
    lines.append(f"total {total:.1f} s; " + (f"FAILED: {', '.join(failed)}" if failed
                                              else "none failed"))
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would type it again."""
    return "ntkit " + " ".join(shlex.quote(str(a)) for a in argv)
