"""Statistics, computed once (layer 0: numpy / scipy.stats, no torch).

The pure helpers take plain sequences or arrays, drop NaN entries where they say so, and return
plain floats (NaN when the statistic is undefined, e.g. fewer than two points or a constant
input), so that tables and JSON summaries never hold numpy scalars.

:func:`bound_stats` is the one place where a certified bound is compared with the empirical
margin (docs/THEORY.md section 5: bound <= R_r(x) <= R_hat_r(x) should hold). ``robvae margin``, the
bound-vs-margin study, the evaluation summary, the figures and the demo all call it, so the same
inputs always give the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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


def _correlate(test: Any, x: ArrayLike, y: ArrayLike) -> float:
    """scipy.stats ``test``'s coefficient on the finite pairs; NaN with fewer than two pairs or a
    constant side (undefined)."""
    a, b = _pair(x, y)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(test(a, b)[0])


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's correlation coefficient of the finite pairs (NaN if undefined)."""
    return _correlate(_st.pearsonr, x, y)


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation of the finite pairs (NaN if undefined)."""
    return _correlate(_st.spearmanr, x, y)


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
        elif math.isinf(a[lo]) and math.isinf(a[hi]):  # -inf and +inf: undefined, as numpy says
            out.append(math.nan)
        elif math.isinf(a[lo]) or math.isinf(a[hi]):
            out.append(float(a[hi]) if math.isinf(a[hi]) else float(a[lo]))
        else:
            out.append(float(a[lo] + w * (a[hi] - a[lo])))
    return out[0], out[1], out[2]


def median(values: ArrayLike) -> float:
    """The median as in :func:`quartiles` (NaNs dropped, +-inf kept as values)."""
    return quartiles(values)[1]


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


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of the finite pairs (x, y), and how many there were."""

    n: int
    pearson: float
    spearman: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def correlation(x: ArrayLike, y: ArrayLike) -> Correlation:
    a, b = _pair(x, y)
    return Correlation(int(a.size), pearson(a, b), spearman(a, b))


