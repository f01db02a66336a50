"""Seed statistics: mean and 95% confidence interval, and whether two variants differ beyond seed noise.

With 3-5 seeds the normal 1.96 badly understates the interval, so it uses Student's t quantiles,
tabulated here (two-sided 95%, i.e. the 0.975 quantile) to keep scipy out of the dependencies; a
fractional number of degrees of freedom (Welch) interpolates linearly in ``1 / df``, which is
accurate to about 0.1% between the tabulated points.

Two variants trained on the same seeds, with the same batches and the same initial values for what
they share (common random numbers, docs/methodology.md), are compared **paired**: the t-interval of
the per-seed differences, whose noise is what the variants do *not* share. Variants that saw
different data are compared with Welch's unpaired interval. Both come with a two-sided p-value, from
Student's t distribution function (the regularised incomplete beta function, evaluated below).
"""

import math
from dataclasses import dataclass

#: Student's t 0.975 quantiles by degrees of freedom; ``math.inf`` is the normal 1.959964
T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
    10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
    18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
    26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
    math.inf: 1.9600,
}  # fmt: skip


def t_quantile(df: float) -> float:
    """The two-sided 95% critical value of Student's t with ``df`` (> 0, maybe fractional) degrees of freedom."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if df in T975:
        return T975[df]
    keys = sorted(T975)
    if df < 1:
        return T975[1]  # below one degree of freedom the interval is unbounded anyway; stay conservative
    hi = next(k for k in keys if k > df)
    lo = keys[keys.index(hi) - 1]
    # linear in 1/df: the quantile is smooth and nearly linear in that variable
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
    return T975[lo] + w * (T975[hi] - T975[lo])


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation, count, and the 95% confidence interval's half-width."""

    mean: float
    std: float
    n: int
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.half_width:.2g}" if self.n > 1 else f"{self.mean:.4g}"


def summarize(values: list[float]) -> Summary:
    """Mean and t-based 95% CI of ``values`` (the half-width is ``inf`` for a single value: no noise estimate)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = sum(values) / n
    if n == 1:
        return Summary(mean, math.nan, 1, math.inf)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(mean, std, n, t_quantile(n - 1) * std / math.sqrt(n))


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t statistic and its Welch-Satterthwaite degrees of freedom for ``mean(a) - mean(b)``."""
    sa, sb = summarize(a), summarize(b)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    diff = sa.mean - sb.mean
    if va + vb == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.inf
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return diff / math.sqrt(va + vb), df


def exceeds_noise(a: list[float], b: list[float]) -> bool:
    """Whether ``a`` and ``b`` differ beyond seed noise: Welch's two-sided t-test rejects equal means at 5%.

    Fewer than two values on either side give no noise estimate, hence never a flag.
    """
    if len(a) < 2 or len(b) < 2:
        return False
    t, df = welch(a, b)
    return abs(t) > t_quantile(df)


def intervals_overlap(a: list[float], b: list[float]) -> bool:
    """Whether the 95% CIs of ``a`` and ``b`` overlap (a stricter, more conservative check than Welch's)."""
    sa, sb = summarize(a), summarize(b)
    return sa.low <= sb.high and sb.low <= sa.high


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` by its continued fraction (modified Lentz),
    which converges fast for ``x < (a + 1) / (a + b + 2)``; the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)``
    covers the rest."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f


def t_p_value(t: float, df: float) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom: ``P(|T| >= |t|)``."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2))
    return _incomplete_beta(df / 2, 0.5, df / (df + t * t))


@dataclass(frozen=True)
class Difference:
    """``mean(a) - mean(b)`` with its 95% half-width, two-sided p-value, and how it was estimated.

    ``paired``: from per-seed differences (``n`` pairs, ``n - 1`` degrees of freedom); otherwise Welch.
    """

    mean: float
    half_width: float
    p_value: float
    df: float
    n: int
    paired: bool

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes zero (the test rejects equal means at 5%)."""
        return self.p_value < 0.05


def paired(a: list[float], b: list[float]) -> Difference:
    """The paired t-interval and test of ``a[i] - b[i]`` (values of two variants under the same seed ``i``)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    s = summarize(diffs)
    if s.n < 2:
        return Difference(s.mean, math.inf, math.nan, 0, s.n, True)
    se = s.std / math.sqrt(s.n)
    t = s.mean / se if se > 0 else (0.0 if s.mean == 0 else math.copysign(math.inf, s.mean))
    return Difference(s.mean, s.half_width, t_p_value(t, s.n - 1), s.n - 1, s.n, True)


def unpaired(a: list[float], b: list[float]) -> Difference:
    """Welch's interval and test of ``mean(a) - mean(b)`` (no pairing between the values)."""
    sa, sb = summarize(a), summarize(b)
    if sa.n < 2 or sb.n < 2:
        return Difference(sa.mean - sb.mean, math.inf, math.nan, 0, min(sa.n, sb.n), False)
    t, df = welch(a, b)
    se = math.sqrt(sa.std**2 / sa.n + sb.std**2 / sb.n)
    return Difference(sa.mean - sb.mean, t_quantile(df) * se, t_p_value(t, df), df, min(sa.n, sb.n), False)
