"""Full runs kept in the repository (``results/<experiment>/``, written by ``ntkit reproduce``)
in the report: their figures are copied into the report folder (``full/<experiment>/``), their
numbers go into the report's results.json under ``full_runs``, and each is labelled with its
date and machine; a result marked quick is labelled as such."""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional

from .html import esc, figure


def run_label(results: Dict[str, Any], fallback_date: str) -> str:
    """'full run, <date>, <machine>' from results.json's ``reproduce`` and ``machine`` records;
    'quick run, ...' for a quick configuration, 'run with options k=v (not the full
    configuration), ...' when options changed the full configuration."""
    rec = results.get("reproduce") if isinstance(results.get("reproduce"), dict) else {}
    quick = bool(results.get("quick") or rec.get("quick"))
    date = rec.get("finished") or fallback_date
    m = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    where = []
    if m.get("cpus"):
        where.append(f"{m['cpus']} CPUs")
    if m.get("gpu"):
        where.append(str(m["gpu"]))
    if m.get("load_average"):
        where.append(f"load {m['load_average'][0]}")
    seconds = rec.get("wall_seconds", results.get("seconds"))
    if isinstance(seconds, (int, float)):
        where.append(f"{seconds:.0f} s wall")
    options = {k: v for k, v in (rec.get("options") or {}).items() if k != "shard"}
    kind = ("quick run" if quick else
            "full run" if not options else
            "run with options " + ", ".join(f"{k}={v}" for k, v in options.items())
            + " (not the full configuration)")
    return kind + f", {date}" + (f", {', '.join(where)}" if where else "")


def collect_full_runs(results_dir: Optional[Path], out: Path) -> Dict[str, Dict[str, Any]]:
    """{experiment: entry} for each ``results_dir/NAME/results.json`` of a registered
    experiment, with its PNGs copied to ``out/full/NAME/``; {} when the folder is absent."""
    from ..experiments import names

    if results_dir is None or not Path(results_dir).is_dir():
        return {}
    found: Dict[str, Dict[str, Any]] = {}
    for name in names():
        src = Path(results_dir) / name
        path = src / "results.json"
        if not path.is_file():
            continue
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            found[name] = {"status": "unreadable", "reason": f"{path}: {err}", "figures": []}
            continue
        dest = out / "full" / name
        dest.mkdir(parents=True, exist_ok=True)
        figures = []
        for png in sorted(src.glob("*.png")):
            shutil.copyfile(png, dest / png.name)
            figures.append(png.name)
        mtime = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        label = run_label(results, mtime.strftime("%Y-%m-%d %H:%M UTC"))
        found[name] = {"status": "ok", "dir": f"full/{name}", "source": str(src),
                       "figures": figures, "label": label,
                       "quick": label.startswith("quick"), "results": results}
    return found


def full_runs_section(full: Dict[str, Dict[str, Any]], describe, numbers, verdicts) -> str:
    """The report section of the kept runs; ``describe(name)`` the experiment's headline,
    ``numbers(name, results, prefix)`` and ``verdicts(results, prefix)`` its tables (HTML)."""
    if not full:
        return ""
    blocks = []
    for name, e in full.items():
        if e["status"] != "ok":
            blocks.append(f'<h3 id="full-{esc(name)}">{esc(name)}</h3><p>{esc(e["reason"])}</p>')
            continue
        prefix = f"full_runs.{name}.results"
        res = e["results"]
        figs = "".join(figure(f"{e['dir']}/{f}", f"<code>{esc(f)}</code> ({esc(e['label'])})",
                              f"{name}: {f}") for f in e["figures"])
        md = res.get("markdown")
        table_md = f"<pre>{esc(md)}</pre>" if isinstance(md, str) else ""
        cmd = (res.get("reproduce") or {}).get("command") if isinstance(res.get("reproduce"),
                                                                        dict) else None
        how = f"<p class=\"config\">Regenerate: <code>{esc(cmd)}</code></p>" if cmd else ""
        blocks.append(
            f'<h3 id="full-{esc(name)}">{esc(name)}<span class="status '
            f'{"skipped" if e["quick"] else "ok"}">{esc(e["label"])}</span></h3>'
            f'<p class="lead">{describe(name, res)}</p>'
            + figs + verdicts(res, prefix) + table_md + numbers(name, res, prefix) + how)
    return ('<section id="full-runs"><h2>Full runs (kept in results/)</h2>'
            '<p class="lead">The numbers and figures in this section come from the full '
            'configurations, run by <code>ntkit reproduce</code> and kept in the repository '
            'under <code>results/NAME/</code>; each is labelled with its date and machine. '
            'A run marked <i>quick run</i> is not a full configuration.</p>'
            + "".join(blocks) + "</section>")
