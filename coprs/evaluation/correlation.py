"""Heatmap-IoU vs mask-IoU correlation analysis (paper Sec. 4.3, SPEC §5).

Pearson R, an ordinary-least-squares line and the confidence band of its *mean* response,

    ŷ(x) ± t_{(1+level)/2, n-2} · s · sqrt(1/n + (x - x̄)² / Sxx),

with ``s² = Σ (y - ŷ)² / (n - 2)`` and ``Sxx = Σ (x - x̄)²``. Pure numpy and :mod:`math`; the
Student-t quantile is computed here (no scipy), and matplotlib is imported only when plotting.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["OLSFit", "pearson_r", "ols_fit", "student_t_ppf", "plot_correlation"]

# Beyond this many degrees of freedom the t quantile differs from the normal one by
# ≈ (z³ + z) / (4 df) < 1e-5 for 1e-9 < p < 1 - 1e-9 (and the continued fraction gets slow).
_NORMAL_DF = 1e7


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise RuntimeError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_ppf(p: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t distribution.

    Exact closed forms for ``df`` 1 and 2; otherwise ``P(|T| <= t) = I_{t²/(df+t²)}(1/2, df/2)``
    is inverted by bisection on the regularized incomplete beta function (continued fraction) to
    ~1e-9 relative accuracy (far tighter than the 1e-4 needed for a
    band). ``df > 1e7`` (or ``inf``) uses the normal quantile.

    Args:
        p (float): probability, ``0 < p < 1`` (e.g. ``0.975`` for a two-sided 95 % interval).
        df (float): degrees of freedom, ``> 0`` (need not be an integer).

    Returns:
        float: ``t`` with ``P(T <= t) = p``; e.g. ``student_t_ppf(0.975, 10) ≈ 2.228139``.

    Raises:
        ValueError: if ``p`` is outside (0, 1) or ``df`` is not positive.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be strictly between 0 and 1, got {p!r}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    if df > _NORMAL_DF:
        return statistics.NormalDist().inv_cdf(p)
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    # With w = t² / (df + t²):  P(|T| <= t) = 2p - 1 = I_w(1/2, df/2)  and
    # P(|T| > t) = 2(1 - p) = I_{1-w}(df/2, 1/2). Bisect on whichever target is smaller (better
    # relative precision near p = 0.5 and in the far tail), then t = sqrt(df · w / (1 - w)).
    central, tail = 2.0 * p - 1.0, 2.0 * (1.0 - p)
    if central <= tail:
        u = _bisect_betainc(0.5, df / 2.0, central)  # u = w
        w, one_minus_w = u, 1.0 - u
    else:
        u = _bisect_betainc(df / 2.0, 0.5, tail)  # u = 1 - w
        w, one_minus_w = 1.0 - u, u
    return math.sqrt(df * w / one_minus_w)


def _bisect_betainc(a: float, b: float, target: float) -> float:
    """The u in (0, 1) with I_u(a, b) = target (I is increasing in u)."""
    lo, hi = 0.0, 1.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def _as_xy(x: ArrayLike, y: ArrayLike, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"x and y must be 1-D sequences of the same length, got shapes {x.shape} and {y.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(
            "x and y must be finite; drop samples with missing (NaN/None) values first"
        )
    if x.size < min_n:
        raise ValueError(f"need at least {min_n} samples, got {x.size}")
    return x, y


def pearson_r(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation coefficient of two samples.

    A constant ``x`` or ``y`` has no defined correlation; rather than return NaN (which would also
    poison JSON output), this raises, so callers decide to skip the split.

    Args:
        x (ArrayLike): shape N, e.g. per-sample heatmap IoU.
        y (ArrayLike): shape N, e.g. per-sample mask IoU.

    Returns:
        float: R in [-1, 1].

    Raises:
        ValueError: on fewer than 2 samples, mismatched lengths, non-finite values, or zero
            variance in ``x`` or ``y``.
    """
    x, y = _as_xy(x, y, min_n=2)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    for name, ss in (("x", sxx), ("y", syy)):
        if ss == 0.0:
            raise ValueError(
                f"Pearson R is undefined: {name} is constant over all {x.size} samples"
            )
    r = float(dx @ dy) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


