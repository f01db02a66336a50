"""The two-layer MLP of the original Transformer (Vaswani et al. 2017, arXiv:1706.03762)."""

import torch
import torch.nn.functional as F
from torch import nn

from zoo.dropout import dropout_layer


class MLP(nn.Module):
    """``down_proj(act(up_proj(x)))``; subclasses pick the activation.

    Args:
        dim: model width.
        hidden_dim: inner width; defaults to ``4 * dim``.
        bias: biases on both projections.
        dropout: dropout on the hidden activations.

    Shapes: ``(b, n, dim) -> (b, n, dim)``.
    """

    def __init__(self, dim: int, *, hidden_dim: int | None = None, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * dim
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = dropout_layer(dropout)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(self.activation(self.up_proj(x))))


class ReLUMLP(MLP):
    """MLP with ReLU, as in the original Transformer and T5 v1.0."""

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class SquaredReLUMLP(MLP):
    """MLP with squared ReLU, ``relu(x) ** 2`` (So et al. 2021, "Primer", arXiv:2109.08668), as in Nemotron-4.

    Primer's gains over the Transformer come mostly from two of the changes its search found: this
    activation, and depthwise convolutions after the query, key and value projections.
    """

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class GeLUMLP(MLP):
    """MLP with GeLU (Hendrycks & Gimpel 2016, arXiv:1606.08415), as in BERT and GPT-2.

    Args:
        approximate: ``"none"`` for the exact erf form, ``"tanh"`` for GPT-2's approximation.
    """

    def __init__(self, dim: int, *, approximate: str = "none", **kwargs) -> None:
        super().__init__(dim, **kwargs)
        self.approximate = approximate

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)
