"""Differential attention (``model/attention=differential``): the difference of two softmax maps.

Ye et al. 2024, Differential Transformer (arXiv:2410.05258): each head computes two attention maps
from two halves of its queries and keys and subtracts the second, scaled by a learned ``lambda``, so
that attention noise common to both maps cancels (the paper's analogy: a differential amplifier).
``(A1 - lambda A2) V = A1 V - lambda A2 V``, so each map runs through an ordinary kernel (every mask,
position scheme and cache works unchanged) and the outputs are subtracted.

Letters: ``b`` batch, ``h`` differential heads, ``k`` KV heads, ``n`` queries, ``m`` keys, ``d`` width
of one map's queries and keys, ``e`` width of a head's values (``2 d``).
"""

import math

import torch
from einops import rearrange
from torch import nn

from zoo.attention.attention import Context
from zoo.attention.cache import KVCache
from zoo.attention.kernels import check_kernel, pick_kernel
from zoo.attention.signature import BiasFn, needs_backward
from zoo.errors import ConfigError
from zoo.norm import RMSNorm


def depth_lambda_init(layer: int) -> float:
    """The paper's ``lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1))`` for the block at 0-based index ``layer``."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def map_heads(bias: BiasFn, which: int) -> BiasFn:
    """The score bias of the first (``which=0``) or second map of every head: a scheme that biases
    ``n_heads`` heads (ALiBi, T5) gives each of the two maps of a head its own slope or table."""

    def half(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        full = bias(q_pos, k_pos)
        return None if full is None else full[:, which::2]

    return half


class DifferentialAttention(nn.Module):
    """Differential attention (Ye et al. 2024, arXiv:2410.05258, eqs. 1-3).

    Sizes as in the paper, at the parameters of multi-head attention with the same ``n_heads``:
    ``n_heads`` query maps of ``head_dim`` channels pair up into ``n_heads / 2`` differential heads,
    each with values of ``2 * head_dim`` channels. ``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) +
    lambda_init`` is re-parameterised by four learned vectors; each head's output is RMS-normalised
    (the paper's GroupNorm: one norm per head) and scaled by ``1 - lambda_init``.

    Args:
        dim: model width.
        n_heads: query maps (two per differential head): even.
        head_dim: width of one map's queries and keys.
        n_kv_heads: key maps (two per KV head): even, dividing ``n_heads``; ``None``: ``n_heads``.
        lambda_init: ``None``: ``0.8 - 0.6 exp(-0.3 layer)`` from the block's depth, which the stack
            tells each layer (:meth:`at_depth`); a number: that constant in every layer (the paper's ablation).
        lambda_std: standard deviation of the initial ``lambda`` vectors.
        window: each query sees only keys fewer than ``window`` positions away.
        bias: biases on the projections.
        dropout: dropout on each map's attention weights (independently: the paper leaves it open).
        scale: score scale; ``None``: ``head_dim ** -0.5``.
        kernel: as in :class:`~zoo.attention.Attention`.
        softcap: soft-cap of each map's scaled scores before its softmax, as in :class:`~zoo.attention.Attention`
            (Gemma 2, arXiv:2408.00118); ``None``: none.
        eps: of the per-head RMSNorm.

    Shapes: ``(b, n, dim) -> (b, n, dim)``; its cache holds ``(b, k/2, m, 2 d)`` keys (both maps) and values.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        n_kv_heads: int | None = None,
        lambda_init: float | None = None,
        lambda_std: float = 0.1,
        window: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        kernel: str = "auto",
        softcap: float | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % 2:
            raise ConfigError("model.n_heads", n_heads, "differential attention pairs query maps into heads: an even number")
        if n_kv_heads <= 0 or n_kv_heads % 2 or n_heads % n_kv_heads:
            allowed = [k for k in range(2, n_heads + 1, 2) if n_heads % k == 0]
            raise ConfigError("model.attention.n_kv_heads", n_kv_heads, f"an even number dividing model.n_heads={n_heads}: one of {allowed}")
        if window is not None and window <= 0:
            raise ConfigError("model.attention.window", window, "must be a positive number of tokens (or null for none)")
        check_kernel(kernel, dropout=dropout, softcap=softcap)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.window, self.dropout, self.kernel, self.softcap = window, dropout, kernel, softcap
        self.scale = head_dim**-0.5 if scale is None else scale
        self.fixed_lambda_init = lambda_init
        self.lambda_init = depth_lambda_init(0) if lambda_init is None else lambda_init
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(head_dim) * lambda_std) for _ in range(4)
        )
        self.head_norm = RMSNorm(2 * head_dim, eps=eps)

    def at_depth(self, layer: int, n_layers: int) -> None:
        """Called by the stack with the 0-based index of this layer's block: sets ``lambda_init``."""
        if self.fixed_lambda_init is None:
            self.lambda_init = depth_lambda_init(layer)

    def score_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The projections that make the scores (queries, keys), apart from the values' path (DeepNorm's init)."""
        return self.q_proj, self.k_proj

    def flops_per_pair(self) -> int:
        """Forward FLOPs of one query against one key: ``n_heads`` maps of ``q k^T`` over ``head_dim``
        channels, and each of them weighting values of ``2 * head_dim``."""
        return 2 * self.n_heads * self.head_dim + 2 * self.n_heads * 2 * self.head_dim

    def weight(self) -> torch.Tensor:
        """``lambda``: a scalar, in float32 (eq. 2)."""
        dot = lambda a, b: torch.dot(a.float(), b.float())  # noqa: E731
        return dot(self.lambda_q1, self.lambda_k1).exp() - dot(self.lambda_q2, self.lambda_k2).exp() + self.lambda_init

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None = None) -> torch.Tensor:
        q = rearrange(self.q_proj(x), "b n (h d) -> b n h d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b n (k d) -> b n k d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b n (k e) -> b k n e", e=2 * self.head_dim)
        q_pos = k_pos = ctx.positions.expand(x.shape[0], -1)
        # maps 2i and 2i + 1 are head i's first and second: each rotated as a head of its own
        q1, q2 = rearrange(ctx.pos.rotate(q, q_pos, ctx.rotation), "b n (h two) d -> two b h n d", two=2)
        k = rearrange(ctx.pos.rotate(k, k_pos, ctx.rotation), "b n (k two) d -> b k n (two d)", two=2)
        mask = ctx.mask.with_window(self.window)
        if cache is not None:
            k, v, k_pos, key_valid = cache.update(k, v, k_pos, mask.key_valid)
            mask = mask.with_keys(key_valid)
        k1, k2 = rearrange(k, "b k m (two d) -> two b k m d", two=2)
        dropout = self.dropout if self.training else 0.0
        kernel = pick_kernel(
            self.kernel, window=mask.window, device=x.device, backward=needs_backward(q1, k1, v), dropout=dropout,
            n=q1.shape[2], m=k1.shape[2], softcap=self.softcap, head_dim=min(q1.shape[-1], v.shape[-1]),
        )
        kw = dict(mask=mask, q_pos=q_pos, k_pos=k_pos, scale=self.scale, dropout=dropout)
        if self.softcap is not None:  # only the kernels that can soft-cap take the argument: the others are refused above
            kw["softcap"] = self.softcap
        first = kernel(q1, k1, v, bias=map_heads(ctx.pos.bias, 0), **kw)
        second = kernel(q2, k2, v, bias=map_heads(ctx.pos.bias, 1), **kw)
        out = first - self.weight().to(second.dtype) * second
        out = self.head_norm(out) * (1.0 - self.lambda_init)  # eq. 3
        return self.o_proj(rearrange(out, "b h n e -> b n (h e)"))