@dataclass(frozen=True)
class OLSFit:
    """An OLS line ``y = slope * x + intercept`` with what its mean-response band needs.

    Attributes:
        slope (float): fitted slope.
        intercept (float): fitted intercept.
        r (float): Pearson R of the data.
        n (int): number of samples.
        level (float): confidence level of :meth:`band`, e.g. 0.95.
        x_mean (float): mean of x.
        sxx (float): Σ (x - x̄)².
        s (float): residual standard error, sqrt(Σ residual² / (n - 2)).
        t (float): Student-t quantile t_{(1+level)/2, n-2}.
    """

    slope: float
    intercept: float
    r: float
    n: int
    level: float
    x_mean: float
    sxx: float
    s: float
    t: float

    def summary(self) -> dict:
        """``n``, ``pearson_r``, ``slope``, ``intercept`` and ``level``: what the analysis tools
        write to JSON."""
        return {"n": self.n, "pearson_r": self.r, "slope": self.slope,
                "intercept": self.intercept, "level": self.level}

    def predict(self, xs: ArrayLike) -> np.ndarray:
        """Fitted mean response.

        Args:
            xs (ArrayLike): shape M.

        Returns:
            np.ndarray: shape M, ``slope * xs + intercept``.
        """
        return self.slope * np.asarray(xs, dtype=np.float64) + self.intercept

    def half_width(self, xs: ArrayLike) -> np.ndarray:
        """Half width of the mean-response confidence band, ``t·s·sqrt(1/n + (x - x̄)²/Sxx)``.

        Args:
            xs (ArrayLike): shape M.

        Returns:
            np.ndarray: shape M.
        """
        xs = np.asarray(xs, dtype=np.float64)
        return self.t * self.s * np.sqrt(1.0 / self.n + (xs - self.x_mean) ** 2 / self.sxx)

    def band(self, xs: ArrayLike, eta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Confidence band of the mean response (not a prediction band for new samples).

        Args:
            xs (ArrayLike): shape M, where to evaluate the band.
            eta (float | None): None: the ``level`` confidence band (``t`` standard errors);
                a number: ``eta`` standard errors of the mean response instead (the paper's
                Figures 3-4 draw ``ŷ ± 10·s.e.`` "for visual clarity").

        Returns:
            tuple[np.ndarray, np.ndarray]: ``(lower, upper)``, each shape M.
        """
        mid, half = self.predict(xs), self.half_width(xs)
        if eta is not None:
            half = half / self.t * float(eta)
        return mid - half, mid + half


def ols_fit(x: ArrayLike, y: ArrayLike, level: float = 0.95) -> OLSFit:
    """Fit ``y = slope * x + intercept`` by ordinary least squares.

    Args:
        x (ArrayLike): shape N, N >= 3 (the band has n - 2 degrees of freedom).
        y (ArrayLike): shape N.
        level (float): confidence level of the band, in (0, 1).

    Returns:
        OLSFit: the fit, with :meth:`OLSFit.band` for the mean-response confidence band.

    Raises:
        ValueError: on fewer than 3 samples, a ``level`` outside (0, 1), or anything
            :func:`pearson_r` rejects (constant x or y).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level!r}")
    try:
        x, y = _as_xy(x, y, min_n=3)
    except ValueError as err:
        raise ValueError(f"cannot fit a line with a confidence band: {err}") from None
    r = pearson_r(x, y)
    n = int(x.size)
    x_mean = float(x.mean())
    dx = x - x_mean
    sxx = float(dx @ dx)
    slope = float(dx @ (y - y.mean())) / sxx
    intercept = float(y.mean()) - slope * x_mean
    resid = y - (slope * x + intercept)
    s = math.sqrt(float(resid @ resid) / (n - 2))
    t = student_t_ppf((1.0 + level) / 2.0, n - 2)
    return OLSFit(slope, intercept, r, n, level, x_mean, sxx, s, t)


def plot_correlation(
    x: ArrayLike,
    y: ArrayLike,
    path: str | os.PathLike,
    title: str = "Heatmap IoU vs mask IoU",
    xlabel: str = "heatmap IoU",
    ylabel: str = "mask IoU",
    level: float = 0.95,
    span: tuple[float, float] | None = None,
    points: str = "samples",
    eta: float | None = None,
) -> OLSFit:
    """Scatter plot with the OLS line, its shaded mean-confidence band and R in the legend.

    Draws on a standalone :class:`matplotlib.figure.Figure` rendered by the Agg canvas, so it needs
    no display and leaves pyplot's global backend and figure list untouched.

    Args:
        x (ArrayLike): shape N, N >= 3.
        y (ArrayLike): shape N.
        path (str | os.PathLike): output PNG; parent directories are created.
        title (str): figure title.
        xlabel (str): x-axis label.
        ylabel (str): y-axis label.
        level (float): confidence level of the band.
        span (tuple[float, float] | None): x range of the line and band; None: [0, 1] when every
            x lies in it (IoU-like data), else the data's range.
        points (str): what a point is, for the legend ("samples (n = 200)").
        eta (float | None): draw ``ŷ ± eta·s.e.`` instead of the ``level`` confidence band (the
            paper's figures use 10).

    Returns:
        OLSFit: the fit that was drawn.

    Raises:
        ValueError: as :func:`ols_fit`, or a ``eta`` that is not a positive number.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if eta is not None and not (isinstance(eta, int | float) and eta > 0):
        raise ValueError(f"eta must be a positive number of standard errors, got {eta!r}")
    fit = ols_fit(x, y, level)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if span is not None:
        lo, hi = span
    elif 0.0 <= lo and hi <= 1.0:  # IoU-like data: show the whole unit interval
        lo, hi = 0.0, 1.0
    xs = np.linspace(lo, hi, 200)
    lower, upper = fit.band(xs, eta)

    fig = Figure(figsize=(5.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=10, alpha=0.5, color="tab:blue", label=f"{points} (n = {fit.n})")
    ax.plot(xs, fit.predict(xs), color="tab:red", label=f"OLS fit (R = {fit.r:.3f})")
    band = f"{level:.0%} confidence band" if eta is None else f"fit ± {eta:g} s.e."
    ax.fill_between(xs, lower, upper, color="tab:red", alpha=0.2, label=band)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return fit
