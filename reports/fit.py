"""Power-law fits: the slope of log(y) against log(N), the exponent the figures print on their lines.

Small N carries fixed costs (allocation rounding, O(N) terms beside an O(N^2) buffer) that bend the curve,
so the fit uses the large-N end of a line: the points in the upper half of its N range on a log scale, and
never fewer than the MIN_POINTS largest. A line with fewer than MIN_POINTS points gets no slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

MIN_POINTS = 3


@dataclass(frozen=True)
class Fit:
    slope: float       # d log(y) / d log(N)
    intercept: float   # natural log of y at N = 1
    n_lo: int          # N range of the points used
    n_hi: int
    points: int

    def at(self, n: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(n))


def loglog_slope(ns: Sequence[float], ys: Sequence[float]) -> tuple:
    """(slope, intercept) of the least-squares line through (ln N, ln y). Needs two distinct N, all positive."""
    x = np.log(np.asarray(ns, dtype=np.float64))
    y = np.log(np.asarray(ys, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("need at least two distinct N")
    xm, ym = x.mean(), y.mean()
    slope = float(np.sum((x - xm) * (y - ym)) / np.sum((x - xm) ** 2))
    return slope, float(ym - slope * xm)


def fit_window(ns: Sequence[float]) -> List[int]:
    """Indices (into ns, sorted ascending, distinct, positive) of the points a fit uses; [] if too few."""
    if len(ns) < MIN_POINTS:
        return []
    lo, hi = math.log(ns[0]), math.log(ns[-1])
    middle = (lo + hi) / 2
    upper = [i for i, n in enumerate(ns) if math.log(n) >= middle - 1e-12]
    if len(upper) < MIN_POINTS:
        upper = list(range(len(ns) - MIN_POINTS, len(ns)))
    return upper


def fit_power_law(ns: Sequence[float], ys: Sequence[float]) -> Optional[Fit]:
    """The fit over fit_window(ns); ns sorted ascending and distinct, ys positive. None with too few points."""
    window = fit_window(ns)
    if not window:
        return None
    wn = [ns[i] for i in window]
    slope, intercept = loglog_slope(wn, [ys[i] for i in window])
    return Fit(slope=slope, intercept=intercept, n_lo=int(wn[0]), n_hi=int(wn[-1]), points=len(wn))
