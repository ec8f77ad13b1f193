"""Scaling rates of the width experiments (width-sweep, ntk-drift, linearization, unit-circle):
one place that runs their units, judges a measured exponent against the rate a seed states,
and draws it.

A measured quantity y(m) (a distance between kernels or between network outputs) is recorded for
``k`` independent initializations at each width m. ``judge`` fits the exponent s of y ∝ m^s over
the asymptotic range m ≥ ``x_min`` with its percentile-bootstrap interval over initializations
(``statistics.fit_slope_interval``) and compares the interval with the stated rate and a
competing one (``statistics.rate_verdict``: consistent / not consistent / undetermined).
``draw`` plots the per-initialization values, their means, the fitted line (with the interval
in the legend) and the stated rate as a dashed reference line through the fitted line's centre.
``width_axis`` puts one labelled tick at each width (no minor tick labels, so that labels never
collide). ``run_units`` runs the units of a run through ``units.UnitStore`` (resumable,
splittable with ``shard="i/k"``).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import ntkit as nk

from .common import progress_bar
from .statistics import fit_slope_interval, rate_verdict
from .units import Shard, UnitStore


#: the verdict of a run too small for a fitted slope with an interval
NOT_FITTED = "not fitted"

#: (stated exponent, competing exponent, source) of each rate the width experiments judge
STATED = {
    # ||Θ_m − Θ_∞|| at initialization (width-sweep, ntk-drift's dist)
    "ntk_at_init": (-0.5, -0.25, "CLT fluctuation of the empirical NTK at initialization around "
                                 "its limit (Jacot et al. 2018, Thm 1 gives the limit); "
                                 "alternative m^-1/4: seed 001's bound for ReLU at "
                                 "initialization (Arora et al. 2019)"),
    # ||Θ_T − Θ_0|| during training (ntk-drift)
    "ntk_change": (-1.0, -0.5, "seed 001 (Arora et al. 2019 poster): 'in practice, change "
                               "during training ≈ O(m^-1 poly(n, L))' [Lee et al. 2019]; "
                               "alternative m^-1/2: the proven bounds (Jacot et al. 2018; Lee et "
                               "al. 2019 Thm 2.1)"),
    # ||f_t − f_t^lin|| (linearization)
    "linearization": (-1.0, -0.5, "seed 001 (Arora et al. 2019 poster): 'in practice, change "
                                  "during training ≈ O(m^-1 poly(n, L))' [Lee et al. 2019], "
                                  "which drives the distance to the linearization; alternative "
                                  "m^-1/2: Lee et al. 2019 Thm 2.1 bound"),
    # ||f_t − f_t^∞|| (linearization, against the analytic NTK)
    "infinite_width": (-0.5, -1.0, "fluctuation of the empirical NTK at init around its limit "
                                   "(Jacot et al. 2018); alternative m^-1 (as fast as the "
                                   "distance to the own linearization)"),
}


#: the activations of ``jacot_mlp``: ReLU (Jacot et al.'s) and erf (smooth, for a control)
ACTIVATIONS = {"relu": nk.ReLU, "erf": nk.Erf}


def jacot_mlp(width: int, cfg: Dict) -> nk.Sequential:
    """``cfg["depth"]`` Linear layers (depth − 1 hidden layers of ``width`` with activation
    ``cfg.get("activation", "relu")``), NTK parameterization with ``cfg["W_std"]`` and
    ``cfg["b_std"]`` (Jacot et al. 2018: ReLU, 1 and β = 0.1)."""
    name = cfg.get("activation", "relu")
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    layers = []
    for _ in range(int(cfg["depth"]) - 1):
        layers += [nk.Linear(width, W_std=cfg["W_std"], b_std=cfg["b_std"]), ACTIVATIONS[name]()]
    return nk.Sequential(*layers, nk.Linear(1, W_std=cfg["W_std"], b_std=cfg["b_std"]))


def unit_key(width: int, init: int) -> str:
    """The unit of one width and one initialization: ``w<width>_i<init>``."""
    return f"w{int(width)}_i{int(init)}"


def run_units(out_dir: Path, experiment: str, cfg: Dict, seed: int, keys: Sequence[str],
              fn: Callable[[str], object], shard: Optional[str] = None,
              progress: Optional[bool] = None) -> Tuple[Dict[str, object], Optional[Dict]]:
    """Compute the missing units ``keys`` (only shard ``shard`` = "i/k" of them when given)
    with ``fn(key)`` (a dict value gets the unit's wall time as ``unit_seconds``). Returns
    ({key: value} of the finished units, None) when every unit is finished, else (those units,
    the partial-run record {"experiment", "shard", "units_done", "units_total", "partial": True}
    that ``run`` returns instead of writing results)."""
    store = UnitStore(out_dir, experiment, cfg, seed)
    part = Shard.parse(shard) if shard else None

    def bar(todo):
        shown = progress_bar(todo, experiment, progress)
        for key in shown:  # name the unit being computed: "<experiment>: width 500, init 3"
            m = re.fullmatch(r"(?:([a-z]+)_)?w(\d+)_i(\d+)", key)
            what = (f"{m.group(1) + ', ' if m.group(1) else ''}width {m.group(2)}, "
                    f"init {m.group(3)}") if m else key
            shown.set_description(f"{experiment}: {what}" + (f" (shard {part})" if part else ""))
            yield key

    def timed(key):
        start = time.perf_counter()
        value = fn(key)
        if isinstance(value, dict):
            value = {**value, "unit_seconds": time.perf_counter() - start}
        return value

    values = store.compute(keys, timed, shard=part, progress=bar)
    if part is None and len(values) < len(keys):  # cannot happen: the unsharded run computes all
        raise RuntimeError(f"{experiment}: {len(keys) - len(values)} units missing after the run")
    if part is not None:
        return values, {"experiment": experiment, "shard": str(part), "units_done": len(values),
                        "units_total": len(keys), "partial": True}
    return values, None


def timing(values: Dict[str, Dict]) -> Dict[str, object]:
    """``unit_seconds_total``: the summed wall time of the units (over every process and
    invocation that computed them), with a note on how it differs from ``seconds``."""
    return {"unit_seconds_total": float(sum(v.get("unit_seconds", 0.0) for v in values.values())),
            "seconds_note": "seconds: wall time of the invocation that assembled these results; "
                            "unit_seconds_total: wall time of computing the units, summed over "
                            "the invocations (and shards) that computed them"}


def per_width(values: Dict[str, Dict], widths: Sequence[int], inits: int, name: str
              ) -> List[List[float]]:
    """[[values[unit_key(w, i)][name] for each init] for each width]."""
    return [[float(values[unit_key(w, i)][name]) for i in range(inits)] for w in widths]


def judge(widths: Sequence[int], samples: Sequence[Sequence[float]], stated: float,
          alternative: Optional[float], source: str, x_min: Optional[float] = None,
          seed: int = 0) -> Dict:
    """The fitted exponent over widths ≥ ``x_min`` with its 95% bootstrap interval over
    initializations, and the verdict on the ``stated`` rate against ``alternative``
    (``statistics.rate_verdict``); a JSON-ready dict with ``x_min`` added. A run with fewer
    than 3 such widths or 2 initializations per width (a small run given on the command line)
    gets the verdict ``NOT_FITTED`` and the reason, no slope."""
    fitted = [len(s) for w, s in zip(widths, samples) if x_min is None or w >= x_min]
    if len(fitted) < 3 or min(fitted) < 2:  # a run with too few widths: numbers, no verdict
        return {"verdict": NOT_FITTED, "stated_rate": stated, "alternative_rate": alternative,
                "source": source, "x_min": x_min,
                "reason": f"a slope with an interval needs at least 3 widths (at or above "
                          f"x_min={x_min}) with at least 2 initializations each; this run has "
                          f"{len(fitted)} such widths"}
    fit = fit_slope_interval(widths, samples, x_min=x_min, seed=seed)
    out = rate_verdict(fit, stated, alternative, source)
    out["x_min"] = x_min
    return out


def flat_summary(name: str, verdict: Dict) -> Dict[str, object]:
    """Scalars for a report table: ``<name>_slope``, ``<name>_interval`` (text),
    ``<name>_stated_rate`` and ``<name>_verdict``."""
    out = {f"{name}_stated_rate": verdict["stated_rate"], f"{name}_verdict": verdict["verdict"]}
    if "slope" in verdict:
        lo, hi = verdict["interval"]
        out[f"{name}_slope"] = round(verdict["slope"], 4)
        out[f"{name}_interval"] = f"[{lo:.3f}, {hi:.3f}] ({verdict['level']:.0%})"
    return out


def _rate_text(rate: float) -> str:
    known = {-0.25: "-1/4", -0.5: "-1/2", -0.75: "-3/4", -1.0: "-1"}
    return known.get(round(rate, 4), f"{rate:g}")


def draw(ax, widths: Sequence[int], samples: Sequence[Sequence[float]], verdict: Dict,
         color: str, label: str, marker: str = "o") -> None:
    """Per-initialization values (small dots), their means (markers), the fitted line over the
    fitted range, and the stated rate as a dashed line of the same colour through the centre of
    the fitted range."""
    w = np.asarray(widths, float)
    for wi, s in zip(w, samples):
        ax.plot(np.full(len(s), wi), s, ".", color=color, alpha=0.35, ms=3)
    means = np.array([np.mean(s) for s in samples])
    if "slope" not in verdict:
        ax.plot(w, means, marker, color=color, ms=6, label=f"{label} (too few widths to fit)")
        return
    lo, hi = verdict["interval"]
    ax.plot(w, means, marker, color=color, ms=6,
            label=f"{label}: slope {verdict['slope']:.2f} [{lo:.2f}, {hi:.2f}]")
    xf = np.asarray(verdict["x"], float)
    ax.plot(xf, np.exp(verdict["intercept"]) * xf ** verdict["slope"], "-", color=color, lw=1.5)
    centre = np.exp(np.mean(np.log(xf)))
    y_c = np.exp(verdict["intercept"]) * centre ** verdict["slope"]
    rate = verdict["stated_rate"]
    ax.plot(w, y_c * (w / centre) ** rate, "--", color=color, lw=1, alpha=0.8,
            label=f"stated rate m^{_rate_text(rate)}: {verdict['verdict']}")


def width_axis(ax, widths: Sequence[int], label: str = "width m") -> None:
    """Log-scaled x axis with one tick label per width (thinned to at most 8 labels) and no
    minor tick labels, so that the labels never overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ws = sorted(int(w) for w in widths)
    step = max(1, int(np.ceil(len(ws) / 8)))
    ticks = ws[::step]
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v)):,}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(ws[0] / 1.3, ws[-1] * 1.3)
    ax.set_xlabel(label)


def setup_title(cfg: Dict, inits, quick: bool) -> str:
    """"depth 4 ReLU, W_std=1, β=0.1, 8 inits per width" (+ " (quick)")."""
    act = {"relu": "ReLU"}.get(cfg.get("activation", "relu"), cfg.get("activation"))
    return (f"depth {cfg['depth']} {act}, W_std={cfg['W_std']:g}, β={cfg['b_std']:g}, "
            f"{inits} inits per width" + (" (quick)" if quick else ""))


def rate_panel(ax, widths: Sequence[int], series: Sequence[tuple], ylabel: str, title: str,
               legend_below: bool = False) -> None:
    """A log-log panel of measured rates: ``series`` of (samples, verdict, colour, label,
    marker) drawn by ``draw``, one labelled tick per width, axis labels, title and legend (in
    the lower left corner, or below the axes with ``legend_below``)."""
    for samples, verdict, color, label, marker in series:
        draw(ax, widths, samples, verdict, color, label, marker)
    ax.set_yscale("log")
    width_axis(ax, widths, "width m (hidden layers)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if legend_below:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    else:
        ax.legend(fontsize=7, loc="lower left")
