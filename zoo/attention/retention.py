"""Multi-scale retention (``model/attention=retention``): linear attention with a fixed decay per head.

RetNet (Sun et al. 2023, arXiv:2307.08621) replaces softmax attention by ``o_i = sum_{j<=i}
gamma^(i-j) (q_i k_j^T) v_j``: each head forgets at its own rate ``gamma_h = 1 - 2^(-5-h)``, so the
sum is a recurrence over a ``head_dim x head_dim`` state (:mod:`zoo.attention.recurrence`): trained
in chunks, decoded one token at a time from the state, at a cost per token that does not grow with
the text. Queries and keys are rotated by the stack's position scheme (RoPE plays RetNet's xPos
rotation); each head's output is normalised and gated by ``swish(x W_G)`` (eq. 8).

Letters: ``b`` batch, ``n`` tokens, ``h`` heads, ``d`` head dim.
"""

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from zoo.attention.attention import Context
from zoo.attention.mixer import check_form, read_context, run_form
from zoo.attention.recurrence import flops_per_token
from zoo.attention.state_cache import StateCache
from zoo.dropout import dropout_layer
from zoo.norm import RMSNorm


class Retention(nn.Module):
    """Gated multi-scale retention (RetNet, arXiv:2307.08621, section 2.2).

    Args:
        dim: model width.
        n_heads: heads, each with its own decay.
        head_dim: width of one head's queries, keys and values.
        form: ``auto`` (chunks to train and prefill, the recurrence to decode), ``chunked``,
            ``parallel`` (the quadratic reference) or ``scan`` (the recurrence throughout).
        chunk: tokens per chunk of the chunked form.
        bias: biases on the projections.
        dropout: on the retention's output, before the output projection.
        eps: of the per-head RMSNorm (RetNet's GroupNorm; either makes the head scale-free).

    Shapes: ``(b, n, dim) -> (b, n, dim)``; its cache (:class:`StateCache`) holds a ``(b, h, d, d)`` state.
    """

    #: reads left to right: a bidirectional stack cannot use it (:func:`zoo.arch.stack.refuse_bidirectional`)
    requires_causal = True
    #: the architectures it serves (``zoo-info``'s compatibility matrix)
    compatible_archs = ("causal",)
    #: what its decoding cache holds (``zoo-info``'s "KV cache" column)
    cache_summary = "constant state"
    option = "retention"

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        form: str = "auto",
        chunk: int = 64,
        bias: bool = False,
        dropout: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_form(form, chunk)
        self.n_heads, self.head_dim, self.form, self.chunk = n_heads, head_dim, form, chunk
        width = n_heads * head_dim
        self.q_proj = nn.Linear(dim, width, bias=bias)
        self.k_proj = nn.Linear(dim, width, bias=bias)
        self.v_proj = nn.Linear(dim, width, bias=bias)
        self.gate_proj = nn.Linear(dim, width, bias=bias)
        self.o_proj = nn.Linear(width, dim, bias=bias)
        self.head_norm = RMSNorm(head_dim, eps=eps)
        self.dropout = dropout_layer(dropout)
        # log gamma_h (eq. 8): fixed, so not a parameter; not saved, since it follows from n_heads
        heads = torch.arange(n_heads, dtype=torch.float32)
        self.register_buffer("log_decay", torch.log1p(-(2.0 ** (-5.0 - heads))), persistent=False)

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def new_cache(self) -> StateCache:
        return StateCache(owner=self.option)

    def score_flops(self, n_queries: int, n_keys: int) -> float:
        """Forward FLOPs of the recurrence in chunks (:func:`~zoo.attention.recurrence.flops_per_token`)
        over the new tokens (the cached state stands for the others)."""
        chunk = min(self.chunk, n_queries)
        return n_queries * flops_per_token(n_heads=self.n_heads, key_dim=self.head_dim, value_dim=self.head_dim, chunk=chunk)

    def cache_bytes(self, n: int) -> int:
        """Bytes of one sequence's state, whatever ``n``: ``h`` states of ``d x d``."""
        return self.n_heads * self.head_dim**2 * self.q_proj.weight.element_size()

    def forward(self, x: torch.Tensor, ctx: Context, cache: StateCache | None = None) -> torch.Tensor:
        valid, resets = read_context(ctx, self.option)
        positions = ctx.positions.expand(x.shape[0], -1)
        q = ctx.pos.rotate(rearrange(self.q_proj(x), "b n (h d) -> b n h d", d=self.head_dim), positions, ctx.rotation)
        k = ctx.pos.rotate(rearrange(self.k_proj(x), "b n (h d) -> b n h d", d=self.head_dim), positions, ctx.rotation)
        v = self.v_proj(x)
        log_decay = self.log_decay.to(x.dtype)[None, :, None].expand(x.shape[0], -1, x.shape[1])
        if valid is not None:
            # a padding token adds nothing and forgets nothing: the state passes it by unchanged
            v = v * valid[..., None]
            log_decay = log_decay * valid[:, None]
        q, k = (rearrange(t, "b n h d -> b h n d") for t in (q, k))
        v = rearrange(v, "b n (h d) -> b h n d", d=self.head_dim)
        state = None if cache is None else cache.get("state")
        out, state = run_form(self.form, self.chunk, q, k * self.head_dim**-0.5, v, log_decay, state=state, resets=resets)
        if cache is not None:
            cache.put("state", state)
            cache.advance(x.shape[1])
        out = rearrange(self.head_norm(rearrange(out, "b h n d -> b n h d")), "b n h d -> b n (h d)")
        return self.o_proj(self.dropout(F.silu(self.gate_proj(x)) * out))
