"""Normalisation layers: the ``model/norm`` slot.

Each norm is built per use as ``norm(dim)`` by the residual wiring, which decides where it goes.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al. 2016, arXiv:1607.06450), bias optional.

    Args:
        dim: feature size.
        eps: added to the variance.
        bias: learn an additive bias (LLaMA-era models drop it).

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019, arXiv:1910.07467).

    Args:
        dim: feature size.
        eps: added to the mean square.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # read once: a module attribute costs a lookup through nn.Module.__getattr__
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            return F.rms_norm(x, weight.shape, weight, self.eps)  # one fused kernel
        # Normalise in float32 whatever the input dtype, as LLaMA and T5 do: bf16 sums of squares lose bits.
        y = F.rms_norm(x.float(), weight.shape, eps=self.eps)
        return y.type_as(x) * weight.type_as(x)
