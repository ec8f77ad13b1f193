"""Rate verdicts in an experiment's results: every dict holding ``verdict`` and
``stated_rate`` (``ntkit.experiments.statistics.rate_verdict``), wherever it sits, shown as one
table row with the fitted slope, its bootstrap interval, the stated rate and the verdict."""
from __future__ import annotations

from typing import Any, List, Tuple

from .html import Num, table


def find_verdicts(obj: Any, path: str = "") -> List[Tuple[str, dict]]:
    """(dot path, verdict dict) of every dict under ``obj`` with the keys 'verdict' and
    'stated_rate', in document order; list items by index."""
    found: List[Tuple[str, dict]] = []
    if isinstance(obj, dict):
        if "verdict" in obj and "stated_rate" in obj:
            return [(path, obj)]
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return found
    for key, value in items:
        if "." in str(key):
            continue  # not addressable by a dot path
        found += find_verdicts(value, f"{path}.{key}" if path else str(key))
    return found


def _num(v: Any, path: str) -> Any:
    return Num(v, path) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def verdict_table(results: Any, prefix: str) -> str:
    """The verdicts of ``results`` (at ``prefix`` in the report's results.json) as a table, or
    '' when there are none."""
    rows = []
    for path, v in find_verdicts(results):
        p = f"{prefix}.{path}"
        interval = v.get("interval") or [None, None]
        level = v.get("level")
        rows.append((path.replace(".", " / "), _num(v.get("slope"), f"{p}.slope"),
                     _num(interval[0], f"{p}.interval.0"), _num(interval[1], f"{p}.interval.1"),
                     f"{level:.0%}" if isinstance(level, float) else "",
                     _num(v["stated_rate"], f"{p}.stated_rate"), str(v["verdict"]),
                     str(v.get("source", ""))))
    if not rows:
        return ""
    return table(["rate", "fitted slope", "interval low", "interval high", "level",
                  "stated rate", "verdict", "stated by"], rows,
                 caption="Fitted exponents with their bootstrap confidence intervals over "
                         "initializations, against the rate the seed states; the verdict comes "
                         "from the interval (consistent: it contains the stated rate).")
