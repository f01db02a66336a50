"""Rotary position embeddings (Su et al. 2021, RoFormer, arXiv:2104.09864)."""

import torch

from zoo.errors import ConfigError
from zoo.pos.base import Positions, split_2d


class RoPE(Positions):
    """Rotate each query/key pair of channels by an angle proportional to the token's position.

    The score of a rotated query and key then depends only on their relative offset. Channels are
    paired as halves (``x[:r/2]`` with ``x[r/2:r]``), as in LLaMA and GPT-NeoX.

    Args:
        theta: the base of the rotation frequencies (10000 in the paper, 500000 in LLaMA 3).
        fraction: share of each head's channels that rotate (GPT-NeoX rotates 0.25); the rest pass.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        max_seq_len: int,
        causal: bool,
        theta: float = 10000.0,
        fraction: float = 1.0,
    ) -> None:
        super().__init__(dim, n_heads=n_heads, head_dim=head_dim, max_seq_len=max_seq_len, causal=causal)
        if not 0.0 < fraction <= 1.0:
            raise ConfigError("model.pos.fraction", fraction, "must be in (0, 1]")
        self.rot_dim = int(head_dim * fraction)
        if self.rot_dim % 2 or self.rot_dim == 0:
            raise ConfigError(
                "model.pos.fraction",
                fraction,
                f"RoPE rotates channel pairs: head_dim * fraction = {head_dim} * {fraction} must be a positive even "
                "number (use an even model.head_dim, or another fraction)",
            )
        inv_freq = theta ** (-torch.arange(0, self.rot_dim, 2, dtype=torch.float32) / self.rot_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(b, n, 1, r/2)``, in float32."""
        angles = positions[:, :, None, None].float() * self.inv_freq
        return angles.cos(), angles.sin()

    def rotate(
        self, x: torch.Tensor, positions: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        cos, sin = self.rotation(positions) if rotation is None else rotation
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.rot_dim == x.shape[-1]:
            x1, x2 = x.chunk(2, dim=-1)
            if torch.is_grad_enabled() or torch.compiler.is_compiling():
                return rotate_pairs(x, cos, sin)
            # eager without autograd, each half is written into one buffer: no temporaries, no
            # concatenation (half the time of the expression above on CPU; inference and decoding).
            # Compiled, the expression fuses into one kernel, and out= would split the graph.
            out = torch.empty_like(x)
            out1, out2 = out.chunk(2, dim=-1)
            torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
            torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
            return out
        return torch.cat([rotate_pairs(x[..., : self.rot_dim], cos, sin), x[..., self.rot_dim :]], dim=-1)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel ``i`` of the first half of ``x (..., r)`` with channel ``i`` of the second by the
    angle whose ``cos``, ``sin (..., r/2)`` are given."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RoPE2D(RoPE):
    """GLM's 2D rotary positions (GLM-130B, Zeng et al. 2022, arXiv:2210.02414; the 2D ids of GLM,
    arXiv:2103.10360, section 2.2): half the rotating channels turn by the position id, half by the
    intra-span id, each half as a :class:`RoPE` of ``r/2`` channels.

    A score then depends on the two offsets: between position ids (where in the corrupted text) and
    between intra-span ids (where inside a span being infilled). Given one position per token
    ``(b, n)``, the intra-span id is 0 and its half does not turn: RoPE on half the channels.

    Args: as :class:`RoPE`; ``head_dim * fraction`` must be a multiple of 4 (two halves of pairs).

    Shapes: ``x (b, n, h, d)``, ``positions (b, n, 2)`` or ``(b, n)`` -> ``(b, n, h, d)``.
    """

    two_dimensional = True

    def __init__(self, dim: int, *, head_dim: int, theta: float = 10000.0, fraction: float = 1.0, **sizes) -> None:
        super().__init__(dim, head_dim=head_dim, theta=theta, fraction=fraction, **sizes)
        if self.rot_dim % 4:
            raise ConfigError(
                "model.pos.fraction", fraction,
                f"2D RoPE rotates two halves of channel pairs: head_dim * fraction = {head_dim} * {fraction} must be a multiple of 4",
            )  # fmt: skip
        half = self.rot_dim // 2
        self.inv_freq = theta ** (-torch.arange(0, half, 2, dtype=torch.float32) / half)

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(b, n, 1, r/2)`` in float32: the position id's ``r/4`` angles, then the intra-span id's."""
        angles = torch.cat([ids[:, :, None, None].float() * self.inv_freq for ids in split_2d(positions)], dim=-1)
        return angles.cos(), angles.sin()

    def rotate(
        self, x: torch.Tensor, positions: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        cos, sin = self.rotation(positions) if rotation is None else rotation
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        quarter, half = self.rot_dim // 4, self.rot_dim // 2
        return torch.cat(
            [
                rotate_pairs(x[..., :half], cos[..., :quarter], sin[..., :quarter]),
                rotate_pairs(x[..., half : self.rot_dim], cos[..., quarter:], sin[..., quarter:]),
                x[..., self.rot_dim :],
            ],
            dim=-1,
        )
