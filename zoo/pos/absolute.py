"""Absolute positions added to the token embeddings."""

import torch
from torch import nn

from zoo.pos.base import Positions, can_read, split_2d


class LearnedPositions(Positions):
    """A learned embedding per position, as in GPT-2 and BERT.

    It cannot encode positions at or past ``max_seq_len``; asking for one is an error, not a wrap.
    """

    extrapolates = False

    def __init__(self, dim: int, *, n_heads: int, head_dim: int, max_seq_len: int, causal: bool) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        self.max_positions = max_seq_len
        self.weight = nn.Parameter(torch.randn(max_seq_len, dim) * 0.02)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if can_read(positions):
            self.check_length(int(positions.max()) + 1)
        return x + self.weight[positions]


class Learned2DPositions(LearnedPositions):
    """GLM's 2D positions (Du et al. 2022, arXiv:2103.10360, section 2.2): two learned tables, summed.

    A token at ``(position id, intra-span id)`` adds ``weight[position id] + span_weight[intra-span id]``:
    the corrupted text (Part A) has intra-span id 0, a token of a span being infilled (Part B) the
    position of its span's ``[MASK]`` and its place in the span, ``1..span length + 1``, so the model
    is not told how long a span is. Given one position per token ``(b, n)`` it reads as intra-span id
    0 throughout: a plain learned scheme plus one constant vector.

    Shapes: ``x (b, n, dim)``, ``positions (b, n, 2)`` or ``(b, n)`` -> ``(b, n, dim)``.
    """

    two_dimensional = True

    def __init__(self, dim: int, *, n_heads: int, head_dim: int, max_seq_len: int, causal: bool) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        self.span_weight = nn.Parameter(torch.randn(max_seq_len, dim) * 0.02)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        position, span = split_2d(positions)
        if can_read(positions):
            self.check_length(int(positions.max()) + 1)
        return x + self.weight[position] + self.span_weight[span]


class SinusoidalPositions(Positions):
    """Fixed sine/cosine positions of the original Transformer (Vaswani et al. 2017, arXiv:1706.03762).

    Args:
        base: the wavelength base (10000 in the paper).
    """

    def __init__(
        self, dim: int, *, n_heads: int, head_dim: int, max_seq_len: int, causal: bool, base: float = 10000.0
    ) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        half = dim // 2
        self.register_buffer("inv_freq", base ** (-torch.arange(half, dtype=torch.float32) / half), persistent=False)
        self.odd = dim % 2

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions[..., None].float() * self.inv_freq
        table = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if self.odd:
            table = nn.functional.pad(table, (0, 1))
        return x + table.to(x.dtype)
