"""Each variant at its own learning rate: a small log grid screened on a short budget, then every seed at the winner.

Comparing variants at one learning rate compares their fit to that rate as much as the variants:
Narang et al. 2021 (arXiv:2102.11972) find that many modifications lose their gain once each gets a
tuned rate. A study with ``bench.lr.grid`` set trains each grid value once (``bench.lr.screen_seed``,
``bench.lr.screen_steps``: a shorter budget), keeps the value of the lowest final validation loss
(a diverged screen counts as infinitely bad), and trains every seed at it. A winner at either end of the
grid is flagged: the best rate may lie outside it, so the variant may be under-tuned.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LRChoice:
    """The screened grid, each value's loss (``inf``: diverged or failed), the winner, and whether it is on an edge."""

    grid: tuple[float, ...]
    losses: tuple[float, ...]
    chosen: float
    on_edge: bool

    def describe(self) -> str:
        tried = ", ".join(f"{lr:g}: {loss:.4g}" for lr, loss in zip(self.grid, self.losses, strict=True))
        return f"lr {self.chosen:g}" + (" (on the grid's edge: widen it)" if self.on_edge else "") + f" [{tried}]"


def log_grid(center: float, *, points: int = 3, factor: float = 2.0) -> tuple[float, ...]:
    """``points`` rates spaced by ``factor`` around ``center`` (odd ``points`` put it in the middle)."""
    if points < 1 or factor <= 1:
        raise ValueError(f"a grid needs points >= 1 and factor > 1, got {points}, {factor}")
    first = -(points // 2) if points % 2 else -(points // 2) + 0.5
    return tuple(center * factor ** (first + i) for i in range(points))


def choose(grid: tuple[float, ...] | list[float], loss_of: Callable[[float], float | None]) -> LRChoice:
    """Screen every rate of ``grid`` with ``loss_of(lr)`` (``None`` or non-finite: diverged) and pick the best."""
    rates = tuple(sorted(float(x) for x in grid))
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"a learning-rate grid needs positive values, got {list(grid)}")
    losses = []
    for lr in rates:
        loss = loss_of(lr)
        losses.append(float(loss) if loss is not None and math.isfinite(loss) else math.inf)
    best = min(range(len(rates)), key=losses.__getitem__)
    # with one or two values every winner is on an edge; that is still worth saying
    return LRChoice(rates, tuple(losses), rates[best], on_edge=best in (0, len(rates) - 1))
