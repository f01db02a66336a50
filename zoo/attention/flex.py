"""FlexAttention (``model.attention.kernel=flex``): a compiled, block-sparse fused kernel.

FlexAttention (Dong et al. 2024, arXiv:2412.05496) skips the blocks of the score matrix that a
block mask marks empty and evaluates ``mask_mod``/``score_mod`` only where it must, so a sliding
window costs ``O(n * window)``. Here:

- the block mask is derived from the :class:`~zoo.attention.mask.Mask` and the positions (and the
  document ids of a packed row) by interval arithmetic on each ``128 x 128`` tile
  (``O(n m / 128^2)``, never an ``n x m`` tensor), so tiles between two documents are skipped;
- ``mask_mod`` evaluates the same rule as ``Mask.allows`` on each pair inside the partial tiles, with
  every mask setting passed as a tensor, so one compiled kernel serves causal, prefix, bidirectional,
  windowed, padded and document masks alike (no recompilation per layer kind); a sparse pattern
  (:mod:`zoo.attention.sparse`) adds its own rule, and its candidate keys mark the tiles it reaches;
- score soft-capping (Gemma 2) becomes ``score_mod`` too, before any bias;
- attention sinks (gpt-oss) rescale the output by the softmax's log-sum-exp: a sink logit ``s`` in the
  denominator multiplies each row by ``Z / (Z + e^s) = sigmoid(lse - s)``; torch 2.13's compiled CPU
  kernel returns no log-sum-exp, so sinks run on CUDA only;
- a score bias (ALiBi, T5) becomes ``score_mod``: a ``(h, offsets)`` table of the bias as a function
  of ``q_pos - k_pos``, looked up per score (differentiable, so T5's table trains on CUDA).

torch 2.13's FlexAttention has no backward on CPU: there it serves inference only. It has no dropout.

Letters: ``b`` batch, ``h`` query heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` head dim.
"""

import functools
from dataclasses import replace

import torch
import torch.nn.functional as F

from zoo.attention.gathered import candidate_keys, key_shift
from zoo.attention.mask import Mask
from zoo.attention.signature import BiasFn, needs_backward
from zoo.errors import ConfigError

#: tile size of the block mask (FlexAttention's default)
BLOCK = 128


