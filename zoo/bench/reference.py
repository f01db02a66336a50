"""A minimal hand-written Llama in plain PyTorch: the yardstick of the peer comparison.

It is what one would write by hand for the Llama-style benchmark model (Touvron et al. 2023,
arXiv:2302.13971): RMSNorm, pre-norm, RoPE with a precomputed table, SwiGLU, no biases, SDPA's causal
fast path. Separate q/k/v and gate/up projections, as in zoo and HF, so the comparison measures the
cost of composition and not a fused-projection trick. No cache, no masks beyond causal: a training
and prefill yardstick only.

Shapes: tokens ``(b, n)`` -> logits ``(b, n, vocab_size)``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RefBlock(nn.Module):
    """``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, dim: int, *, n_heads: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.n_heads, self.eps = n_heads, eps
        self.attn_norm = nn.Parameter(torch.ones(dim))
        self.ffn_norm = nn.Parameter(torch.ones(dim))
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        h = F.rms_norm(x, (dim,), self.attn_norm, self.eps)
        q, k, v = (p(h).view(b, n, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, n, dim))
        h = F.rms_norm(x, (dim,), self.ffn_norm, self.eps)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE with half-split channel pairs (LLaMA/NeoX layout); ``cos, sin (n, d)``."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class ReferenceLlama(nn.Module):
    """Plain-PyTorch Llama for the peer benchmark.

    Args:
        vocab_size: tokens in the vocabulary.
        dim: model width.
        n_layers: blocks.
        n_heads: attention heads (``dim // n_heads`` wide each).
        hidden_dim: SwiGLU inner width.
        max_seq_len: length of the RoPE table.
        theta: RoPE base.
        eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        dim: int,
        n_layers: int,
        n_heads: int,
        hidden_dim: int,
        max_seq_len: int,
        theta: float = 10000.0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(RefBlock(dim, n_heads=n_heads, hidden_dim=hidden_dim, eps=eps) for _ in range(n_layers))
        self.norm = nn.Parameter(torch.ones(dim))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        head_dim = dim // n_heads
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        cos, sin = self.cos[:n], self.sin[:n]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps))
