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
        """The tables :func:`rotate_pairs` reads, each ``(b, n, 1, r)``, in float32."""
        return rotation_tables(positions[:, :, None, None].float() * self.inv_freq)

    def rotate(
        self, x: torch.Tensor, positions: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        cos, sin = self.rotation(positions) if rotation is None else rotation
        if cos.dtype != x.dtype:  # a no-op .to() still costs a call, twice per layer
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if self.rot_dim == x.shape[-1]:
            return rotate_pairs(x, cos, sin)
        return torch.cat([rotate_pairs(x[..., : self.rot_dim], cos, sin), x[..., self.rot_dim :]], dim=-1)


def rotation_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of ``angles (..., r/2)``, laid out for :func:`rotate_pairs`: ``[cos, cos]`` and
    ``[-sin, sin]``, each ``(..., r)``."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel ``i`` of the first half of ``x (..., r)`` with channel ``i`` of the second, by the
    angles of :func:`rotation_tables`' ``cos``, ``sin (..., r)``.

    ``[x1 cos - x2 sin, x2 cos + x1 sin]`` is ``x * [cos, cos] + [x2, x1] * [-sin, sin]``, and one roll
    swaps the halves: three operators (and three backward nodes), against eight for the halves computed
    apart and concatenated, for training, inference and decoding alike. Adding in place into the
    product's fresh buffer is safe under autograd: a product does not keep its output.
    """
    return (x * cos).addcmul_(x.roll(x.shape[-1] // 2, dims=-1), sin)


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
        """``(cos, sin)``, each ``(b, n, 1, r)`` in float32: the position id's tables (:func:`rotation_tables`
        of its ``r/4`` angles), then the intra-span id's."""
        tables = [rotation_tables(ids[:, :, None, None].float() * self.inv_freq) for ids in split_2d(positions)]
        return torch.cat([t[0] for t in tables], dim=-1), torch.cat([t[1] for t in tables], dim=-1)

    def rotate(
        self, x: torch.Tensor, positions: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        cos, sin = self.rotation(positions) if rotation is None else rotation
        if cos.dtype != x.dtype:  # a no-op .to() still costs a call, twice per layer
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        half = self.rot_dim // 2
        return torch.cat(
            [
                rotate_pairs(x[..., :half], cos[..., :half], sin[..., :half]),
                rotate_pairs(x[..., half : self.rot_dim], cos[..., half:], sin[..., half:]),
                x[..., self.rot_dim :],
            ],
            dim=-1,
        )
