"""Seed statistics: mean and 95% confidence interval, and whether two variants differ beyond seed noise.

With 3-5 seeds the normal 1.96 badly understates the interval, so it uses Student's t quantiles,
tabulated here (two-sided 95%, i.e. the 0.975 quantile) to keep scipy out of the dependencies; a
fractional number of degrees of freedom (Welch) interpolates linearly in ``1 / df``, which is
accurate to about 0.1% between the tabulated points.
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
