"""The study statistics on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robvae.stats import BoundStats, bound_stats, count_above, describe, least_squares, pearson, quartiles, spearman


def test_pearson_known_correlation():
    # y = x + noise with unit variances constructed exactly: corr(x, y) = 1/sqrt(2) for
    # exactly orthogonal, centred, equal-norm x and noise
    rng = np.random.default_rng(0)
    a = rng.standard_normal(500)
    b = rng.standard_normal(500)
    a -= a.mean()
    b -= b.mean()
    b -= a * (a @ b) / (a @ a)  # orthogonal to a
    b *= np.linalg.norm(a) / np.linalg.norm(b)  # same norm
    assert pearson(a, a + b) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert pearson(a, -2 * a + 3) == pytest.approx(-1.0, abs=1e-12)


def test_pearson_hand_computed():
    # x = 1..5, y = (2, 4, 5, 4, 5): r = 6 / sqrt(10 * 6) = 0.7745966...
    assert pearson([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(6 / math.sqrt(60), abs=1e-12)


def test_spearman_is_rank_correlation():
    x = np.arange(1, 11, dtype=float)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, np.exp(x)) < 0.8
    # one swap of adjacent ranks among n = 5: rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 2, 4, 3, 5]) == pytest.approx(0.9)


def test_nan_pairs_dropped_and_undefined_is_nan():
    assert pearson([1, 2, np.nan, 3], [2, 4, 100, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, np.inf], [3, 2, 1, 0]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


def test_least_squares_recovers_line():
    x = np.linspace(0, 3, 20)
    slope, icpt = least_squares(x, 0.5 * x - 2)
    assert slope == pytest.approx(0.5)
    assert icpt == pytest.approx(-2.0)
    # y = (0, 1, 1, 3) on x = (0, 1, 2, 3): slope = 4.5 / 5 = 0.9, intercept = 1.25 - 0.9 * 1.5 = -0.1
    s, c = least_squares([0, 1, 2, 3], [0, 1, 1, 3])
    assert (s, c) == (pytest.approx(0.9), pytest.approx(-0.1))
    assert all(math.isnan(v) for v in least_squares([2, 2], [1, 3]))


def test_quartiles_fixed_arrays():
    assert quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    assert quartiles([1, 2, 3, 4]) == (1.75, 2.5, 3.25)
    assert quartiles([7.0, np.nan, 1.0, 3.0]) == (2.0, 3.0, 5.0)
    assert all(math.isnan(v) for v in quartiles([np.nan]))
    # infinite radii are values, not missing: the median of (1, 2, inf, inf, inf) is inf
    assert quartiles([1.0, 2.0, np.inf, np.inf, np.inf]) == (2.0, math.inf, math.inf)
    assert quartiles([1.0, 2.0, 3.0, np.inf]) == (1.75, 2.5, math.inf)


def test_count_above_and_describe():
    margin = [1.0, 2.0, 3.0, 4.0]
    bound = [0.5, 2.5, 3.0, 5.0]
    assert count_above(margin, bound) == 2  # strictly above only
    assert count_above(margin, bound, rtol=0.3) == 0
    d = describe([4, 1, 3, 2, np.nan])
    assert d == {"n": 4, "median": 2.5, "q1": 1.75, "q3": 3.25, "mean": 2.5, "min": 1.0, "max": 4.0, "n_infinite": 0}
    assert describe([1.0, np.inf])["n_infinite"] == 1


def test_bound_stats_counts_each_input_once_and_only_real_violations():
    inf = math.inf
    #          used  used  used  viol  abst  p=1   disagree capped  no margin
    bound = [0.5, 1.0, 1.5, 6.0, 0.0, inf, 2.0, 1.0, 1.0]
    margin = [1.0, 2.0, 3.0, 5.0, 9.0, 4.0, 0.0, 7.0, math.nan]
    p_clean = [0.9, 0.9, 0.9, 0.9, 0.4, 1.0, 0.45, 0.9, math.nan]
    capped = [False] * 7 + [True, False]
    s = bound_stats(bound, margin, p_clean=p_clean, capped=capped)
    assert (s.n, s.n_used, s.n_violations, s.n_abstain, s.n_infinite, s.n_disagree, s.n_capped,
            s.n_no_margin) == (9, 4, 1, 1, 1, 1, 1, 1)
    assert s.mask.tolist() == [True] * 4 + [False] * 5
    assert s.pearson == pytest.approx(np.corrcoef(margin[:4], bound[:4])[0, 1])
    assert s.spearman == pytest.approx(1.0)
    slope, icpt = np.polyfit(margin[:4], bound[:4], 1)
    assert (s.slope, s.intercept) == (pytest.approx(slope), pytest.approx(icpt))
    # medians over the same (used) inputs, never over all of them
    assert s.median_bound == pytest.approx(1.25) and s.median_margin == pytest.approx(2.5)
    assert s.median_ratio == pytest.approx(0.5)
    assert s == bound_stats(np.array(bound), np.array(margin), p_clean=np.array(p_clean), capped=np.array(capped))
    # an explicit abstain flag (e.g. the sound certificate's) wins over a positive bound
    t = bound_stats(bound, margin, p_clean=p_clean, capped=capped, abstain=[False, True] + [False] * 7)
    assert t.n_used == 3 and t.n_abstain == 2
    # CSV strings are read as flags; to_dict is plain JSON
    u = bound_stats(bound, margin, p_clean=p_clean, capped=[str(c) for c in capped])
    assert u == s and "mask" not in u.to_dict() and isinstance(u.to_dict()["n_used"], int)
    assert isinstance(s, BoundStats)
    with pytest.raises(ValueError, match="same length"):
        bound_stats([1.0], [1.0, 2.0])


def test_refuted_counts_only_bounds_above_a_budget_settled_not_robust():
    from robvae.stats import bound_stats

    bound = [0.5, 0.5, 0.5, 0.1]
    margin = [0.4, 0.4, 0.0, 0.2]            # all usable: p_clean unknown, nothing capped
    refuted_at = [0.45, 0.6, float("nan"), 0.3]
    s = bound_stats(bound, margin, refuted_at=refuted_at)
    assert s.n_used == 4 and s.n_violations == 3   # above the search's lower end
    assert s.n_refuted == 1                         # only input 0 lies above a settled non-robust budget
    assert bound_stats(bound, margin).n_refuted == -1
    # inputs without a measured margin still count when refuted; abstaining or disagreeing ones never
    t = bound_stats([0.5, 0.5, 0.5], [float("nan"), 0.4, 0.4], refuted_at=[0.45, 0.45, 0.45],
                    p_clean=[0.9, 0.4, 0.9], abstain=[False, False, True])
    assert (t.n_no_margin, t.n_disagree, t.n_abstain, t.n_used, t.n_refuted) == (1, 1, 1, 0, 1)


def test_edge_cases_found_by_an_audit():
    """median([-inf, inf]) was +inf (numpy: NaN); flags as an object array of "False" strings (a
    pandas column) counted as True, and NaN flags as True."""
    import numpy as np

    from robvae.stats import bound_stats, median, quartiles

    assert math.isnan(median([-math.inf, math.inf])) and median([1.0, math.inf]) == math.inf
    assert quartiles([-math.inf, 0.0, math.inf])[1] == 0.0
    b, m = [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]
    want = bound_stats(b, m, capped=[False, False, False])
    got = bound_stats(b, m, capped=np.array(["False", "False", "False"], dtype=object))
    assert got.n_capped == want.n_capped == 0
    with pytest.raises(ValueError, match="flags must be booleans"):
        bound_stats(b, m, capped=[math.nan, 0.0, 0.0])
