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
rows and key positions that are not their indices shifted by one offset per row or per document (see
:func:`key_shift`): all exact. In a packed row whose positions restart at each document, a query's
candidates name its own document's keys. Under a prefix mask a query gathers its candidates on both
sides (a prefix query sees later prefix keys), and the mask rule keeps the ones it may see.

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


def key_shift(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
    """``(b, n)`` offsets ``c``, one per query of ``q_pos (b, n)``, with ``k_pos = index + c`` on every real
    key of the query's row (or of its document, in a packed row), so that a pattern's candidate positions
    name key indices; ``None`` where positions are otherwise.

    Left-padded rows have one offset per row (their positions start at the first real token); packed rows
    whose positions restart at each document (``mask.k_segment``) have one per document, and a query takes
    its own document's: keys of other documents its candidates name are hidden by the document rule.
    """
    (b, n), m = q_pos.shape, k_pos.shape[1]
    low, high = torch.iinfo(k_pos.dtype).min, torch.iinfo(k_pos.dtype).max
    real = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else mask.key_valid.expand_as(k_pos)
    shift = k_pos - torch.arange(m, device=k_pos.device)
    if mask.k_segment is None:
        row_shift = shift.masked_fill(~real, low).amax(dim=1, keepdim=True)
        return row_shift.expand(b, n) if bool(((shift == row_shift) | ~real).all()) else None
    k_doc, q_doc = mask.k_segment.expand(b, m).long(), mask.q_segment.expand(b, n).long()
    if bool((k_doc < 0).any() | (q_doc < 0).any()):
        return None
    docs = int(max(k_doc.max(), q_doc.max())) + 1
    most = torch.full((b, docs), low, dtype=shift.dtype, device=k_pos.device).scatter_reduce(1, k_doc, shift.masked_fill(~real, low), "amax")
    least = torch.full((b, docs), high, dtype=shift.dtype, device=k_pos.device).scatter_reduce(1, k_doc, shift.masked_fill(~real, high), "amin")
    if not bool(((most == least) | (most == low)).all()):
        return None
    return most.masked_fill(most == low, 0).gather(1, q_doc)  # 0: a document of padding only, whose keys all hide


def candidate_keys(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key indices ``(b, n, l)`` that include every key each query of ``q_pos (b, n)`` may see under
    ``mask.pattern`` (from its candidates, ``shift (b, n)`` from :func:`key_shift`), and which of them
    name a key (the rest are out of range)."""
    valid = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else mask.key_valid.expand_as(k_pos)
    real = k_pos.masked_select(valid)
    lo, hi = (int(real.min()), int(real.max())) if real.numel() else (0, 0)
    index = mask.pattern.candidates(q_pos, lo=lo, hi=hi, causal=mask.looks_back_only) - shift[:, :, None]
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
    shift = key_shift(mask, q_pos, k_pos)
    if shift is None:
        warnings.warn(
            "model.attention.kernel=sparse: key positions that are not their indices plus one offset per row "
            "or per document; using SDPA with a dense mask instead",
            stacklevel=3,
        )
        return sdpa(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, **kw)
    # queries that see every key (BigBird's global tokens in an encoder) are few: computed densely, first
    below = q_pos < mask.pattern.dense_below(causal=mask.looks_back_only)
    head = int(below.sum(dim=1).max())
    if head == 0:
        return _gather_parts(q, k, v, mask=mask, q_pos=q_pos, k_pos=k_pos, shift=shift, **kw)
    # where they are not already first (left padding, packed documents) they are moved there and back
    order = below.logical_not().to(torch.int8).argsort(dim=1, stable=True) if bool(below[:, head:].any()) else None
    if order is not None:
        q, q_pos, shift, mask = _take_queries(order, q, q_pos, shift, mask)
    out = sdpa(q[:, :, :head], k, v, mask=narrow(mask, queries=slice(head)), q_pos=q_pos[:, :head], k_pos=k_pos, **kw)
    if head < n:
        tail = narrow(mask, queries=slice(head, None))
        out_tail = _gather_parts(q[:, :, head:], k, v, mask=tail, q_pos=q_pos[:, head:], k_pos=k_pos, shift=shift[:, head:], **kw)
        out = torch.cat([out, out_tail], dim=2)
    return out if order is None else _put_back(out, order)


def _take_queries(order: torch.Tensor, q: torch.Tensor, q_pos: torch.Tensor, shift: torch.Tensor, mask: Mask):
    """``q (b, h, n, d)``, ``q_pos``, ``shift`` and the mask's per-query documents, taken in ``order (b, n)``."""
    b, h, n, d = q.shape
    take = lambda x: x.expand(b, n).gather(1, order)  # noqa: E731
    mask = mask if mask.q_segment is None else replace(mask, q_segment=take(mask.q_segment))
    return q.gather(2, order[:, None, :, None].expand(-1, h, -1, d)), take(q_pos), take(shift), mask


def _put_back(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x (b, h, n, ...)`` computed for queries taken in ``order (b, n)``, returned to their own order."""
    back = order.argsort(dim=1)
    return x.gather(2, back.view(*back.shape[:1], 1, back.shape[1], *[1] * (x.dim() - 3)).expand_as(x))


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
        q, q_pos, shift, mask = _take_queries(order, q, q_pos, shift, mask)
    m, block = k.shape[2], min(mask.pattern.query_block, n)  # a decoding step is one query, not a block
    s = -(-n // block)
    pad_q = s * block - n  # padding queries repeat the last one, so they see a key; cut off at the end
    qp = _repeat_last(q_pos, pad_q)
    valid = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else mask.key_valid.expand(b, m)
    index, filled = block_keys(mask, qp, k_pos, _repeat_last(shift, pad_q), block=block)
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
        out, lse = _put_back(out, order), None if lse is None else _put_back(lse, order)
    return out, lse


def _repeat_last(x: torch.Tensor, extra: int) -> torch.Tensor:
    """``x (b, n)`` followed by ``extra`` copies of its last column."""
    return torch.cat([x, x[:, -1:].expand(-1, extra)], dim=1)
