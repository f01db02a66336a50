"""Multi-head attention with any number of KV heads: MHA, GQA, MQA, sliding window, and cross-attention.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.attention.cache import KVCache
from zoo.attention.kernels import check_kernel, pick_kernel
from zoo.attention.signature import needs_backward
from zoo.attention.mask import Mask
from zoo.attention.sparse import Pattern
from zoo.errors import ConfigError
from zoo.pos.base import Positions, Rotation


def kv_heads(n_heads: int, n_kv_heads: int | None) -> int:
    """The KV heads of a layer with ``n_heads`` query heads: ``n_kv_heads`` (``None``: as many), which must
    divide ``n_heads`` (each KV head serves a group of query heads)."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if n_kv_heads <= 0 or n_heads % n_kv_heads:
        allowed = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
        raise ConfigError("model.attention.n_kv_heads", n_kv_heads, f"must divide model.n_heads={n_heads}: one of {allowed}")
    return n_kv_heads


@dataclass
class Context:
    """What every attention layer of one forward pass shares: built once by the architecture.

    Args:
        positions: ``(b, n)`` or ``(1, n)`` positions of the current tokens.
        mask: the architecture's mask rule.
        pos: the stack's position scheme.
        memory: ``(b, m, dim)`` encoder output, for cross-attention.
        memory_valid: ``(b, m)`` padding flags of ``memory``.
        rotation: ``pos.rotation(positions)``, so RoPE's tables are computed once, not once per layer.
    """

    positions: torch.Tensor
    mask: Mask
    pos: Positions
    memory: torch.Tensor | None = None
    memory_valid: torch.Tensor | None = None
    rotation: Rotation | None = None


