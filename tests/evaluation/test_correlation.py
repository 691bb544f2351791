"""Tests of coprs.evaluation.correlation against hand-computed values, table t quantiles and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coprs.evaluation.correlation import OLSFit, ols_fit, pearson_r, plot_correlation, student_t_ppf

# x̄ = 3, ȳ = 4, Sxx = 10, Syy = 6, Sxy = 6 -> R = 6 / sqrt(60), slope 0.6, intercept 2.2,
# residuals (-0.8, 0.6, 1.0, -0.6, -0.2), SSE = 2.4, s = sqrt(2.4 / 3) = sqrt(0.8).
X = [1.0, 2.0, 3.0, 4.0, 5.0]
Y = [2.0, 4.0, 5.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        # Two-sided 95 % / 90 % / 99 % values of a printed t table (3 decimals).
        (0.975, 10, 2.228),
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 3, 3.182),
        (0.975, 30, 2.042),
        (0.975, 120, 1.980),
        (0.95, 5, 2.015),
        (0.95, 20, 1.725),
        (0.995, 20, 2.845),
        (0.995, 4, 4.604),
        (0.9, 8, 1.397),
    ],
)
def test_student_t_ppf_table_values(p, df, expected):
    assert student_t_ppf(p, df) == pytest.approx(expected, abs=5e-4)
    assert student_t_ppf(1 - p, df) == pytest.approx(-expected, abs=5e-4)


def test_student_t_ppf_precise_values():
    # Reference values to 7 decimals (R qt(p, df), scipy.stats.t.ppf).
    assert student_t_ppf(0.975, 10) == pytest.approx(2.2281389, abs=1e-6)
    assert student_t_ppf(0.975, 3) == pytest.approx(3.1824463, abs=1e-6)
    assert student_t_ppf(0.999, 7) == pytest.approx(4.7852896, abs=1e-6)
    assert student_t_ppf(0.6, 15) == pytest.approx(0.2578853, abs=1e-6)
    assert student_t_ppf(0.5, 9) == 0.0
    # Large df tends to the normal quantile.
    assert student_t_ppf(0.975, 1e5) == pytest.approx(1.959988, abs=1e-6)
    assert student_t_ppf(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize(("p", "df"), [(0.0, 3), (1.0, 3), (0.5, 0), (0.9, -1)])
def test_student_t_ppf_rejects_bad_arguments(p, df):
    with pytest.raises(ValueError):
        student_t_ppf(p, df)


def test_pearson_r_hand_computed_and_numpy():
    assert pearson_r(X, Y) == pytest.approx(6 / math.sqrt(60))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=200)
    y = 0.7 * x + rng.normal(scale=0.2, size=200)
    assert pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pearson_r(x, -y) == pytest.approx(-np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_pearson_r_errors():
    with pytest.raises(ValueError, match="x is constant over all 3 samples"):
        pearson_r([0.5, 0.5, 0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y is constant"):
        pearson_r([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="same length"):
        pearson_r([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        pearson_r([0.1, float("nan"), 0.3], [0.1, 0.2, 0.3])


def test_ols_fit_hand_computed():
    fit = ols_fit(X, Y)
    assert isinstance(fit, OLSFit)
    assert fit.slope == pytest.approx(0.6)
    assert fit.intercept == pytest.approx(2.2)
    assert fit.r == pytest.approx(6 / math.sqrt(60))
    assert fit.n == 5 and fit.level == 0.95
    assert fit.s == pytest.approx(math.sqrt(0.8))
    assert fit.t == pytest.approx(3.1824463, abs=1e-6)
    np.testing.assert_allclose(fit.predict([0.0, 3.0]), [2.2, 4.0])


def test_ols_fit_matches_polyfit():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=50)
    y = 0.4 + 0.5 * x + rng.normal(scale=0.1, size=50)
    fit = ols_fit(x, y, level=0.9)
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope, abs=1e-10)
    assert fit.intercept == pytest.approx(intercept, abs=1e-10)


def test_band_width():
    fit = ols_fit(X, Y)
    t, s, n = 3.1824463, math.sqrt(0.8), 5
    # At x̄ the half width is t·s/sqrt(n).
    lower, upper = fit.band([3.0])
    assert (upper - lower)[0] / 2 == pytest.approx(t * s / math.sqrt(n), abs=1e-6)
    assert (upper + lower)[0] / 2 == pytest.approx(4.0)
    # At x = 5: t·s·sqrt(1/5 + 4/10); the band is narrowest at x̄ and symmetric around it.
    lower, upper = fit.band(np.array([1.0, 3.0, 5.0]))
    half = (upper - lower) / 2
    assert half[2] == pytest.approx(t * s * math.sqrt(0.2 + 0.4), abs=1e-6)
    assert half[0] == pytest.approx(half[2]) and half[1] < half[0]
    # A higher level widens the band.
    assert np.all(ols_fit(X, Y, level=0.99).half_width([3.0]) > fit.half_width([3.0]))
    # eta: the paper's band of eta standard errors (s·sqrt(1/n + ...)), whatever the level
    lower, upper = fit.band([3.0, 5.0], eta=10)
    assert (upper - lower)[0] / 2 == pytest.approx(10 * s / math.sqrt(n), abs=1e-6)
    assert (upper - lower)[1] / 2 == pytest.approx(10 * s * math.sqrt(0.2 + 0.4), abs=1e-6)
    assert (upper + lower)[0] / 2 == pytest.approx(4.0)


def test_ols_fit_needs_three_samples():
    with pytest.raises(ValueError, match="need at least 3 samples, got 2"):
        ols_fit([0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ValueError, match="level"):
        ols_fit(X, Y, level=95)


def test_plot_correlation_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(size=40)
    y = np.clip(0.2 + 0.7 * x + rng.normal(scale=0.1, size=40), 0, 1)
    path = tmp_path / "plots" / "correlation.png"
    fit = plot_correlation(x, y, path, title="reason_seg_val")
    assert fit.n == 40 and fit.r == pytest.approx(np.corrcoef(x, y)[0, 1])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="at least 3"):
        plot_correlation([0.1, 0.2], [0.3, 0.4], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="eta must be a positive number"):
        plot_correlation(x, y, tmp_path / "bad.png", eta=0)
    assert plot_correlation(x, y, tmp_path / "eta.png", eta=10).n == 40  # the paper's band
    assert not (tmp_path / "bad.png").exists()
