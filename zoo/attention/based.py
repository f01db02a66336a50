"""Based's linear attention (``model/attention=based``): a 2nd-order Taylor feature map on small queries and keys.

Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff" (arXiv:2402.18668): queries and keys are projected to a few channels (``feature_dim``, 16
in the paper) and mapped by the 2nd-order Taylor expansion of ``exp``,
``phi(x) = [1, x, (x (x) x) / sqrt(2)]``, so that ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with
``s = q . k * scale``: a positive score (its least value is 1/2, at ``s = -1``) that keeps
softmax's sharpness near ``s = 0``, with no random draw. The rest is linear attention
(:mod:`zoo.attention.linear_attention`): chunked causal form, running sums as the decoding state.

``x (x) x`` is symmetric, so only its upper triangle is kept: the squares divided by ``sqrt(2)`` and
each product ``x_a x_b`` (``a < b``) once, which gives the same dot products with
``1 + f + f (f + 1) / 2`` features instead of ``1 + f + f^2`` (153 instead of 273 at ``f = 16``).

Letters: ``f`` query/key width, ``r`` features.
"""

import math

import torch
from torch import nn

from zoo.attention.linear_attention import LinearAttention
from zoo.errors import ConfigError


class TaylorFeatures(nn.Module):
    """The 2nd-order Taylor feature map of ``exp``: ``phi(q) . phi(k) = 1 + q . k + (q . k)^2 / 2``.

    Args:
        feature_dim: width ``f`` of the queries and keys it maps.

    Shapes: ``(queries (..., f), keys (..., f)) -> (phi(queries) (..., r), phi(keys) (..., r))``, float32,
    ``r = 1 + f + f (f + 1) / 2``.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        pairs = torch.triu_indices(feature_dim, feature_dim, offset=1)
        self.register_buffer("pairs", pairs, persistent=False)

    @property
    def n_features(self) -> int:
        f = self.feature_dim
        return 1 + f + f * (f + 1) // 2

    def flops(self) -> float:
        """Forward FLOPs of one vector's features: one product per feature."""
        return float(self.n_features)

    def map(self, x: torch.Tensor) -> torch.Tensor:
        """``phi(x) (..., r)`` of ``x (..., f)``."""
        x = x.float()
        first, second = self.pairs
        # x_a^2 / sqrt(2) squared is x_a^4 / 2 and each x_a x_b (a < b) stands for both (a, b) and (b, a),
        # so the dot product is sum_a (q_a k_a)^2 / 2 + sum_{a<b} q_a q_b k_a k_b = (q . k)^2 / 2
        return torch.cat([x.new_ones(*x.shape[:-1], 1), x, x.square() / math.sqrt(2), x[..., first] * x[..., second]], dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.map(q), self.map(k)


class BasedAttention(LinearAttention):
    """Based's linear attention: Taylor features of small queries and keys (arXiv:2402.18668).

    Its queries and keys take no positions (as the paper's): the causal sums and the model's other
    layers (``model/layers=based_hybrid``: sliding-window softmax attention with RoPE) carry the order.
    A score-biasing scheme (ALiBi, T5) is refused; ``model/pos=rope`` leaves these layers alone.

    Args:
        dim: model width.
        n_heads: query heads.
        head_dim: width of one head's value.
        feature_dim: width ``f`` of one head's query and key (16 in the paper): ``1 + f + f (f + 1) / 2``
            features, the decoding state ``features x head_dim`` per KV head.
        n_kv_heads: key/value heads (grouped as in GQA); ``None`` means ``n_heads``.
        chunk: tokens per chunk of the causal computation (``c x c`` scores inside, running sums across).
        bias: biases on the projections.
        qkv_bias: biases on the query/key/value projections only; ``None`` follows ``bias``.
        dropout: unused: there are no attention weights to drop (the model's other dropouts still apply).
        scale: score scale inside the Taylor expansion; ``None`` means ``feature_dim ** -0.5`` (the paper's).

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    takes_positions = False

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int,
        head_dim: int,
        feature_dim: int = 16,
        n_kv_heads: int | None = None,
        chunk: int = 64,
        bias: bool = False,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
    ) -> None:
        if feature_dim <= 0:
            raise ConfigError("model.attention.feature_dim", feature_dim, "a positive number of query/key channels per head (16 in the paper)")
        super().__init__(
            dim, option="based", feature_map=TaylorFeatures(feature_dim), n_heads=n_heads, head_dim=head_dim,
            feature_dim=feature_dim, n_kv_heads=n_kv_heads, chunk=chunk, bias=bias, qkv_bias=qkv_bias, scale=scale,
        )  # fmt: skip
