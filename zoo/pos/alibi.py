"""Attention with Linear Biases (Press et al. 2021, arXiv:2108.12409)."""

import math

import torch

from zoo.pos.base import Positions


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The paper's head slopes: a geometric sequence starting at ``2^(-8/n)``.

    For a head count that is not a power of two, the slopes of the nearest lower power of two are
    followed by every other slope of the next power of two (the authors' reference code).
    """

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(closest)
    if closest < n_heads:
        slopes += power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)


class ALiBi(Positions):
    """Penalise each score by a head-specific slope times the query-key distance: ``-m_h |i - j|``.

    With a causal mask ``|i - j| = i - j``, the paper's form; the absolute value extends it to
    bidirectional and prefix attention.
    """

    def __init__(self, dim: int, *, n_heads: int, head_dim: int, max_seq_len: int, causal: bool) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        distance = (q_pos[:, :, None] - k_pos[:, None, :]).abs()  # (b, n, m)
        return -self.slopes[None, :, None, None] * distance[:, None].float()