@dataclass(frozen=True)
class BoundStats:
    """A certified bound against the empirical margin, over the inputs where the comparison means
    something (``mask``, the *usable* inputs):

    - the bound does not abstain (its own Monte Carlo estimate says p_r(x) > 1/2) and is finite;
    - the margin search's own clean estimate agrees the input is robust (``p_clean`` > 1/2);
    - the margin is finite and not capped at the search's largest budget.

    Every other input is counted in its own column and never in the statistics: ``n_abstain``
    (the bound abstains), ``n_infinite`` (p = 1: an infinite bound, not an abstention),
    ``n_disagree`` (the bound certifies but the margin's clean estimate is <= 1/2: two Monte
    Carlo estimates on either side of 1/2), ``n_capped`` (the margin search hit its cap),
    ``n_no_margin`` (no margin computed, or none measured: NaN). An input is counted once, in the
    first of these that applies, so ``n_used + n_abstain + n_infinite + n_disagree + n_capped +
    n_no_margin == n``.

    ``n_violations``: usable inputs with bound > margin (the margin is the search's lower end, the
    largest budget settled robust: a bound inside the search's last bracket counts too, though it
    need not exceed the true margin). ``n_refuted``: inputs whose bound exceeds a budget the margin
    search settled as NOT robust (``refuted_at``, e.g. margin + tolerance): evidence that the bound
    exceeds the true margin. Counted over the usable inputs and those capped or without a measured
    margin (-1 when ``refuted_at`` was not given); never over the ones that abstain, are infinite
    or disagree.
    ``pearson`` / ``spearman`` (margin vs bound), ``slope`` / ``intercept`` (least squares,
    bound = slope * margin + intercept), ``median_bound`` / ``median_margin`` /
    ``median_ratio`` (bound / margin where margin > 0) are all over the same usable inputs.
    """

    n: int
    n_used: int
    n_violations: int
    n_abstain: int
    n_infinite: int
    n_disagree: int
    n_capped: int
    n_no_margin: int
    pearson: float
    spearman: float
    slope: float
    intercept: float
    median_bound: float
    median_margin: float
    median_ratio: float
    n_refuted: int
    mask: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every statistic as plain Python numbers (the mask left out)."""
        d = asdict(self)
        d.pop("mask")
        return d

    def __eq__(self, other: object) -> bool:
        """Every statistic equal (NaN equal to NaN: an undefined statistic) and the same mask."""
        if not isinstance(other, BoundStats):
            return NotImplemented
        mine, theirs = (np.array(list(st.to_dict().values()), dtype=float) for st in (self, other))
        return np.array_equal(mine, theirs, equal_nan=True) and np.array_equal(self.mask, other.mask)

    __hash__ = None  # type: ignore[assignment]


def _flags(v: ArrayLike | None, n: int, default: bool) -> np.ndarray:
    if v is None:
        return np.full(n, default)
    a = np.asarray(v).ravel()
    if a.dtype.kind in "USOf":  # CSV strings "True" / "False", a pandas column of strings, or floats
        # ("false" / "yes" were read as False, "False" in an object column as True)
        if any(not (e in ("True", "False") if isinstance(e, str) else isinstance(e, (bool, np.bool_)) or e in (0, 1))
               for e in a):
            raise ValueError(f"flags must be booleans (or 'True' / 'False'), got {a[:5].tolist()}")
        a = np.array([e == "True" if isinstance(e, str) else bool(e) for e in a], dtype=bool)
    if a.shape != (n,):
        raise ValueError(f"expected {n} values, got {a.size}")
    return a.astype(bool)


def bound_stats(bound: ArrayLike, margin: ArrayLike, *, p_clean: ArrayLike | None = None,
                capped: ArrayLike | None = None, abstain: ArrayLike | None = None,
                refuted_at: ArrayLike | None = None) -> BoundStats:
    """Compare a certified bound with the empirical margin, per input (see :class:`BoundStats`).

    bound, margin: [N]. p_clean: the margin search's clean estimate of p_r(x) (NaN or None:
    unknown, taken as agreeing). capped: the margin search hit its cap. abstain: the bound
    abstains (default: bound <= 0 or NaN). refuted_at: per input, the smallest budget the margin
    search settled as not robust (NaN: none); gives ``n_refuted``.
    """
    b = np.asarray(bound, dtype=float).ravel()
    m = np.asarray(margin, dtype=float).ravel()
    n = b.size
    if m.shape != (n,):
        raise ValueError(f"bound and margin must have the same length, got {n} and {m.size}")
    abst = _flags(abstain, n, False) | ~(b > 0)
    inf = ~abst & np.isinf(b)
    pc = np.full(n, np.nan) if p_clean is None else np.asarray(p_clean, dtype=float).ravel()
    if pc.shape != (n,):
        raise ValueError(f"expected {n} values of p_clean, got {pc.size}")
    disagree = ~abst & ~inf & (pc <= 0.5)
    cap = ~abst & ~inf & ~disagree & _flags(capped, n, False)
    no_margin = ~abst & ~inf & ~disagree & ~cap & ~np.isfinite(m)
    use = ~(abst | inf | disagree | cap | no_margin)
    bu, mu = b[use], m[use]
    slope, intercept = least_squares(mu, bu)
    pos = mu > 0
    n_refuted = -1
    if refuted_at is not None:
        ra = np.asarray(refuted_at, dtype=float).ravel()
        if ra.shape != (n,):
            raise ValueError(f"expected {n} values of refuted_at, got {ra.size}")
        # over the usable inputs and those without a measured margin or at the cap: a budget settled
        # NOT robust below the bound is evidence whatever the margin's lower end (NaN never refutes)
        known = ~(abst | inf | disagree)
        n_refuted = int(np.sum(b[known] > ra[known]))
    return BoundStats(
        n=int(n), n_used=int(use.sum()), n_violations=int(np.sum(bu > mu)), n_abstain=int(abst.sum()),
        n_infinite=int(inf.sum()), n_disagree=int(disagree.sum()), n_capped=int(cap.sum()),
        n_no_margin=int(no_margin.sum()), pearson=pearson(mu, bu), spearman=spearman(mu, bu), slope=slope,
        intercept=intercept, median_bound=median(bu), median_margin=median(mu),
        median_ratio=median(bu[pos] / mu[pos]) if pos.any() else math.nan, n_refuted=n_refuted, mask=use,
    )


__all__ = [
    "BoundStats", "Correlation", "bound_stats", "correlation", "count_above", "describe", "least_squares",
    "median", "pearson", "quartiles", "spearman",
]