class Attention(nn.Module):
    """Scaled dot-product attention (Vaswani et al. 2017, arXiv:1706.03762) with grouped KV heads.

    ``n_kv_heads`` equal to ``n_heads`` is multi-head attention, 1 is multi-query attention
    (Shazeer 2019, arXiv:1911.02150), anything between that divides ``n_heads`` is grouped-query
    attention (Ainslie et al. 2023, arXiv:2305.13245). A ``window`` makes it sliding-window attention
    (Beltagy et al. 2020, arXiv:2004.05150; Mistral, arXiv:2310.06825); a ``pattern`` makes it sparse
    attention (strided or fixed, Child et al. 2019, arXiv:1904.10509; BigBird, arXiv:2007.14062).

    Args:
        dim: model width.
        n_heads: query heads.
        head_dim: width of one head.
        n_kv_heads: key/value heads; ``None`` means ``n_heads``.
        window: each query sees only keys fewer than ``window`` positions away.
        bias: biases on the projections.
        qkv_bias: biases on the query/key/value projections only (Qwen2); ``None`` follows ``bias``.
        dropout: dropout on the attention weights.
        scale: score scale; ``None`` means ``head_dim ** -0.5`` (T5 folds it into the init: 1.0).
        kernel: one of :data:`zoo.attention.kernels.KERNEL_SPECS` (``eager``, ``sdpa``, ``local``, ``flex``)
            or ``auto``, which picks the fastest exact one per call (device, training or not, window, lengths).
        qk_norm: a factory ``(head_dim, n_heads=, n_kv_heads=)`` of a module that normalises queries and
            keys before the positions rotate them (:mod:`zoo.attention.qk_norm`); ``None``: none.
        softcap: soft-cap of the scaled scores, ``softcap * tanh(s / softcap)`` before the softmax (Gemma 2,
            arXiv:2408.00118: 50); ``None``: none. Kernels ``eager`` and ``flex`` express it; ``auto`` picks one.
        pattern: a sparse pattern (:mod:`zoo.attention.sparse`) that narrows what each query sees, run at
            sub-quadratic cost by kernels ``sparse`` and ``flex``; the KV cache keeps every key and the
            pattern picks among them, so decoding sees what a full forward sees. ``None``: dense.
        sinks: a learned sink logit per query head joins each softmax's denominator (gpt-oss, 2025; the
            "softmax plus one" of Miller 2023 is a sink fixed at 0): a head can give part of its weight to
            no token instead of spreading it over the keys it sees. Starts at 0; kernels ``eager`` and
            ``flex`` express it, ``auto`` picks one.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        window: int | None = None,
        bias: bool = False,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
        kernel: str = "auto",
        qk_norm: Callable[..., nn.Module] | None = None,
        softcap: float | None = None,
        pattern: Pattern | None = None,
        sinks: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = kv_heads(n_heads, n_kv_heads)
        if window is not None and window <= 0:
            raise ConfigError("model.attention.window", window, "must be a positive number of tokens (or null for none)")
        check_kernel(kernel, dropout=dropout, softcap=softcap, sinks=sinks)
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.dropout, self.kernel, self.softcap, self.pattern = window, dropout, kernel, softcap, pattern
        self.scale = head_dim**-0.5 if scale is None else scale
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias)
        self.qk_norm = None if qk_norm is None else qk_norm(head_dim, n_heads=n_heads, n_kv_heads=n_kv_heads)
        self.sinks = nn.Parameter(torch.zeros(n_heads)) if sinks else None

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> torch.Tensor:
        # Views and transposes rather than einops: a layer reshapes six times per call, and
        # ``rearrange`` costs the host ~3x a view, which a small model on a GPU waits for.
        b, n, d = x.shape[0], x.shape[1], self.head_dim
        q = self.q_proj(x).view(b, n, -1, d)  # (b, n, h, d)
        k = self.k_proj(x).view(b, n, -1, d)  # (b, n, k, d)
        v = self.v_proj(x).view(b, n, -1, d).transpose(1, 2)  # (b, k, n, d)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        q_pos = k_pos = ctx.positions.expand(b, -1)
        # rotated in the projections' layout, heads inside tokens: the kernels' output keeps that
        # layout, so merging the heads back below is a view rather than a copy
        q = ctx.pos.rotate(q, q_pos, ctx.rotation).transpose(1, 2)  # (b, h, n, d)
        k = ctx.pos.rotate(k, k_pos, ctx.rotation).transpose(1, 2)  # (b, k, n, d)
        mask = ctx.mask.with_window(self.window).with_pattern(self.pattern)
        if cache is not None:
            k, v, k_pos, key_valid = cache.update(k, v, k_pos, mask.key_valid)
            mask = mask.with_keys(key_valid)
        out = self.attend(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=ctx.pos.bias)
        return self.o_proj(out.transpose(1, 2).flatten(2))  # (b, n, h * d)

    def attend(self, q, k, v, *, mask: Mask, q_pos, k_pos, bias) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        kernel = pick_kernel(
            self.kernel, window=mask.window, device=q.device, backward=needs_backward(q, k, v), dropout=dropout,
            n=q.shape[2], m=k.shape[2], softcap=self.softcap, pattern=mask.pattern, head_dim=min(q.shape[-1], v.shape[-1]),
            sinks=self.sinks is not None,
        )
        # only the kernels that can soft-cap or add sinks take those arguments: the others are refused above
        extra = {} if self.softcap is None else {"softcap": self.softcap}
        if self.sinks is not None:
            extra["sinks"] = self.sinks
        return kernel(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=self.scale, dropout=dropout, **extra)


def _no_bias(q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
    return None


class CrossAttention(Attention):
    """Attention from the decoder's tokens to the encoder's output (no positions, padding mask only)."""

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> torch.Tensor:
        if ctx.memory is None:
            raise ValueError("cross-attention needs the encoder output (ctx.memory)")
        b, n, d = x.shape[0], x.shape[1], self.head_dim
        q = self.q_proj(x).view(b, n, -1, d).transpose(1, 2)  # (b, h, n, d)
        if cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # the encoder output does not change while decoding
        else:
            k = self.k_proj(ctx.memory).unflatten(-1, (-1, d)).transpose(1, 2)  # (b, k, m, d)
            v = self.v_proj(ctx.memory).unflatten(-1, (-1, d)).transpose(1, 2)
            if cache is not None:
                cache.set(k, v)
        m = k.shape[2]
        q_pos = torch.zeros(b, n, dtype=torch.long, device=x.device)
        k_pos = torch.zeros(b, m, dtype=torch.long, device=x.device)
        out = self.attend(q, k, v, mask=Mask(key_valid=ctx.memory_valid), q_pos=q_pos, k_pos=k_pos, bias=_no_bias)
        return self.o_proj(out.transpose(1, 2).flatten(2))
