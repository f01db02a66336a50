"""Multi-head latent attention (``model/attention=mla``): keys and values rebuilt from a small cached latent.

DeepSeek-V2 (arXiv:2405.04434, section 2.1) compresses each token into one latent of ``kv_rank``
channels; per-head keys and values are up-projections of it, so a decoding cache holds the latent
instead of ``2 * n_heads * head_dim`` channels. RoPE cannot act on such keys (a rotation between
the up-projection and the query would stop the cached latent from serving every position), so
position goes into a separate, *decoupled* rotary part: a small key shared by all heads, computed
from the token and rotated, concatenated to each head's non-rotary key; each query head gets its own
rotary part likewise. The cache holds the latent and that rotary key.

Two forms compute the same function (section 2.1.2). The *expanded* one up-projects every key's
latent into per-head keys and values, as the equations are written. The *absorbed* one folds the
key up-projection ``W^UK`` into the query (``q^T W^UK c = (W^UK^T q)^T c``: a query in latent space
scored against the latent itself) and the value up-projection ``W^UV`` into the output (applied once
to each head's weighted sum of latents): attention then runs as multi-query attention over the
cache as it is, and a decoding step no longer up-projects every cached latent.

Letters: ``b`` batch, ``h`` heads, ``n`` queries, ``m`` keys, ``r`` latent channels (``kv_rank``),
``d`` channels of a head's non-rotary query or key, ``e`` channels of a head's value, ``c`` channels
of a cached key (latent, then rotary key).
"""

import torch
from einops import rearrange
from torch import nn