@functools.cache
def compiled_flex(device_type: str):
    """``torch.compile(flex_attention)``, built once per device type: uncompiled it materialises every score.

    On CPU shapes stay static (each new length compiles anew): torch 2.13's CPU template indexes out
    of bounds under dynamic shapes. Elsewhere torch's automatic dynamic shapes apply.
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False if device_type == "cpu" else None)


def flex_importable() -> bool:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def pad_to_block(x: torch.Tensor, value=None) -> torch.Tensor:
    """Pad the last dim to a multiple of :data:`BLOCK` (with ``value``, or by repeating the last entry)
    so that no ``mask_mod``/``score_mod`` index can fall outside, whatever the kernel evaluates."""
    extra = -x.shape[-1] % BLOCK
    if not extra:
        return x
    if value is None:
        return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], extra)], dim=-1)
    return F.pad(x, (0, extra), value=value)


def tile_bounds(pos: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Per tile of ``pos (b, n)``: lowest and highest position, and whether any / every token is real."""
    b, n = pos.shape
    tiles = -(-n // BLOCK)
    tiled = pad_to_block(pos).view(b, tiles, BLOCK)  # repeating the last position widens no interval
    if valid is None:
        valid = torch.ones_like(pos, dtype=torch.bool)
    valid = F.pad(valid, (0, tiles * BLOCK - n), value=False).view(b, tiles, BLOCK)
    return tiled.amin(-1), tiled.amax(-1), valid.any(-1), valid.all(-1)


def tile_mask(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Booleans ``(b, n / 128, m / 128)``: may some pair of a tile be visible, and is every pair visible.

    Interval arithmetic over the tiles' position ranges: "some" may over-approximate (the tile is
    then computed and masked exactly by ``mask_mod``), "every" may under-approximate; both are safe.
    """
    q_lo, q_hi, _, _ = tile_bounds(q_pos, None)
    k_lo, k_hi, k_any, k_all = tile_bounds(k_pos, mask.key_valid)
    q_lo, q_hi, k_lo, k_hi = q_lo[:, :, None], q_hi[:, :, None], k_lo[:, None], k_hi[:, None]
    lo, hi = q_lo - k_hi, q_hi - k_lo  # range of q_pos - k_pos over the tile
    tiles = (q_lo.shape[0], q_lo.shape[1], k_lo.shape[2])
    some, every = k_any[:, None].expand(tiles), k_all[:, None].expand(tiles)
    if mask.causal:
        some_in, every_in = hi >= 0, lo >= 0
        if mask.prefix_len is not None:
            prefix = mask.prefix_len[:, None, None]
            some_in, every_in = some_in | (k_lo < prefix), every_in | (k_hi < prefix)
        some, every = some & some_in, every & every_in
    if mask.window is not None:
        w = mask.window
        if mask.causal:
            some, every = some & (lo < w), every & (hi < w)
        else:
            some, every = some & (lo < w) & (hi > -w), every & (hi < w) & (lo > -w)
    if mask.q_segment is not None:
        qs_lo, qs_hi, _, _ = tile_bounds(mask.q_segment, None)
        ks_lo, ks_hi, _, _ = tile_bounds(mask.k_segment, None)
        qs_lo, qs_hi, ks_lo, ks_hi = qs_lo[:, :, None], qs_hi[:, :, None], ks_lo[:, None], ks_hi[:, None]
        # some pair may share a document where the tiles' ranges of document ids overlap; every pair
        # does where both tiles hold one and the same document
        some = some & (qs_lo <= ks_hi) & (ks_lo <= qs_hi)
        every = every & (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    if mask.pattern is not None:
        reached = pattern_tiles(mask, q_pos, k_pos)
        some, every = some if reached is None else some & reached, torch.zeros_like(every)
    return some, every


def pattern_tiles(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
    """Booleans ``(b, n / 128, m / 128)``: tiles holding a candidate key of ``mask.pattern`` for one of their
    queries (``O(n * keys a query sees)``), or ``None`` where key positions are not their indices plus
    one offset per row or per document (then every tile is computed and ``mask_mod`` applies the
    pattern). Under a prefix
    mask the candidates are both sides' (a prefix query sees later prefix keys)."""
    shift = key_shift(mask, q_pos, k_pos)
    if shift is None:
        return None
    b, n = q_pos.shape
    index, inside = candidate_keys(mask, q_pos, k_pos, shift)
    s, t = -(-n // BLOCK), -(-k_pos.shape[1] // BLOCK)
    q_tile = (torch.arange(n, device=q_pos.device) // BLOCK)[None, :, None]
    flat = torch.where(inside, q_tile * t + index // BLOCK, s * t)  # s * t: a slot for "no key", dropped
    tiles = torch.zeros(b, s * t + 1, dtype=torch.bool, device=q_pos.device).scatter_(1, flat.flatten(1), True)
    tiles = tiles[:, :-1].view(b, s, t)
    # queries that see every key (bidirectional global tokens) reach every tile of their rows
    dense = (q_pos < mask.pattern.dense_below(causal=mask.looks_back_only)).view(b, -1, 1)
    dense = F.pad(dense, (0, 0, 0, s * BLOCK - n)).view(b, s, BLOCK).any(-1)
    return tiles | dense[:, :, None]


def ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense tile booleans ``(b, 1, s, t)`` to FlexAttention's (count, indices-first) layout."""
    count = tiles.sum(-1, dtype=torch.int32)
    index = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return count, index


def rule_mod(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor):
    """``mask_mod``: the rule of ``Mask.allows`` for one (query, key) pair, every setting a tensor."""
    device, big = q_pos.device, torch.iinfo(torch.int64).max
    q_pos, k_pos = pad_to_block(q_pos.long()), pad_to_block(k_pos.long())
    key_valid = torch.ones_like(k_pos, dtype=torch.bool) if mask.key_valid is None else pad_to_block(mask.key_valid, False)
    no_prefix = torch.full((q_pos.shape[0],), -big, dtype=torch.int64, device=device)
    prefix_len = no_prefix if mask.prefix_len is None else mask.prefix_len.long()
    causal = torch.tensor(mask.causal, device=device)
    behind = torch.tensor(big if mask.window is None else mask.window, device=device)
    ahead = big if mask.window is None or mask.causal else mask.window  # a causal window bounds only the past
    ahead = torch.tensor(ahead, device=device)
    q_segment = torch.zeros_like(q_pos) if mask.q_segment is None else pad_to_block(mask.q_segment.long())
    k_segment = torch.zeros_like(k_pos) if mask.k_segment is None else pad_to_block(mask.k_segment.long())
    pattern = mask.pattern

    def mask_mod(b, h, q_idx, kv_idx):
        q, k = q_pos[b, q_idx], k_pos[b, kv_idx]
        offset = q - k
        seen = ~causal | (offset >= 0) | (k < prefix_len[b])
        same_document = q_segment[b, q_idx] == k_segment[b, kv_idx]
        ok = seen & (offset < behind) & (-offset < ahead) & key_valid[b, kv_idx] & same_document
        return ok if pattern is None else ok & pattern.allows(q, k)

    return mask_mod


def bias_mod(bias: BiasFn, q_pos: torch.Tensor, k_pos: torch.Tensor):
    """``score_mod`` adding ``bias(q_pos, k_pos)``, or ``None`` when the position scheme has no bias.

    The bias is tabulated once per call as a function of ``q_pos - k_pos`` (ALiBi and T5 are);
    a scheme whose bias depends on absolute positions cannot run here and is refused.
    """
    if bias(q_pos[:1, :1], k_pos[:1, :1]) is None:
        return None
    lo = int(q_pos.min() - k_pos.max())
    size = 1 << (int(q_pos.max() - k_pos.min()) - lo).bit_length()  # a power of two: few distinct shapes to compile
    offsets = lo + torch.arange(size, device=q_pos.device)
    origin = torch.zeros(1, 1, dtype=offsets.dtype, device=offsets.device)
    table = bias(origin, -offsets[None])[0, :, 0]  # (h, size): the bias at q - k = offset
    if not torch.allclose(table, bias(origin + size, size - offsets[None])[0, :, 0]):
        raise ConfigError(
            "model.attention.kernel", "flex", "the position bias depends on absolute positions: use kernel=sdpa or local"
        )
    q_pos, k_pos = pad_to_block(q_pos.long()), pad_to_block(k_pos.long())
    lo = torch.tensor(lo, device=q_pos.device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + table[h, q_pos[b, q_idx] - k_pos[b, kv_idx] - lo]

    return score_mod


def capped(score_mod, softcap: float | None):
    """``score_mod`` after soft-capping the scaled score to ``(-softcap, softcap)`` (``None``: as is)."""
    if softcap is None:
        return score_mod

    def capped_mod(score, b, h, q_idx, kv_idx):
        score = softcap * torch.tanh(score / softcap)
        return score if score_mod is None else score_mod(score, b, h, q_idx, kv_idx)

    return capped_mod


def block_mask(mask: Mask, q_pos: torch.Tensor, k_pos: torch.Tensor, *, backward: bool):
    """The :class:`~torch.nn.attention.flex_attention.BlockMask` of ``mask`` on these positions."""
    from torch.nn.attention.flex_attention import BlockMask

    some, every = tile_mask(mask, q_pos, k_pos)
    partial_count, partial_index = ordered((some & ~every)[:, None])
    full_count, full_index = ordered(every[:, None])
    return BlockMask.from_kv_blocks(
        partial_count,
        partial_index,
        full_count,
        full_index,
        BLOCK_SIZE=BLOCK,
        mask_mod=rule_mod(mask, q_pos, k_pos),
        seq_lengths=(q_pos.shape[1], k_pos.shape[1]),
        compute_q_blocks=backward,  # the transposed tiles serve only the backward pass
    )


def flex(
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
    """FlexAttention under ``mask`` with ``bias`` (and ``softcap``) as score modifiers; equal to the eager reference.

    Rows that see no key (pure padding) come out as zeros rather than the eager reference's mean of
    every value; their output is never read.

    Args:
        q: ``(b, h, n, d)``; k, v: ``(b, k, m, d)``; q_pos, k_pos: ``(b, n)``, ``(b, m)``.
        mask, bias, scale: as for every kernel.
        dropout: must be 0 (FlexAttention has none).
        softcap: soft-cap of the scaled scores, or ``None``.
        sinks: ``(h,)`` a sink logit per head joining each softmax's denominator (gpt-oss), or ``None``.

    Returns: ``(b, h, n, d)``.
    """
    from torch.nn.attention.flex_attention import AuxRequest

    if dropout:
        raise ConfigError("model.attention.kernel", "flex", "FlexAttention has no attention dropout: set model.dropout=0 or use sdpa/local")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError("model.attention.kernel", "flex", f"FlexAttention runs float32, bfloat16 or float16, not {q.dtype}: use sdpa or local")
    backward = needs_backward(q, k, v)
    if backward and q.device.type == "cpu":
        raise ConfigError(
            "model.attention.kernel",
            "flex",
            f"FlexAttention has no backward on CPU in torch {torch.__version__}: train with kernel=local or auto "
            "(or run under torch.no_grad() for inference)",
        )
    if not backward:  # torch refuses CPU inputs that require grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    b, n = q.shape[0], q.shape[2]
    q_pos, k_pos = q_pos.expand(b, -1), k_pos.expand(b, -1)
    if q.device.type == "cpu":
        q, k, v, mask, q_pos, k_pos = _whole_tiles(q, k, v, mask, q_pos, k_pos)
    out = compiled_flex(q.device.type)(
        q,
        k,
        v,
        score_mod=capped(bias_mod(bias, q_pos, k_pos), softcap),
        block_mask=block_mask(mask, q_pos, k_pos, backward=backward),
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
        return_aux=None if sinks is None else AuxRequest(lse=True),
    )
    if sinks is not None:
        out, aux = out  # aux.lse (b, h, n): the natural log of each row's softmax denominator
        out = out * torch.sigmoid(aux.lse - sinks.float().view(1, -1, 1)).unsqueeze(-1).to(out.dtype)
    return out[:, :, :n]


def _whole_tiles(q, k, v, mask: Mask, q_pos, k_pos):
    """Queries and keys padded to whole :data:`BLOCK` tiles, the padding keys masked out.

    torch 2.13's CPU FlexAttention returns wrong rows (or NaN) at some lengths that are not a multiple
    of the tile, e.g. 8 or 40 queries of a causal mask (tests/attention/test_kernels.py); at whole
    tiles it is exact. Padding queries repeat the last position and are sliced off by the caller.
    """
    b, m = k.shape[0], k.shape[2]
    tiles = lambda x: F.pad(x, (0, 0, 0, -x.shape[2] % BLOCK))  # noqa: E731
    key_valid = torch.ones(b, m, dtype=torch.bool, device=k.device) if mask.key_valid is None else mask.key_valid.expand(b, m)
    mask = mask.with_keys(pad_to_block(key_valid, False))
    if mask.q_segment is not None:
        mask = replace(mask, q_segment=pad_to_block(mask.q_segment.expand(b, -1)), k_segment=pad_to_block(mask.k_segment.expand(b, -1)))
    return tiles(q), tiles(k), tiles(v), mask, pad_to_block(q_pos), pad_to_block(k_pos)
