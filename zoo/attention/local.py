"""Blocked local attention: sliding-window attention whose cost grows linearly with the sequence.

A ``model.attention.kernel`` choice (``local``). Queries are cut into blocks of ``block`` tokens;
each block attends, through one batched ``F.scaled_dot_product_attention`` call, to the key
blocks its window can reach: its own and the ``ceil((window - 1) / block)`` before it (and as many
after it when the window is bidirectional). The exact :class:`~zoo.attention.mask.Mask` rule and
any position bias are evaluated per block on the tokens' positions, so the result equals the eager
reference while no ``n x m`` tensor is ever built. This is the idea of Longformer's banded
attention (Beltagy et al. 2020, arXiv:2004.05150) with the band tiled into dense blocks.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim,
``s`` query blocks, ``l`` keys one query block sees.
"""

import math
import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from zoo.attention.dense import sdpa
from zoo.attention.mask import Mask
from zoo.attention.signature import BiasFn


def default_block(window: int) -> int:
    """Query block size for ``window``: the power of two at or above ``window / 2``.

    Halving the block below the window trades one more, smaller key block per query block for
    less wasted (masked) work: a causal query block then sees ``1.5 * window`` keys instead of
    ``2 * window``; measured fastest on CPU in ``benchmarks/bench_attention.py``.
    """
    return max(16, 2 ** math.ceil(math.log2(max(window // 2, 1))))


def positions_are_local(q_pos: torch.Tensor, k_pos: torch.Tensor, key_valid: torch.Tensor | None) -> bool:
    """Whether the blocked kernel is exact for these positions.

    It needs the queries to be the last ``n`` keys (self-attention, with or without a cache) and
    the positions of real tokens to grow by at least one per token, so that a window of positions
    is inside the same window of indices. Every architecture here produces such positions (also
    for left-padded batches); packed documents whose positions restart would not.
    """
    n, m = q_pos.shape[1], k_pos.shape[1]
    if n > m:
        return False
    k_pos = k_pos.expand(q_pos.shape[0], -1)
    # r = position - index must not decrease along the real tokens
    r = k_pos - torch.arange(m, device=k_pos.device)
    if key_valid is not None:
        r = r.masked_fill(~key_valid, torch.iinfo(r.dtype).min)
    grows = r >= r.cummax(dim=1).values
    same = q_pos == k_pos[:, m - n :]
    if key_valid is not None:
        grows = grows | ~key_valid
        same = same | ~key_valid[:, m - n :]
    return bool(grows.all() & same.all())


def prefix_head(mask: Mask, k_pos: torch.Tensor, n: int, m: int) -> int:
    """How many leading queries may see keys ahead of them (causal prefix masks only).

    A prefix query sees the whole prefix, however far: those queries are computed densely, the
    rest stay banded (for them a prefix key is an ordinary earlier key inside the window).
    """
    if not mask.causal or mask.prefix_len is None:
        return 0
    in_prefix = k_pos.expand(mask.prefix_len.shape[0], -1) < mask.prefix_len[:, None]
    if mask.key_valid is not None:
        in_prefix = in_prefix & mask.key_valid
    index = torch.arange(1, m + 1, device=k_pos.device)
    end = int((in_prefix * index).max())  # one past the last prefix key of any sequence
    return min(max(end - (m - n), 0), n)


def local(
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
    block: int | None = None,
) -> torch.Tensor:
    """Sliding-window attention over blocks; equal to :func:`~zoo.attention.kernels.eager`.

    Masks without a window, inputs too short for blocks to pay (``n <= 2 * block`` queries or
    ``m <= 2 * window`` keys, single-token decoding among them) and positions that are not local
    (see :func:`positions_are_local`) go to SDPA, which is exact for them. A row of pure padding
    (no visible key) sees its local keys rather than every key: its output is never read.

    Args:
        q: ``(b, h, n, d)`` queries, the last ``n`` of the keys.
        k, v: ``(b, k, m, d)`` keys and values.
        mask: the rule; its ``window`` makes the attention local.
        q_pos, k_pos: ``(b, n)``, ``(b, m)`` positions.
        bias: score bias ``(q_pos, k_pos) -> (b, h, n, m) | None``, called per block.
        scale: score scale.
        dropout: dropout on the attention weights.
        block: query block size; ``None`` for :func:`default_block`.

    Returns: ``(b, h, n, d)``.
    """
    n, m = q.shape[2], k.shape[2]
    block = default_block(mask.window) if block is None and mask.window is not None else block
    if mask.window is None or n <= 2 * block or m <= 2 * mask.window:
        return sdpa(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=scale, dropout=dropout)
    q_pos, k_pos = q_pos.expand(q.shape[0], n), k_pos.expand(k.shape[0], m)
    if not positions_are_local(q_pos, k_pos, mask.key_valid):
        # A rolling KV cache returns keys in slot order: put them in position order (softmax is
        # order-free), one linear-cost gather.
        k, v, k_pos, mask = by_position(k, v, k_pos, mask)
    if not positions_are_local(q_pos, k_pos, mask.key_valid):
        warnings.warn(
            "model.attention.kernel=local: positions do not grow by one per token (or queries are not the last "
            "keys); using SDPA with a dense mask instead",
            stacklevel=2,
        )
        return sdpa(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=scale, dropout=dropout)
    head = prefix_head(mask, k_pos, n, m)
    kw = dict(mask=mask, bias=bias, scale=scale, dropout=dropout)
    if head == 0:
        return banded(q, k, v, q_pos=q_pos, k_pos=k_pos, block=block, **kw)
    m_head = m - n + head  # a head query sees no key after itself but the prefix, and the prefix ends here
    out_head = sdpa(
        q[:, :, :head], k[:, :, :m_head], v[:, :, :m_head], q_pos=q_pos[:, :head], k_pos=k_pos[:, :m_head],
        **replace_keys(kw, mask.key_valid, m_head),
    )
    if head == n:
        return out_head
    out_tail = banded(q[:, :, head:], k, v, q_pos=q_pos[:, head:], k_pos=k_pos, block=block, **kw)
    return torch.cat([out_head, out_tail], dim=2)


def by_position(k: torch.Tensor, v: torch.Tensor, k_pos: torch.Tensor, mask: Mask):
    """Keys, values, positions and padding flags sorted by position (ties keep their order)."""
    order = k_pos.argsort(dim=1, stable=True)
    along_keys = order[:, None, :, None]
    k = k.gather(2, along_keys.expand(-1, k.shape[1], -1, k.shape[3]))
    v = v.gather(2, along_keys.expand(-1, v.shape[1], -1, v.shape[3]))
    if mask.key_valid is not None:
        mask = mask.with_keys(mask.key_valid.gather(1, order))
    return k, v, k_pos.gather(1, order), mask


def replace_keys(kw: dict, key_valid: torch.Tensor | None, m: int) -> dict:
    """``kw`` with the mask's key flags cut to the first ``m`` keys."""
    if key_valid is None:
        return kw
    return {**kw, "mask": kw["mask"].with_keys(key_valid[:, :m])}


def banded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: Mask,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    bias: BiasFn,
    scale: float,
    dropout: float,
    block: int,
) -> torch.Tensor:
    """The blocked computation proper, for queries that are the last ``n`` keys and see only their window."""
    b, h, n, _ = q.shape
    m = k.shape[2]
    before = math.ceil((mask.window - 1) / block)
    after = 0 if mask.causal else before
    s, span = math.ceil(n / block), (before + 1 + after) * block
    # Query block i (the keys m - n + i * block ...) sees keys from `before` blocks back to `after` blocks on.
    first = m - n - before * block + block * torch.arange(s, device=k.device)
    index = first[:, None] + torch.arange(span, device=k.device)  # (s, l)
    inside = (index >= 0) & (index < m)
    index = index.clamp(0, m - 1).flatten()

    def key_blocks(x: torch.Tensor) -> torch.Tensor:
        # Gathered token-major the blocks are one copy that SDPA reads as a strided (b s) k l d view;
        # index_select's backward (index_add) is much faster on CPU than that of x[:, index].
        return rearrange(x.transpose(1, 2).index_select(1, index), "b (s l) k d -> (b s) k l d", s=s)

    k_blk, v_blk = key_blocks(k), key_blocks(v)
    # A key index outside the sequence (clamped above) gets a position no window reaches: the rule
    # itself hides it, with no padding flags to build and check (a third of the kernel's time).
    # Positions in int32 halve the memory the rule's comparisons stream through.
    far = torch.iinfo(torch.int32).max // 2
    kp_blk = rearrange(k_pos[:, index].int().masked_fill(~inside.flatten(), far), "b (s l) -> (b s) l", s=s)
    valid_blk = None if mask.key_valid is None else rearrange(mask.key_valid[:, index], "b (s l) -> (b s) l", s=s)
    pad_q = s * block - n  # rows of padded queries are cut off at the end
    q_blk = rearrange(F.pad(q, (0, 0, 0, pad_q)), "b h (s n) d -> (b s) h n d", s=s)
    qp_blk = rearrange(F.pad(q_pos.int(), (0, pad_q)), "b (s n) -> (b s) n", s=s)

    prefix_len = None if mask.prefix_len is None else repeat(mask.prefix_len, "b -> (b s)", s=s)
    blocked = replace(mask, prefix_len=prefix_len, key_valid=valid_blk)
    allowed = blocked.allows(qp_blk, kp_blk)[:, None]  # (b s) 1 n l
    score_bias = bias(qp_blk, kp_blk)
    if score_bias is None:
        attn_mask = allowed
    else:
        attn_mask = score_bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(
        q_blk, k_blk, v_blk, attn_mask=attn_mask, dropout_p=dropout, scale=scale, enable_gqa=h != k.shape[1]
    )
    return rearrange(out, "(b s) h n d -> b h (s n) d", b=b)[:, :, :n]
