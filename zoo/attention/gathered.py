"""Gathered sparse attention (``model.attention.kernel=sparse``): a sparse pattern at sub-quadratic cost on SDPA.

For a mask with a sparse pattern (:mod:`zoo.attention.sparse`), queries are cut into blocks of the
pattern's ``query_block``; each block gathers the keys its pattern names (the union of its queries'
candidates, each key once) and attends to them through one batched
``F.scaled_dot_product_attention`` call, with the exact :class:`~zoo.attention.mask.Mask` rule and any
score bias evaluated on the gathered positions. Cost and memory grow with the keys the pattern lets a
query see, not with ``n x m``; it differentiates on every device (block-sparse attention as in
Child et al. 2019, arXiv:1904.10509, gathered like :mod:`zoo.attention.local`'s bands). A pattern whose
neighbouring queries share few keys (strided) comes in disjoint parts, each gathered in the query
order that makes its blocks share keys, their softmaxes merged by their log-sum-exps.

A mask without a pattern goes to :func:`~zoo.attention.local.local` (windows) or SDPA; so do short
rows and key positions that are not their indices shifted by one offset per row (see :func:`key_shift`):
all exact. Under a prefix mask a query gathers its candidates on both sides (a prefix query sees later
prefix keys), and the mask rule keeps the ones it may see.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim,
``s`` query blocks, ``q`` queries of a block, ``l`` keys one query block sees.
"""

import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange

from zoo.attention.dense import sdpa
from zoo.attention.local import local, narrow
from zoo.attention.mask import Mask
from zoo.attention.signature import BiasFn


