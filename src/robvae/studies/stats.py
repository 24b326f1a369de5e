"""Small pure statistics helpers used by the studies (numpy / scipy.stats, no torch).

Every function takes plain sequences or arrays, ignores NaN entries where it says so, and
returns plain floats (NaN when the statistic is undefined, e.g. fewer than two points or a
constant input), so that tables and JSON summaries never hold numpy scalars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

ArrayLike = Sequence[float] | np.ndarray


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """x, y as float arrays of equal length with every pair holding a NaN or inf dropped."""
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _defined(a: np.ndarray, b: np.ndarray) -> bool:
    return a.size >= 2 and np.ptp(a) > 0 and np.ptp(b) > 0


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's correlation coefficient of the finite pairs (NaN if undefined)."""
    a, b = _pair(x, y)
    if not _defined(a, b):
        return math.nan
    return float(_st.pearsonr(a, b)[0])


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation of the finite pairs (NaN if undefined)."""
    a, b = _pair(x, y)
    if not _defined(a, b):
        return math.nan
    return float(_st.spearmanr(a, b)[0])


def least_squares(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """The least-squares line y = slope * x + intercept through the finite pairs.

    Returns (slope, intercept); (NaN, NaN) with fewer than two distinct x values.
    """
    a, b = _pair(x, y)
    if a.size < 2 or np.ptp(a) == 0:
        return math.nan, math.nan
    slope, intercept = np.polyfit(a, b, 1)
    return float(slope), float(intercept)


def quartiles(values: ArrayLike) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of the values, linear interpolation (numpy's
    default, R's type 7). NaNs are dropped; +-inf are kept as values (a certified radius is +inf
    when every Monte Carlo draw stayed within r), so a quartile falling among them is +-inf.
    NaNs when no value is left."""
    a = np.asarray(values, dtype=float).ravel()
    a = a[~np.isnan(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan
    a = np.sort(a)
    out = []
    for q in (0.25, 0.5, 0.75):
        h = (a.size - 1) * q
        lo, hi = int(math.floor(h)), int(math.ceil(h))
        w = h - lo
        if w == 0 or a[lo] == a[hi]:
            out.append(float(a[lo]))
        elif math.isinf(a[lo]) or math.isinf(a[hi]):
            out.append(float(a[hi]) if math.isinf(a[hi]) else float(a[lo]))
        else:
            out.append(float(a[lo] + w * (a[hi] - a[lo])))
    return out[0], out[1], out[2]


def count_above(x: ArrayLike, y: ArrayLike, *, rtol: float = 0.0) -> int:
    """How many finite pairs have y > x * (1 + rtol): points above the line y = x (for a bound
    y plotted against a margin x, the violations)."""
    a, b = _pair(x, y)
    return int(np.sum(b > a * (1.0 + rtol)))


def describe(values: ArrayLike) -> dict[str, Any]:
    """{n, median, q1, q3, mean, min, max, n_infinite} of the non-NaN values (quartiles as in
    :func:`quartiles`; mean, min and max may be +-inf)."""
    a = np.asarray(values, dtype=float).ravel()
    a = a[~np.isnan(a)]
    q1, med, q3 = quartiles(a)
    return {
        "n": int(a.size), "median": med, "q1": q1, "q3": q3,
        "mean": float(a.mean()) if a.size else math.nan,
        "min": float(a.min()) if a.size else math.nan,
        "max": float(a.max()) if a.size else math.nan,
        "n_infinite": int(np.isinf(a).sum()),
    }
