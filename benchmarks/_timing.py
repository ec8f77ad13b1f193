"""Shared timing helper of the benchmark scripts (imported from the script's own folder)."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple

import numpy as np


def median_time(fn: Callable[[], Any], repeats: int, slow_after: Optional[float] = None
                ) -> Tuple[float, Any]:
    """(median seconds of ``repeats`` calls after one warm-up call, the warm-up's result).
    ``slow_after``: if the warm-up took longer than this many seconds, time one call only."""
    t0 = time.perf_counter()
    out = fn()
    if slow_after is not None and time.perf_counter() - t0 > slow_after:
        repeats = 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out
