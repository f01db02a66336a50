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


class DyT(nn.Module):
    """Dynamic Tanh, a normalisation-free stand-in for a norm (Zhu et al. 2025, arXiv:2503.10622).

    ``weight * tanh(alpha * x) + bias`` with one learned scalar ``alpha``: it squashes extreme
    activations as LayerNorm does, without computing any statistic over the features.

    Args:
        dim: feature size.
        alpha_init: the starting ``alpha``: the paper's default 0.5, whose LLMs tune it per model and
            slot. At zoo's 0.02-scale initialisation 0.5 does not train: the query and key gradients start
            10,000 times below AdamW's ``eps`` (``benchmarks/init_gradients.py``); the paper's embedding scale
            (``model.scale_embed``) and a larger ``alpha_init`` lift them (docs/results.md, "DyT").
        bias: learn an additive bias, as the paper does.

    Shapes: ``(..., dim) -> (..., dim)``.
    """

    def __init__(self, dim: int, *, alpha_init: float = 0.5, bias: bool = True) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Elementwise, with no sum to lose bits in, so bf16 needs no float32 upcast; the float32
        # parameters of an autocast run are cast down so that the output keeps the input's dtype.
        y = torch.tanh(self.alpha.type_as(x) * x)
        if self.bias is None:
            return y * self.weight.type_as(x)
        return torch.addcmul(self.bias.type_as(x), y, self.weight.type_as(x))
