"""QK-norm: queries and keys normalised before their dot product (the ``qk_norm`` of ``model/attention``).

Normalised queries and keys bound the attention logits, which keeps them from growing until the
softmax saturates (one-hot weights, vanishing gradients) under large learning rates (Dehghani et al.
2023, ViT-22B, arXiv:2302.05442; Wortsman et al. 2023, arXiv:2309.14322). Applied after the
projections and before the positions rotate them, as Qwen3, Gemma 3 and OLMo 2 do.

An attention builds one per layer as ``qk_norm(head_dim, n_heads=, n_kv_heads=)``.

Letters: ``b`` batch, ``n`` tokens, ``h`` query heads, ``k`` KV heads, ``d`` head dim.
"""

import torch
from einops import rearrange
from torch import nn

from zoo.norm import RMSNorm


class QKNorm(nn.Module):
    """RMSNorm over each head's channels, one weight for the query heads and one for the KV heads
    (Qwen3, arXiv:2505.09388; Gemma 3, arXiv:2503.19786).

    Args:
        head_dim: width of one head.
        n_heads, n_kv_heads: heads of the queries and of the keys.
        eps: added to the mean square.

    Shapes: ``q (b, n, h, d)``, ``k (b, n, k, d)`` -> the same.
    """

    def __init__(self, head_dim: int, *, n_heads: int, n_kv_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.q_norm, self.k_norm = RMSNorm(head_dim, eps=eps), RMSNorm(head_dim, eps=eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class QKNormAcrossHeads(nn.Module):
    """RMSNorm over all heads of the query projection at once, and over all KV heads of the key
    projection (OLMo 2, arXiv:2501.00656): one mean square per token, a weight per channel.

    Args:
        head_dim: width of one head.
        n_heads, n_kv_heads: heads of the queries and of the keys.
        eps: added to the mean square.

    Shapes: ``q (b, n, h, d)``, ``k (b, n, k, d)`` -> the same.
    """

    def __init__(self, head_dim: int, *, n_heads: int, n_kv_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.q_norm, self.k_norm = RMSNorm(n_heads * head_dim, eps=eps), RMSNorm(n_kv_heads * head_dim, eps=eps)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = q.shape[-1]
        q = rearrange(self.q_norm(rearrange(q, "b n h d -> b n (h d)")), "b n (h d) -> b n h d", d=d)
        k = rearrange(self.k_norm(rearrange(k, "b n k d -> b n (k d)")), "b n (k d) -> b n k d", d=d)
        return q, k
