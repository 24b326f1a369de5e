"""The study statistics on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robvae.studies.stats import count_above, describe, least_squares, pearson, quartiles, spearman


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