def key_shift(k_pos: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor | None:
    """``(b,)`` offsets ``c`` with ``k_pos = index + c`` on every real key of ``k_pos (b, m)``, or ``None``
    where positions are otherwise (a pattern's candidate positions then name no key index).

    Left-padded rows qualify (their positions start at the first real token); packed rows whose
    positions restart at each document do not.
    """
    m = k_pos.shape[1]
    valid = torch.ones_like(k_pos, dtype=torch.bool) if key_valid is None else key_valid.expand_as(k_pos)
    shift = k_pos - torch.arange(m, device=k_pos.device)
    row_shift = shift.masked_fill(~valid, torch.iinfo(shift.dtype).min).amax(dim=1)
    return row_shift if bool(((shift == row_shift[:, None]) | ~valid).all()) else None


def candidate_keys(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices ``(b, n, l)`` that include every key each query of ``q_pos (b, n)`` may see under
    ``mask.pattern`` (from its candidates), and which of them name a key (the rest are out of range)."""
    valid = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else mask.key_valid.expand_as(k_pos)
    real = k_pos.masked_select(valid)
    lo, hi = (int(real.min()), int(real.max())) if real.numel() else (0, 0)
    index = mask.pattern.candidates(q_pos, lo=lo, hi=hi, causal=mask.looks_back_only) - shift[:, None, None]
    return index, (index >= 0) & (index < k_pos.shape[1])


def sparse(
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
    """Attention under ``mask``'s sparse pattern, each query over the keys its pattern names; equal to
    :func:`~zoo.attention.dense.eager`. Rows too short for gathering to pay go to SDPA.

    Args:
        q: ``(b, h, n, d)`` queries.
        k, v: ``(b, k, m, d)`` keys and values.
        mask, q_pos, k_pos, bias, scale, dropout: as for every kernel.

    Returns: ``(b, h, n, d)``.
    """
    kw = dict(mask=mask, q_pos=q_pos, k_pos=k_pos, bias=bias, scale=scale, dropout=dropout)
    if mask.pattern is None:
        return local(q, k, v, **kw)
    m = k.shape[2]
    if m <= 2 * mask.pattern.keys_per_query(m) or stacked(k_pos, mask.key_valid):
        return sdpa(q, k, v, **kw)
    return gathered(q, k, v, **kw)


def stacked(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is batched by ``vmap`` (seeds trained stacked, :mod:`zoo.bench.seeds`): the
    gathered path reads positions into Python to size its gather, which ``vmap`` cannot, so SDPA with the
    pattern as a dense mask computes the same attention there."""
    return any(t is not None and torch._C._functorch.is_batchedtensor(t) for t in tensors)


def gathered(
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
    """The gathered computation at any length (tests call it on short rows); ``mask.pattern`` is set."""
    b, n, m = q.shape[0], q.shape[2], k.shape[2]
    q_pos, k_pos = q_pos.expand(b, n), k_pos.expand(b, m)
    kw = dict(bias=bias, scale=scale, dropout=dropout)
    shift = key_shift(k_pos, mask.key_valid)
    if shift is None:
        warnings.warn(
            "model.attention.kernel=sparse: key positions that are not their indices plus one offset per row "
            "(packed documents); using SDPA with a dense mask instead",
            stacklevel=3,
        )
        return sdpa(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, **kw)
    # queries that see every key (BigBird's global tokens in an encoder) are few: computed densely
    below = q_pos < mask.pattern.dense_below(causal=mask.looks_back_only)
    head = int((below * torch.arange(1, n + 1, device=q.device)).max())
    if head == 0:
        return _gather_parts(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, shift=shift, **kw)
    out_head = sdpa(q[:, :, :head], k, v, mask=narrow(mask, queries=slice(head)), q_pos=q_pos[:, :head], k_pos=k_pos, **kw)
    if head == n:
        return out_head
    tail_mask = narrow(mask, queries=slice(head, None))
    out_tail = _gather_parts(q[:, :, head:], k, v, mask=tail_mask, q_pos=q_pos[:, head:], k_pos=k_pos, shift=shift, **kw)
    return torch.cat([out_head, out_tail], dim=2)


def block_keys(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor, shift: torch.Tensor, *, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices ``(b, s, l)`` each block of ``q_pos (b, s * q)`` gathers (its queries' candidates, each
    once), and which of the ``l`` slots hold one (the rest repeat an index and must be masked)."""
    m = k_pos.shape[1]
    index, inside = candidate_keys(mask, q_pos, k_pos, shift)
    index = rearrange(index.masked_fill(~inside, m), "b (s q) l -> b s (q l)", q=block)
    index = index.sort(dim=-1).values  # m: no key, sorts last
    repeated = F.pad(index[..., 1:] == index[..., :-1], (1, 0), value=False)
    index = index.masked_fill(repeated, m).sort(dim=-1).values
    width = max(int((index < m).sum(-1).max()), 1)
    index = index[..., :width]
    return index.clamp(max=m - 1), index < m


def _gather_parts(q, k, v, *, mask: Mask, q_pos, k_pos, shift, bias: BiasFn, scale: float, dropout: float) -> torch.Tensor:
    """The pattern gathered whole, or (strided) as disjoint parts, each gathered in its own query order,
    whose softmaxes are merged by their log-sum-exps: ``softmax`` over the union of disjoint key sets is
    each part's softmax weighted by ``exp(lse_part - lse_all)``."""
    kw = dict(q_pos=q_pos, k_pos=k_pos, shift=shift, bias=bias, scale=scale, dropout=dropout)
    parts = mask.pattern.parts()
    if len(parts) == 1:
        return _gather_blocks(q, k, v, mask=mask, **kw)[0]
    outs, lses = zip(*(_gather_blocks(q, k, v, mask=replace(mask, pattern=part), with_lse=True, **kw) for part in parts))
    lse = torch.stack(lses).logsumexp(0)
    return sum(out * torch.exp(part_lse - lse)[..., None] for out, part_lse in zip(outs, lses)).to(q.dtype)


#: the score of a hidden key when softmaxes are merged: finite, so that a part where a query sees
#: nothing gets weight exp(-1e30 - lse) = 0 in the merge, with no NaN in its gradient
HIDDEN = -1e30


def _gather_blocks(
    q, k, v, *, mask: Mask, q_pos, k_pos, shift, bias: BiasFn, scale: float, dropout: float, with_lse: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(out (b, h, n, d), lse (b, h, n) | None)``: SDPA over each query block's gathered keys, or with
    ``with_lse`` the same softmax in float32 that also returns its log-sum-exp (queries in the order the
    pattern asks for, returned in theirs)."""
    b, h, n, d = q.shape
    order = mask.pattern.query_order(q_pos)
    if order is not None:  # gathered in the pattern's order, returned in ours
        q = q.gather(2, order[:, None, :, None].expand(-1, h, -1, d))
        q_pos = q_pos.gather(1, order)
        if mask.q_segment is not None:
            mask = replace(mask, q_segment=mask.q_segment.expand(b, n).gather(1, order))
    m, block = k.shape[2], min(mask.pattern.query_block, n)  # a decoding step is one query, not a block
    s = -(-n // block)
    pad_q = s * block - n  # padding queries repeat the last one, so they see a key; cut off at the end
    qp = _repeat_last(q_pos, pad_q)
    valid = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else mask.key_valid.expand(b, m)
    index, filled = block_keys(mask, qp, k_pos, shift, block=block)
    flat = index.flatten(1)  # (b, s l)

    def per_key(x: torch.Tensor) -> torch.Tensor:  # (b, m) -> (b s) l, gathered like the keys
        return rearrange(x.gather(1, flat), "b (s l) -> (b s) l", s=s)

    rows = (flat + m * torch.arange(b, device=flat.device)[:, None]).flatten()

    def key_blocks(x: torch.Tensor) -> torch.Tensor:
        # Whole token rows picked from a token-major copy: index_select's backward (index_add) is several
        # times faster on CPU than gather's (scatter_add) over an index expanded to every channel.
        picked = rearrange(x, "b k m d -> (b m) (k d)").index_select(0, rows)
        return rearrange(picked, "(b s l) (k d) -> (b s) k l d", b=b, s=s, d=x.shape[3])

    # a slot that holds no key is hidden by the padding flags, whatever the pattern says of its position
    slot_valid = per_key(valid) & rearrange(filled, "b s l -> (b s) l")
    blocked = replace(
        mask,
        key_valid=None if with_lse else slot_valid,
        prefix_len=None if mask.prefix_len is None else mask.prefix_len.repeat_interleave(s),
        q_segment=None if mask.q_segment is None else rearrange(_repeat_last(mask.q_segment.expand(b, n), pad_q), "b (s q) -> (b s) q", s=s),
        k_segment=None if mask.k_segment is None else per_key(mask.k_segment.expand(b, m)),
    )
    qp_blk, kp_blk = rearrange(qp, "b (s q) -> (b s) q", s=s), per_key(k_pos)
    allowed = blocked.allows(qp_blk, kp_blk)[:, None]  # (b s) 1 q l
    score_bias = bias(qp_blk, kp_blk)
    q_blk = rearrange(F.pad(q, (0, 0, 0, pad_q)), "b h (s q) d -> (b s) h q d", s=s)
    k_blk, v_blk = key_blocks(k), key_blocks(v)
    lse = None
    if not with_lse:
        attn_mask = allowed if score_bias is None else score_bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q_blk, k_blk, v_blk, attn_mask=attn_mask, dropout_p=dropout, scale=scale, enable_gqa=h != k.shape[1])
    else:
        # no "a row of padding sees everything" here: a part where a query sees nothing must weigh nothing
        allowed = allowed & slot_valid[:, None, None]
        groups = h // k.shape[1]
        k_blk, v_blk = (x.repeat_interleave(groups, dim=1) for x in (k_blk, v_blk))
        scores = torch.einsum("shqd,shld->shql", q_blk, k_blk).float() * scale
        if score_bias is not None:
            scores = scores + score_bias
        scores = scores.masked_fill(~allowed, HIDDEN)
        lse = scores.logsumexp(-1)
        weights = F.dropout(torch.exp(scores - lse[..., None]), p=dropout).to(v.dtype)
        out = torch.einsum("shql,shld->shqd", weights, v_blk)
        lse = rearrange(lse, "(b s) h q -> b h (s q)", b=b)[:, :, :n]
    out = rearrange(out, "(b s) h q d -> b h (s q) d", b=b)[:, :, :n]
    if order is not None:
        back = order.argsort(dim=1)
        out = out.gather(2, back[:, None, :, None].expand(-1, h, -1, d))
        lse = None if lse is None else lse.gather(2, back[:, None, :].expand(-1, h, -1))
    return out, lse


def _repeat_last(x: torch.Tensor, extra: int) -> torch.Tensor:
    """``x (b, n)`` followed by ``extra`` copies of its last column."""
    return torch.cat([x, x[:, -1:].expand(-1, extra)], dim=1)