from zoo.attention.attention import Context
from zoo.attention.cache import KVCache
from zoo.attention.kernels import check_kernel, pick_kernel
from zoo.attention.mask import Mask
from zoo.attention.signature import BiasFn, needs_backward
from zoo.errors import ConfigError
from zoo.norm import RMSNorm


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434) with low-rank joint KV compression,
    optional low-rank query compression and a decoupled rotary key.

    Sizes follow the paper's roles: each head's query and key are ``nope_head_dim`` channels without
    positions followed by ``head_dim`` channels that the position scheme rotates (``d_h`` and
    ``d_h^R``); ``head_dim`` is the width the stack builds its position scheme for, as in HF's
    ``DeepseekV3Config.head_dim = qk_rope_head_dim``. The latent and the rotary key are
    RMS-normalised and rotated before they are cached.

    Each call runs the expanded or the absorbed form (module docstring), whichever costs fewer FLOPs
    at its sizes (:meth:`flops`) unless ``absorb`` fixes one: per pair, the absorbed form scores and
    sums ``kv_rank + head_dim`` channels where the expanded one scores ``nope_head_dim + head_dim``
    and sums ``v_head_dim``, but it up-projects no cached key, so it wins when few queries meet many
    cached keys (decoding) and loses on a whole sequence at once (training, prefill) whenever
    ``2 * kv_rank + head_dim > nope_head_dim + v_head_dim`` (the paper's sizes: always).

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
        softcap: soft-cap of the scaled scores, as in :class:`~zoo.attention.Attention` (both forms
            make the same scores, so both cap them alike); ``None``: none.
        absorb: ``"auto"``: the cheaper form per call; ``True``: always absorbed; ``False``: always expanded.
        eps: of the RMSNorms on the latents.

    Shapes: ``(b, n, dim) -> (b, n, dim)``; the cache holds ``(b, 1, m, kv_rank + head_dim)`` keys,
    each token's latent followed by its rotary key (the layout of DeepSeek's FlashMLA kernels), and
    values of zero channels: the absorbed form takes the keys themselves as values.
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
        softcap: float | None = None,
        absorb: str | bool = "auto",
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
        if absorb != "auto" and not isinstance(absorb, bool):
            raise ConfigError("model.attention.absorb", absorb, "auto (the cheaper form per call), true or false")
        check_kernel(kernel, dropout=dropout, softcap=softcap)
        self.n_heads, self.head_dim, self.nope_head_dim, self.v_head_dim = n_heads, head_dim, nope_head_dim, v_head_dim
        self.kv_rank, self.q_rank = kv_rank, q_rank
        self.window, self.dropout, self.kernel, self.softcap, self.absorb = window, dropout, kernel, softcap, absorb
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
        # no bias: the absorbed form relies on this being a plain matrix (W^UK and W^UV stacked per head)
        self.kv_b_proj = nn.Linear(kv_rank, n_heads * (nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_heads * v_head_dim, dim, bias=bias)

    def score_projections(self) -> tuple[nn.Linear, ...]:
        """The query's projections (DeepNorm's init); the latent carries the values too."""
        return (self.q_proj,) if self.q_rank is None else (self.q_a_proj, self.q_b_proj)

    # -- cost: which form a call runs --------------------------------------------------------------

    def flops(self, n_queries: int, n_keys: int, *, absorbed: bool) -> float:
        """Forward FLOPs that grow with the keys, of ``n_queries`` new tokens over ``n_keys`` tokens in
        all, in one form: the scores and weighted sums (per pair and head: expanded ``nope + rope``
        and ``v_head_dim`` channels; absorbed ``kv_rank + rope`` for both), plus, expanded, the
        up-projection of the keys that are not new (absorbed, the values are the whole cached keys, rotary
        channels included: :meth:`absorbed` says why). What both forms spend per new token (the
        up-projection of its own latent, or the same matrix applied to its query and output) is the
        projections' share, counted with every other weight (:mod:`zoo.arch.cost`)."""
        held = n_keys if self.window is None else min(self.window, n_keys)  # a window's ring holds no more
        h, r = self.n_heads, self.kv_rank
        if absorbed:
            return n_queries * held * 2.0 * h * 2 * (r + self.head_dim)
        pairs = n_queries * held * 2.0 * h * (self.nope_head_dim + self.head_dim + self.v_head_dim)
        return pairs + 2.0 * max(held - n_queries, 0) * self.kv_b_proj.weight.numel()

    def absorbs(self, n_queries: int, n_keys: int) -> bool:
        """Whether a call of ``n_queries`` over ``n_keys`` runs the absorbed form."""
        if self.absorb != "auto":
            return self.absorb
        return self.flops(n_queries, n_keys, absorbed=True) < self.flops(n_queries, n_keys, absorbed=False)

    def score_flops(self, n_queries: int, n_keys: int) -> float:
        """The cost hook of :func:`zoo.arch.cost.score_flops`: :meth:`flops` of the form this call would run."""
        return self.flops(n_queries, n_keys, absorbed=self.absorbs(n_queries, n_keys))

    def cache_bytes(self, n: int) -> int:
        """Bytes one sequence's cache holds after ``n`` tokens: a latent and a rotary key per token."""
        held = n if self.window is None else min(self.window, n)
        return held * (self.kv_rank + self.head_dim) * self.kv_a_proj.weight.element_size()

    # -- forward -----------------------------------------------------------------------------------

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, dim) -> (b, n, h, nope_head_dim + head_dim)``."""
        q = self.q_proj(x) if self.q_rank is None else self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        return rearrange(q, "b n (h d) -> b n h d", h=self.n_heads)

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> torch.Tensor:
        q_nope, q_rope = self.query(x).split([self.nope_head_dim, self.head_dim], dim=-1)
        latent, k_rope = self.kv_a_proj(x).split([self.kv_rank, self.head_dim], dim=-1)
        q_pos = k_pos = ctx.positions.expand(x.shape[0], -1)
        q_rope = rearrange(ctx.pos.rotate(q_rope, q_pos, ctx.rotation), "b n h d -> b h n d")
        k_rope = ctx.pos.rotate(k_rope[:, :, None], k_pos, ctx.rotation)  # one rotary key for every head
        key = rearrange(torch.cat([self.kv_a_norm(latent)[:, :, None], k_rope], dim=-1), "b m 1 c -> b 1 m c")
        mask = ctx.mask.with_window(self.window)
        if cache is not None:
            key, _, k_pos, key_valid = cache.update(key, key[..., :0], k_pos, mask.key_valid)
            mask = mask.with_keys(key_valid)
        form = self.absorbed if self.absorbs(x.shape[1], key.shape[2]) else self.expanded
        out = form(q_nope, q_rope, key, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=ctx.pos.bias)
        return self.o_proj(rearrange(out, "b n h e -> b n (h e)"))

    def up_projections(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W^UK (h, d, r)`` and ``W^UV (h, e, r)``: the rows of ``kv_b_proj`` that make keys and values."""
        up = rearrange(self.kv_b_proj.weight, "(h de) r -> h de r", h=self.n_heads)
        return up.split([self.nope_head_dim, self.v_head_dim], dim=1)

    def expanded(self, q_nope: torch.Tensor, q_rope: torch.Tensor, key: torch.Tensor, **kw) -> torch.Tensor:
        """The equations as written: every key's latent up-projected into per-head keys and values.
        ``q_nope (b, n, h, d)``, ``q_rope (b, h, n, rope)``, ``key (b, 1, m, c)`` -> ``(b, n, h, e)``."""
        latent, k_rope = key.split([self.kv_rank, self.head_dim], dim=-1)
        kv = rearrange(self.kv_b_proj(latent[:, 0]), "b m (h de) -> b h m de", h=self.n_heads)
        k_nope, v = kv.split([self.nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.expand(-1, self.n_heads, -1, -1)], dim=-1)
        q = torch.cat([rearrange(q_nope, "b n h d -> b h n d"), q_rope], dim=-1)
        return rearrange(self.attend(q, k, v, **kw), "b h n e -> b n h e")

    def absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, key: torch.Tensor, **kw) -> torch.Tensor:
        """Section 2.1.2's absorbed form, shapes as :meth:`expanded`: each head's query taken into latent
        space by ``W^UK``, multi-query attention over the cached keys with their latents as values, and
        each head's weighted sum of latents taken out by ``W^UV``."""
        up_k, up_v = self.up_projections()
        q_latent = torch.einsum("bnhd,hdr->bhnr", q_nope, up_k)
        q = torch.cat([q_latent, q_rope], dim=-1)
        # the whole key as the value, its rotary channels dropped after the sum: equal widths keep
        # SDPA on its fused kernels (a narrower value sends CPU SDPA to its slow math path, ~10x here)
        mixed = self.attend(q, key, key, **kw)[..., : self.kv_rank]  # (b, h, n, r)
        return torch.einsum("bhnr,her->bnhe", mixed, up_v)

    def attend(self, q, k, v, *, mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor, bias: BiasFn) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        kernel = pick_kernel(
            self.kernel, window=mask.window, device=q.device, backward=needs_backward(q, k, v), dropout=dropout,
            n=q.shape[2], m=k.shape[2], softcap=self.softcap, head_dim=min(q.shape[-1], v.shape[-1]),
        )
        # only the kernels that can soft-cap take the argument: the others are refused above
        capped = {} if self.softcap is None else {"softcap": self.softcap}
        return kernel(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=self.scale, dropout=dropout, **capped)
