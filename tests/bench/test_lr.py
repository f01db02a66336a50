"""The learning-rate grid picks the best rate of a toy problem and flags a winner on the grid's edge."""

import math

import pytest
import torch

from zoo.bench.lr import choose, log_grid


def toy_loss(lr: float, *, steps: int = 20) -> float | None:
    """Gradient descent on f(w) = 0.5 * w^T A w with curvatures 1 and 10: too small a rate is slow,
    past 2 / 10 it diverges; the best rate after a few steps is near 2 / (1 + 10)."""
    a = torch.tensor([1.0, 10.0])
    w = torch.ones(2)
    for _ in range(steps):
        w = w - lr * a * w
    loss = float(0.5 * (a * w * w).sum())
    return loss if math.isfinite(loss) and loss < 1e6 else None


def test_picks_the_best_rate_of_a_toy_problem():
    grid = log_grid(0.1, points=5, factor=2.0)  # 0.025 ... 0.4
    assert grid == pytest.approx((0.025, 0.05, 0.1, 0.2, 0.4))
    choice = choose(grid, toy_loss)
    assert choice.chosen == pytest.approx(max(grid, key=lambda lr: -(toy_loss(lr) or math.inf)))
    assert choice.chosen == pytest.approx(0.1) and not choice.on_edge
    assert choice.losses[-1] == math.inf  # 0.4 > 2 / 10: diverged, counted as infinitely bad


def test_flags_a_winner_on_the_edge():
    choice = choose([0.001, 0.002, 0.004], toy_loss)  # all far too small: the largest wins, at the edge
    assert choice.chosen == 0.004 and choice.on_edge and "edge" in choice.describe()
    with pytest.raises(ValueError):
        choose([0.0, 0.1], toy_loss)
