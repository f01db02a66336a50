"""The dense kernels: the eager reference and torch's fused SDPA (``model.attention.kernel=eager|sdpa``).

Both score every query against every key the mask allows; the blocked sliding window
(:mod:`zoo.attention.local`) falls back to :func:`sdpa` for short rows, and every fast path is held
equal to :func:`eager` by tests.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim.
"""

import torch
import torch.nn.functional as F
from einops import repeat

from zoo.attention.mask import Mask
from zoo.attention.signature import BiasFn
from zoo.softcap import soft_cap


def eager_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    mask: Mask,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    bias: BiasFn,
    scale: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention weights ``(b, h, n, m)`` in float32 of the eager reference: every score materialised,
    masked with ``-inf``, softmax in float32; ``softcap`` squashes the scaled scores to
    ``(-softcap, softcap)`` before any bias (:func:`zoo.softcap.soft_cap`); ``sinks (h,)`` adds one logit
    per head to each softmax, a key that every query sees and that reads no value (gpt-oss), so a head
    may attend to nothing (its rows then sum to less than one)."""
    k = repeat(k, "b k m d -> b (k g) m d", g=q.shape[1] // k.shape[1])
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k).float() * scale
    if softcap is not None:
        scores = soft_cap(scores, softcap)
    score_bias = bias(q_pos, k_pos)
    if score_bias is not None:
        scores = scores + score_bias
    scores = scores.masked_fill(~mask.allows(q_pos, k_pos)[:, None], float("-inf"))
    if sinks is None:
        return scores.softmax(dim=-1)
    sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]


def eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Mask,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    bias: BiasFn,
    scale: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference: :func:`eager_weights` (with ``softcap`` and ``sinks``) times the values."""
    weights = eager_weights(q, k, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=scale, softcap=softcap, sinks=sinks)
    v = repeat(v, "b k m d -> b (k g) m d", g=q.shape[1] // v.shape[1])
    return torch.einsum("bhnm,bhmd->bhnd", F.dropout(weights, p=dropout).to(v.dtype), v)


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Mask,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    bias: BiasFn,
    scale: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """PyTorch's fused ``scaled_dot_product_attention``; uses its causal fast path when it can."""
    score_bias = bias(q_pos, k_pos)
    n, m = q.shape[2], k.shape[2]
    is_causal = False
    attn_mask = None
    if score_bias is None and mask.is_plain_causal and n == m:
        is_causal = True  # SDPA's is_causal aligns query i with key i, true only without a cache offset
    elif score_bias is None and (mask.is_full or (mask.is_plain_causal and n == 1)):
        pass  # a single new query after its cache sees every cached key
    else:
        allowed = mask.allows(q_pos, k_pos)[:, None]
        if score_bias is None:
            attn_mask = allowed
        else:
            attn_mask = score_bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
    if attn_mask is not None and attn_mask.is_floating_point() and q.device.type == "cpu" and (
        attn_mask.requires_grad or torch._C._functorch.is_batchedtensor(attn_mask)
    ):
        # A score bias that may need a gradient (T5's learned buckets). SDPA takes its math path for such a
        # mask, but under vmap (stacked seeds, zoo/bench/seeds.py) the mask's gradient is hidden from its
        # choice and it picks the CPU flash kernel, which has none. The math path, asked for by name, is the
        # same computation (bitwise, outside vmap) and is made of operators vmap batches.
        return torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, attn_mask, dropout, is_causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )[0]
    b, h, kv = q.shape[0], q.shape[1], k.shape[1]
    if n == 1 and kv < h and dropout == 0.0:
        # A decode step of grouped heads: the h / kv query heads that share a KV head are read as that many
        # queries of it, so each cached key is streamed once per group: at batch 16, 4096 tokens, MQA decoded
        # 1.82x MHA's speed against 1.70x with SDPA's own enable_gqa (benchmarks/bench_decode.py, results.md).
        if attn_mask is not None and attn_mask.shape[1] == h:  # a bias per head
            attn_mask = attn_mask.reshape(attn_mask.shape[0], kv, h // kv, m)
        out = F.scaled_dot_product_attention(q.reshape(b, kv, h // kv, q.shape[-1]), k, v, attn_mask=attn_mask, scale=scale)
        return out.reshape(b, h, 1, v.shape[-1])
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        is_causal=is_causal,
        dropout_p=dropout,
        scale=scale,
        enable_gqa=kv != h,
    )
