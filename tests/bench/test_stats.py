"""Confidence intervals and the "exceeds seed noise" flag on hand-made numbers."""

import math

import pytest

from zoo.bench.stats import exceeds_noise, intervals_overlap, summarize, t_quantile, welch


def test_t_quantiles():
    assert t_quantile(2) == pytest.approx(4.3027)
    assert t_quantile(4) == pytest.approx(2.7764)
    assert t_quantile(35) == pytest.approx(2.0301, abs=2e-4)  # interpolated in 1/df
    assert t_quantile(1000) == pytest.approx(1.9623, abs=2e-4)
    assert t_quantile(4.5) == pytest.approx(2.6589, abs=5e-3)  # Welch's fractional df (exact: 2.6589)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_confidence_interval_by_hand():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.half_width == pytest.approx(4.3027 / math.sqrt(3))
    assert (s.low, s.high) == pytest.approx((2.0 - 2.4841, 2.0 + 2.4841), abs=1e-4)
    assert summarize([5.0]).half_width == math.inf


def test_welch_by_hand():
    t, df = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert t == pytest.approx(-3 / math.sqrt(2 / 3))
    assert df == pytest.approx(4.0)


def test_exceeds_noise():
    assert exceeds_noise([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # |t| = 3.67 > 2.78
    assert not exceeds_noise([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # |t| = 0.61
    assert exceeds_noise([3.20, 3.21, 3.19], [3.30, 3.31, 3.29])  # tiny noise, clear gap
    assert not exceeds_noise([3.20, 3.40, 3.00], [3.30, 3.10, 3.50])  # gap inside the noise
    assert exceeds_noise([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])  # no noise at all
    assert not exceeds_noise([1.0, 1.0], [1.0, 1.0])
    assert not exceeds_noise([1.0], [5.0])  # one seed: no noise estimate, no flag


def test_overlapping_intervals_are_more_conservative_than_welch():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    assert intervals_overlap(a, b) and exceeds_noise(a, b)
    assert not intervals_overlap([3.20, 3.21, 3.19], [3.30, 3.31, 3.29])
