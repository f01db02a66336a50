"""Multi-head latent attention (``model/attention=mla``): keys and values rebuilt from a small cached latent.

DeepSeek-V2 (arXiv:2405.04434, section 2.1) compresses each token into one latent of ``kv_rank``
channels; per-head keys and values are up-projections of it, so a decoding cache holds the latent
instead of ``2 * n_heads * head_dim`` channels. RoPE cannot act on such keys (a rotation between
the up-projection and the query would stop the cached latent from serving every position), so
position goes into a separate, *decoupled* rotary part: a small key shared by all heads, computed
from the token and rotated, concatenated to each head's non-rotary key; each query head gets its own
rotary part likewise. The cache holds the latent and that rotary key.

Letters: ``b`` batch, ``h`` heads, ``n`` queries, ``m`` keys, ``r`` latent channels (``kv_rank``),
``d`` channels of one head.
"""

import torch
from einops import rearrange
from torch import nn

from zoo.attention.attention import Context
from zoo.attention.cache import KVCache
from zoo.attention.kernels import check_kernel, pick_kernel
from zoo.attention.signature import needs_backward
from zoo.errors import ConfigError
from zoo.norm import RMSNorm


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434) with low-rank joint KV compression,
    optional low-rank query compression and a decoupled rotary key.

    Sizes follow the paper's roles: each head's query and key are ``nope_head_dim`` channels without
    positions followed by ``head_dim`` channels that the position scheme rotates (``d_h`` and
    ``d_h^R``); ``head_dim`` is the width the stack builds its position scheme for, as in HF's
    ``DeepseekV3Config.head_dim = qk_rope_head_dim``. The latent and the rotary key are
    RMS-normalised and rotated before they are cached; keys and values are up-projected from the
    cached latent at every step (the paper's absorbed form folds that projection into the query and
    the output: the same function at a lower decoding cost).

    Args:
        dim: model width.
        n_heads: heads.
        head_dim: width of the decoupled rotary part of each query and of the shared rotary key.
        kv_rank: channels of the cached latent (``d_c``); ``None``: ``4 * nope_head_dim`` (the paper's ratio).
        q_rank: channels of the compressed query (``d_c'``); ``None``: the query is projected directly
            (DeepSeek-V2-Lite).
        nope_head_dim: width of each head's non-rotary query and key; ``None``: ``head_dim``.
        v_head_dim: width of each head's value; ``None``: ``nope_head_dim``.
        window: each query sees only keys fewer than ``window`` positions away.
        bias: biases on the down-projections and the output projection.
        dropout: dropout on the attention weights.
        scale: score scale; ``None``: ``(nope_head_dim + head_dim) ** -0.5``.
        kernel: as in :class:`~zoo.attention.Attention`.
        eps: of the RMSNorms on the latents.

    Shapes: ``(b, n, dim) -> (b, n, dim)``; the cache holds ``(b, 1, m, kv_rank)`` latents as its keys
    and ``(b, 1, m, head_dim)`` rotary keys as its values.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        kv_rank: int | None = None,
        q_rank: int | None = None,
        nope_head_dim: int | None = None,
        v_head_dim: int | None = None,
        window: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        kernel: str = "auto",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        nope_head_dim = head_dim if nope_head_dim is None else nope_head_dim
        v_head_dim = nope_head_dim if v_head_dim is None else v_head_dim
        kv_rank = 4 * nope_head_dim if kv_rank is None else kv_rank
        for key, value in [("kv_rank", kv_rank), ("q_rank", q_rank), ("nope_head_dim", nope_head_dim), ("v_head_dim", v_head_dim)]:
            if value is not None and value <= 0:
                raise ConfigError(f"model.attention.{key}", value, "must be a positive number of channels (or null for the default)")
        if window is not None and window <= 0:
            raise ConfigError("model.attention.window", window, "must be a positive number of tokens (or null for none)")
        check_kernel(kernel, dropout=dropout)
        self.n_heads, self.head_dim, self.nope_head_dim, self.v_head_dim = n_heads, head_dim, nope_head_dim, v_head_dim
        self.kv_rank, self.q_rank = kv_rank, q_rank
        self.window, self.dropout, self.kernel = window, dropout, kernel
        self.scale = (nope_head_dim + head_dim) ** -0.5 if scale is None else scale
        q_width = n_heads * (nope_head_dim + head_dim)
        if q_rank is None:
            self.q_proj = nn.Linear(dim, q_width, bias=False)
        else:
            self.q_a_proj = nn.Linear(dim, q_rank, bias=bias)
            self.q_a_norm = RMSNorm(q_rank, eps=eps)
            self.q_b_proj = nn.Linear(q_rank, q_width, bias=False)
        # one projection makes the latent and the shared rotary key (HF: kv_a_proj_with_mqa)
        self.kv_a_proj = nn.Linear(dim, kv_rank + head_dim, bias=bias)
        self.kv_a_norm = RMSNorm(kv_rank, eps=eps)
        self.kv_b_proj = nn.Linear(kv_rank, n_heads * (nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_heads * v_head_dim, dim, bias=bias)

    def score_projections(self) -> tuple[nn.Linear, ...]:
        """The query's projections (DeepNorm's init); the latent carries the values too."""
        return (self.q_proj,) if self.q_rank is None else (self.q_a_proj, self.q_b_proj)

    def flops_per_pair(self) -> int:
        """Forward FLOPs of one query against one key: ``q k^T`` over ``nope + rope`` channels and the
        weighted sum of ``v_head_dim`` channels, per head."""
        return 2 * self.n_heads * (self.nope_head_dim + self.head_dim + self.v_head_dim)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, dim) -> (b, n, h, nope_head_dim + head_dim)``."""
        q = self.q_proj(x) if self.q_rank is None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        return rearrange(q, "b n (h d) -> b n h d", h=self.n_heads)

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> torch.Tensor:
        q_nope, q_rope = self.query(x).split([self.nope_head_dim, self.head_dim], dim=-1)
        latent, k_rope = self.kv_a_proj(x).split([self.kv_rank, self.head_dim], dim=-1)
        q_pos = k_pos = ctx.positions.expand(x.shape[0], -1)
        q_rope = ctx.pos.rotate(q_rope, q_pos, ctx.rotation)
        k_rope = ctx.pos.rotate(k_rope[:, :, None], k_pos, ctx.rotation)  # one rotary key for every head
        latent = rearrange(self.kv_a_norm(latent), "b m r -> b 1 m r")
        k_rope = rearrange(k_rope, "b m 1 d -> b 1 m d")
        mask = ctx.mask.with_window(self.window)
        if cache is not None:
            latent, k_rope, k_pos, key_valid = cache.update(latent, k_rope, k_pos, mask.key_valid)
            mask = mask.with_keys(key_valid)
        kv = rearrange(self.kv_b_proj(latent[:, 0]), "b m (h d) -> b h m d", h=self.n_heads)
        k_nope, v = kv.split([self.nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
        q = rearrange(torch.cat([q_nope, q_rope], dim=-1), "b n h d -> b h n d")
        dropout = self.dropout if self.training else 0.0
        kernel = pick_kernel(
            self.kernel, window=mask.window, device=q.device, backward=needs_backward(q, k, v), dropout=dropout,
            n=q.shape[2], m=k.shape[2], head_dim=min(q.shape[-1], v.shape[-1]),
        )
        out = kernel(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=ctx.pos.bias, scale=self.scale, dropout=dropout)
        return self.o_proj(rearrange(out, "b h n d -> b n (h d)"))
