"""Rotary position embeddings (Su et al. 2021, RoFormer, arXiv:2104.09864)."""

import torch

from zoo.errors import ConfigError
from zoo.pos.base import Positions


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
                return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
            # eager without autograd, each half is written into one buffer: no temporaries, no
            # concatenation (half the time of the expression above on CPU; inference and decoding).
            # Compiled, the expression fuses into one kernel, and out= would split the graph.
            out = torch.empty_like(x)
            out1, out2 = out.chunk(2, dim=-1)
            torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
            torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
            return out
        rot, rest = x[..., : self.rot_dim], x[..., self.rot_dim :]
        x1, x2 = rot.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
