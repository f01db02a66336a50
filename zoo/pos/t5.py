"""T5's bucketed relative position bias (Raffel et al. 2019, arXiv:1910.10683)."""

import math

import torch
from torch import nn

from zoo.pos.base import Positions


def relative_buckets(
    relative: torch.Tensor, *, bidirectional: bool, n_buckets: int, max_distance: int
) -> torch.Tensor:
    """Map key-minus-query offsets to buckets: exact for small offsets, logarithmic up to ``max_distance``.

    A bidirectional stack spends half of the buckets on keys after the query; a causal one sees only
    keys at or before the query.
    """
    buckets = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = n_buckets // 2
    log_scaled = exact + (
        torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (n_buckets - exact)
    ).long()
    log_scaled = log_scaled.clamp(max=n_buckets - 1)
    return buckets + torch.where(distance < exact, distance, log_scaled)


class T5RelativeBias(Positions):
    """A learned scalar per head and relative-distance bucket, added to the scores; shared by all layers.

    Args:
        n_buckets: number of buckets (32 in T5).
        max_distance: offsets beyond this share the last bucket (128 in T5).
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        max_seq_len: int,
        causal: bool,
        n_buckets: int = 32,
        max_distance: int = 128,
    ) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        self.bidirectional = not causal
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(n_buckets, n_heads)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        relative = k_pos[:, None, :] - q_pos[:, :, None]  # (b, n, m)
        buckets = relative_buckets(
            relative, bidirectional=self.bidirectional, n_buckets=self.n_buckets, max_distance=self.max_distance
        )
        return self.relative_attention_bias(buckets).permute(0, 3, 1, 2)  # (b, h, n, m)
