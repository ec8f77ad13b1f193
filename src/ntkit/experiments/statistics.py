"""Scaling exponents with bootstrap confidence intervals, and verdicts against a stated rate.

A scaling law y(m) ≈ C m^s (a distance that shrinks with the width m, say) is measured on
``k_i`` independent initializations at each width m_i. The point estimate of the exponent is the
least-squares slope of log ȳ_i against log m_i, with ȳ_i the mean over the initializations at
m_i:

    s = Σ_i (u_i − ū)(v_i − v̄) / Σ_i (u_i − ū)²,      u_i = log m_i,  v_i = log ȳ_i.

Its confidence interval is the percentile bootstrap over initializations (Efron & Tibshirani
1993, ch. 13): each resample redraws, independently at every width, k_i of the measured values
with replacement, and recomputes s; the interval is the (1−level)/2 and (1+level)/2 quantiles
of the resampled slopes. The initializations at different widths are independent networks, so
resampling them independently per width is the right unit.

The verdict compares the interval with the rate a seed states: ``consistent`` when the interval
contains it, ``not consistent`` when it does not, and ``undetermined`` when the interval also
contains a competing rate (the measurement cannot tell the two apart: more initializations or
wider widths are needed). No window is hard-coded: the interval decides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

#: the verdicts ``rate_verdict`` gives
CONSISTENT, NOT_CONSISTENT, UNDETERMINED = "consistent", "not consistent", "undetermined"


@dataclass(frozen=True)
class SlopeInterval:
    """A fitted exponent ``slope`` (and ``intercept`` of the log-log line) with its bootstrap
    interval [``low``, ``high``] at confidence ``level``; ``x`` the widths used and ``inits``
    the number of initializations at each."""

    slope: float
    intercept: float
    low: float
    high: float
    level: float
    n_boot: int
    x: List[float] = field(default_factory=list)
    inits: List[int] = field(default_factory=list)

    def contains(self, rate: float) -> bool:
        return self.low <= rate <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self) -> Dict:
        return {"slope": self.slope, "intercept": self.intercept,
                "interval": [self.low, self.high], "level": self.level,
                "bootstrap_resamples": self.n_boot, "x": list(self.x),
                "inits": list(self.inits)}


def _slopes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Least-squares slopes of the rows of ``v`` (…, W) against ``u`` (W,)."""
    du = u - u.mean()
    return ((v - v.mean(axis=-1, keepdims=True)) * du).sum(axis=-1) / (du * du).sum()


def _checked_samples(x: Sequence[float], samples: Sequence[Sequence[float]],
                     x_min: Optional[float]) -> tuple:
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or len(x) != len(samples):
        raise ValueError(f"x has {x.size} widths but samples has {len(samples)} groups: give "
                         f"one group of measurements (one per initialization) for each width")
    keep = np.ones(len(x), bool) if x_min is None else x >= x_min
    x = x[keep]
    groups = [np.asarray(s, dtype=float).ravel() for s, k in zip(samples, keep) if k]
    if len(x) < 3:
        raise ValueError(f"a slope with an interval needs at least 3 widths, got {len(x)}"
                         + (f" at or above x_min={x_min}" if x_min is not None else ""))
    if np.any(~np.isfinite(x)) or np.any(x <= 0) or len(np.unique(x)) != len(x):
        raise ValueError(f"widths must be positive, finite and distinct, got {x.tolist()}")
    for xi, g in zip(x, groups):
        if g.size < 2:
            raise ValueError(f"width {xi:g} has {g.size} measurement(s); a bootstrap interval "
                             f"needs at least 2 initializations per width")
        if np.any(~np.isfinite(g)) or np.any(g <= 0):
            raise ValueError(f"width {xi:g}: measurements must be positive and finite for a "
                             f"log-log fit, got {g.tolist()}")
    return x, groups


def fit_slope_interval(x: Sequence[float], samples: Sequence[Sequence[float]], *,
                       level: float = 0.95, n_boot: int = 4000, seed: int = 0,
                       x_min: Optional[float] = None) -> SlopeInterval:
    """The exponent of y ∝ x^s from ``samples[i]`` (the measurements at width ``x[i]``, one per
    independent initialization), with its percentile-bootstrap interval at ``level``.

    ``x_min`` restricts the fit to the asymptotic range x ≥ x_min. The resampling is seeded by
    ``seed``, so the interval is reproducible. Needs ≥ 3 widths and ≥ 2 positive finite
    measurements per width (a ValueError names what is missing)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few resamples for a percentile interval")
    x, groups = _checked_samples(x, samples, x_min)
    u = np.log(x)
    v = np.log([g.mean() for g in groups])
    slope = float(_slopes(u, v))
    intercept = float(v.mean() - slope * u.mean())
    rng = np.random.default_rng(seed)
    boot_means = np.stack([g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(axis=1)
                           for g in groups], axis=1)
    boot = _slopes(u, np.log(boot_means))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return SlopeInterval(slope, intercept, float(low), float(high), float(level), int(n_boot),
                         x.tolist(), [int(g.size) for g in groups])


def rate_verdict(fit: SlopeInterval, stated: float, alternative: Optional[float] = None,
                 source: str = "") -> Dict:
    """The verdict on the ``stated`` exponent from ``fit``'s interval (see the module docstring);
    ``alternative`` is the competing exponent the measurement must tell apart from it, and
    ``source`` where the stated rate comes from. A JSON-ready dict."""
    if not math.isfinite(stated) or (alternative is not None and not math.isfinite(alternative)):
        raise ValueError("the stated and alternative rates must be finite numbers")
    inside = fit.contains(stated)
    if inside and alternative is not None and fit.contains(alternative):
        verdict = UNDETERMINED
        reason = (f"the {fit.level:.0%} interval [{fit.low:.3f}, {fit.high:.3f}] contains both "
                  f"the stated rate {stated:g} and the alternative {alternative:g}: more "
                  f"initializations or a wider range of widths are needed")
    elif inside:
        verdict = CONSISTENT
        reason = (f"the {fit.level:.0%} interval [{fit.low:.3f}, {fit.high:.3f}] contains the "
                  f"stated rate {stated:g}")
        if alternative is not None:
            reason += f" and excludes the alternative {alternative:g}"
    else:
        verdict = NOT_CONSISTENT
        reason = (f"the {fit.level:.0%} interval [{fit.low:.3f}, {fit.high:.3f}] excludes the "
                  f"stated rate {stated:g}")
    out = {**fit.as_dict(), "stated_rate": stated, "verdict": verdict, "reason": reason}
    if alternative is not None:
        out["alternative_rate"] = alternative
    if source:
        out["source"] = source
    return out
